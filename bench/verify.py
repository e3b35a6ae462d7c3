"""The cost of `verify` on a push backup: full backups of one paused throw-away
domain with `--data-mib` of data, alternately with and without `"verify": true`,
side by side in one run. The figure is the service's own duration of each
backup (`finished_at - started_at`), and the ratio with/without per pair.
Not a test: it prints figures and exits 0.

    cd /work/main && .venv/bin/python bench/verify.py [--pairs 5] [--data-mib 512]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import libvirt  # noqa: E402

from app.db.migrate import upgrade_to_head  # noqa: E402
from app.libvirt.events import ensure_event_loop  # noqa: E402
from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.support.vms import create_vm, destroy_vm, domain, pause  # noqa: E402

MiB = 1024 * 1024
ENDED = {"succeeded", "failed", "cancelled"}


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def _backup_seconds(client: httpx.AsyncClient, name: str, verify: bool) -> float:
    body = {"kind": "full", "checkpoint": False, "verify": verify}
    posted = await client.post(f"/v1/hosts/local/domains/{name}/backups", json=body)
    backup = posted.json()
    while backup["status"] not in ENDED:
        await asyncio.sleep(0.02)
        backup = (await client.get(f"/v1/backups/{backup['id']}")).json()
    assert backup["status"] == "succeeded", backup
    assert backup["verification"]["status"] == ("ok" if verify else "unverified"), backup
    await client.delete(f"/v1/backups/{backup['id']}")
    return (_at(backup["finished_at"]) - _at(backup["started_at"])).total_seconds()


async def _run(workdir: Path, pairs: int, data_mib: int) -> list[tuple[float, float]]:
    conn = libvirt.open("qemu:///system")
    vm = create_vm(conn, workdir=workdir / "vms", disks={"vda": 2 * data_mib * MiB}, start=False)
    write = f"write -P 0x5a 0 {data_mib}M"
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", write, str(vm.disks["vda"])],
        check=True,
        capture_output=True,
    )
    domain(conn, vm).create()
    pause(conn, vm)
    url = f"sqlite+aiosqlite:///{workdir / 'vmbackup.db'}"
    await asyncio.to_thread(upgrade_to_head, url)  # Alembic runs its own event loop
    settings = Settings(
        data_dir=workdir / "data", database_url=url, socket_root=workdir / "run", poll_seconds=0.1
    )
    app = create_app(settings)
    figures = []
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                await _backup_seconds(client, vm.name, False)  # warm-up
                for index in range(pairs):
                    order = (True, False) if index % 2 else (False, True)
                    seconds = {v: await _backup_seconds(client, vm.name, v) for v in order}
                    figures.append((seconds[True], seconds[False]))
    finally:
        destroy_vm(conn, vm)
        conn.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--data-mib", type=int, default=512)
    args = parser.parse_args()
    ensure_event_loop()
    with tempfile.TemporaryDirectory(prefix="vmb-verify-bench-") as tmp:
        figures = asyncio.run(_run(Path(tmp), args.pairs, args.data_mib))
    with_verify = statistics.median(f[0] for f in figures)
    without = statistics.median(f[1] for f in figures)
    ratios = sorted(f[0] / f[1] for f in figures)
    print(f"push full backup of {args.data_mib} MiB data, {args.pairs} pairs")
    print(f"  without verify: median {without:.3f} s")
    print(f"  with verify:    median {with_verify:.3f} s")
    print(
        f"  ratio with/without per pair: median {statistics.median(ratios):.2f} "
        f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f})"
    )


if __name__ == "__main__":
    main()
