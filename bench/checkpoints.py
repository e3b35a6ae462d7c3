"""Backup start cost against the number of checkpoints ever made on a domain.

Two in-process services on one throw-away domain each, side by side: one with
the default bound (`CHECKPOINTS_PER_DOMAIN=4`), one unbounded (1000). Each makes
`--backups` push backups; the start cost of a backup is the service's own time
from its claim (`started_at`) to its `running` event: base choice, reconcile
(one size query per checkpoint) and `backupBegin`. Printed: the median start
cost of the first few backups (about 1 checkpoint) and of the last few, and the
ratio last/first for each service. Not a test: it prints figures and exits 0.

    cd /work/main && .venv/bin/python bench/checkpoints.py [--backups 200] [--sample 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
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
from tests.support.vms import create_vm, destroy_vm, pause  # noqa: E402

ENDED = {"succeeded", "failed", "cancelled"}


async def _start_cost(client: httpx.AsyncClient, backup_id: str) -> float:
    async with client.stream("GET", f"/v1/backups/{backup_id}/events") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data:") and '"status": "running"' in line:
                break
    backup = (await client.get(f"/v1/backups/{backup_id}")).json()
    while backup["status"] not in ENDED:
        await asyncio.sleep(0.02)
        backup = (await client.get(f"/v1/backups/{backup_id}")).json()
    assert backup["status"] == "succeeded", backup
    events = await client.get(f"/v1/backups/{backup_id}/events")
    running_at = next(
        line.split('"at": "')[1].split('"')[0]
        for line in events.text.splitlines()
        if line.startswith("data:") and '"status": "running"' in line and '"at": "' in line
    )
    started = datetime.fromisoformat(backup["started_at"].replace("Z", "+00:00"))
    return (datetime.fromisoformat(running_at.replace("Z", "+00:00")) - started).total_seconds()


async def _series(workdir: Path, bound: int, backups: int) -> list[float]:
    conn = libvirt.open("qemu:///system")
    vm = create_vm(conn, workdir=workdir / "vms")
    pause(conn, vm)
    url = f"sqlite+aiosqlite:///{workdir / 'vmbackup.db'}"
    await asyncio.to_thread(upgrade_to_head, url)  # Alembic runs its own event loop
    settings = Settings(
        data_dir=workdir / "data",
        database_url=url,
        socket_root=workdir / "run",
        poll_seconds=0.1,
        checkpoints_per_domain=bound,
    )
    app = create_app(settings)
    costs = []
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                for _ in range(backups):
                    posted = await client.post(
                        f"/v1/hosts/local/domains/{vm.name}/backups", json={}
                    )
                    costs.append(await _start_cost(client, posted.json()["id"]))
    finally:
        destroy_vm(conn, vm)
        conn.close()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backups", type=int, default=200)
    parser.add_argument("--sample", type=int, default=10)
    args = parser.parse_args()
    ensure_event_loop()
    began = time.monotonic()
    for label, bound in (("bounded (4)", 4), ("unbounded", 1000)):
        with tempfile.TemporaryDirectory(prefix="vmb-cp-bench-") as tmp:
            costs = asyncio.run(_series(Path(tmp), bound, args.backups))
        first = statistics.median(costs[1 : 1 + args.sample])  # the first is full: no reconcile
        last = statistics.median(costs[-args.sample :])
        print(
            f"{label:12s} start cost median: backups 2-{1 + args.sample}: {first * 1000:.1f} ms, "
            f"last {args.sample} of {args.backups}: {last * 1000:.1f} ms, ratio {last / first:.2f}"
        )
    print(f"total {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
