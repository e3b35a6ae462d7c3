"""Orchestration overhead: a push full backup through the API against the same backup done
by direct libvirt-python calls, side by side in one run (DESIGN.md, "Performance").

(a) API:    POST /v1/hosts/local/domains/{name}/backups {"kind": "full", "checkpoint": false},
            then GET /v1/backups/{id} every 10 ms until `succeeded`.
(b) direct: dom.backupBegin(<domainbackup> with a qcow2 push target) and wait for
            VIR_DOMAIN_EVENT_ID_JOB_COMPLETED.

The two alternate (the one that goes first alternates too) on one paused throw-away domain;
produced files are deleted after each run. A second, tiny domain measures the added latency.
Not a test: it prints figures and exits 0.

    cd /work/main && .venv/bin/python bench/orchestration.py [--pairs 5] [--data-mib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import quoteattr

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import libvirt  # noqa: E402

from app.db.migrate import upgrade_to_head  # noqa: E402
from app.libvirt.events import ensure_event_loop  # noqa: E402
from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.support.vms import (  # noqa: E402
    JobCompleted,
    TestVM,
    create_vm,
    destroy_vm,
    domain,
    wait_released,
    write_pattern,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
CHUNK = 64 * MiB
TIMEOUT = 900.0
ENDED = {"succeeded", "failed", "cancelled"}


@dataclass
class Case:
    label: str
    vm: TestVM
    pairs: int
    a: list[float]
    b: list[float]
    service: list[float] = field(default_factory=list)


def fill(conn: libvirt.virConnect, vm: TestVM, data: int) -> float:
    """Write `data` bytes at the start of vda through QEMU; return seconds taken."""
    start = time.monotonic()
    for offset in range(0, data, CHUNK):
        write_pattern(conn, vm, "vda", offset, min(CHUNK, data - offset), 0x5A)
    return time.monotonic() - start


async def _poll_until_ended(
    client: httpx.AsyncClient, backup_id: str, poll: float, start: float
) -> None:
    while (await client.get(f"/v1/backups/{backup_id}")).json()["status"] not in ENDED:
        if time.monotonic() - start > TIMEOUT:
            raise TimeoutError(f"backup {backup_id} did not end in {TIMEOUT} s")
        await asyncio.sleep(poll)


def direct_backup(conn: libvirt.virConnect, vm: TestVM, target: Path) -> float:
    """(b): backupBegin with a push target, until JOB_COMPLETED and QEMU has closed
    the target: the point where the file is usable, which is what the service's
    `succeeded` means too (libvirt signals completion 10-20 ms before the close,
    and a large target's close includes its flush). Seconds taken."""
    dom = domain(conn, vm)
    xml = (
        "<domainbackup><disks><disk name='vda' type='file'>"
        f"<target file={quoteattr(str(target))}/><driver type='qcow2'/>"
        "</disk></disks></domainbackup>"
    )
    with JobCompleted(conn, dom) as job:
        start = time.monotonic()
        dom.backupBegin(xml, None)
        job.wait(TIMEOUT)
        wait_released(target)
        return time.monotonic() - start


async def api_backup(
    client: httpx.AsyncClient, settings: Settings, vm: TestVM, poll: float
) -> tuple[float, float, Path]:
    """(a): POST, then wait until succeeded: on the backup's event stream (poll 0),
    else by GET every `poll` s. Seconds taken as the client saw it, as the service
    recorded it (created_at to finished_at), and the backup's dir."""
    start = time.monotonic()
    response = await client.post(
        f"/v1/hosts/local/domains/{vm.name}/backups", json={"kind": "full", "checkpoint": False}
    )
    response.raise_for_status()
    backup_id = response.json()["id"]
    if poll > 0:
        await _poll_until_ended(client, backup_id, poll, start)
    else:  # the stream ends after the terminal event
        (await client.get(f"/v1/backups/{backup_id}/events")).raise_for_status()
    elapsed = time.monotonic() - start
    body = (await client.get(f"/v1/backups/{backup_id}")).json()
    if body["status"] != "succeeded":
        raise RuntimeError(f"backup {backup_id} {body['status']}: {body['error']}")
    backup_dir = settings.backups_dir / vm.uuid / str(backup_id)
    for disk in body["disks"]:
        target = disk.get("target")
        if target and Path(target).exists():
            await asyncio.to_thread(wait_released, Path(target))
    recorded = datetime.fromisoformat(body["finished_at"]) - datetime.fromisoformat(
        body["created_at"]
    )
    return elapsed, recorded.total_seconds(), backup_dir


async def run_case(
    case: Case,
    client: httpx.AsyncClient,
    settings: Settings,
    conn: libvirt.virConnect,
    tmp: Path,
    poll: float,
) -> None:
    direct_dir = tmp / "direct"
    direct_dir.mkdir(exist_ok=True)

    async def run_a() -> None:
        elapsed, recorded, backup_dir = await api_backup(client, settings, case.vm, poll)
        shutil.rmtree(backup_dir, ignore_errors=True)
        await asyncio.to_thread(os.sync)  # no writeback of this run left for the next one
        case.a.append(elapsed)
        case.service.append(recorded)

    async def run_b() -> None:
        target = direct_dir / f"{case.vm.name}-{len(case.b)}.qcow2"
        elapsed = await asyncio.to_thread(direct_backup, conn, case.vm, target)
        target.unlink(missing_ok=True)
        await asyncio.to_thread(os.sync)
        case.b.append(elapsed)

    for i in range(case.pairs):
        order: list[Callable[[], Awaitable[None]]] = (
            [run_a, run_b] if i % 2 == 0 else [run_b, run_a]
        )
        for run in order:
            await run()


async def measure(
    settings: Settings, conn: libvirt.virConnect, tmp: Path, cases: list[Case], poll: float
) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
            # One untimed pair on each domain first: imports, the first connection, and
            # the first pass over each source image would otherwise land on pair 1.
            for case in cases:
                warm = Case("warm-up", case.vm, 1, [], [])
                await run_case(warm, client, settings, conn, tmp, poll)
            for case in cases:
                await run_case(case, client, settings, conn, tmp, poll)


def _ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def _added_ms(a: list[float], b: list[float]) -> float:
    return statistics.median((x - y) * 1000 for x, y in zip(a, b, strict=True))


def report(big: Case, tiny: Case, args: argparse.Namespace) -> None:
    print(f"\n== full backup, {args.disk_gib} GiB qcow2 disk, {args.data_mib} MiB written ==")
    print("(a) as the client saw it (event stream, or GET every --client-poll s); (a') as the")
    print("service recorded it, created_at to finished_at; (b) direct libvirt-python until")
    print("the target is closed")
    header = ("pair", "(a) s", "(a') s", "(b) s", "a/b", "a'/b")
    print("{:>4}  {:>7}  {:>7}  {:>7}  {:>6}  {:>6}".format(*header))
    for i, (a, s, b) in enumerate(zip(big.a, big.service, big.b, strict=True), 1):
        print(f"{i:>4}  {a:>7.3f}  {s:>7.3f}  {b:>7.3f}  {a / b:>6.2f}  {s / b:>6.2f}")
    print(
        f"median ratio (a)/(b) {_ratio(big.a, big.b):.2f}, "
        f"(a')/(b) {_ratio(big.service, big.b):.2f}"
    )

    print(f"\n== tiny backup, 64 MiB disk, 1 MiB written, {tiny.pairs} pairs ==")
    print("(a) API ms:     " + " ".join(f"{a * 1000:.0f}" for a in tiny.a))
    print("(a') service ms: " + " ".join(f"{a * 1000:.0f}" for a in tiny.service))
    print("(b) direct ms:  " + " ".join(f"{b * 1000:.0f}" for b in tiny.b))
    print(
        f"median added latency (a)-(b) {_added_ms(tiny.a, tiny.b):.1f} ms, "
        f"(a')-(b) {_added_ms(tiny.service, tiny.b):.1f} ms"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5, help="API/direct pairs, large disk")
    parser.add_argument("--disk-gib", type=int, default=4, help="virtual size of the large disk")
    parser.add_argument("--data-mib", type=int, default=1024, help="data written to it")
    parser.add_argument("--tiny-pairs", type=int, default=10, help="pairs on the 64 MiB disk")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="service job-stats poll")
    parser.add_argument(
        "--client-poll",
        type=float,
        default=0.0,
        help="(a) polls GET at this interval instead of waiting on the backup's event "
        "stream (0, the default); a busy poll shares the 2 cores with QEMU and slows it",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where disks, targets and the database go (e.g. /dev/shm to take the "
        "storage's own noise out of the comparison); default: the system temp dir",
    )
    args = parser.parse_args()
    if args.pairs < 1 or args.tiny_pairs < 1 or args.data_mib < 1:
        parser.error("--pairs, --tiny-pairs and --data-mib must be >= 1")
    if args.data_mib * MiB > args.disk_gib * GiB:
        parser.error("--data-mib exceeds --disk-gib")
    return args


def main() -> int:
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vmbackup-bench-", dir=args.workdir))
    settings = Settings(
        data_dir=tmp,
        database_url=f"sqlite+aiosqlite:///{tmp}/vmbackup.db",
        socket_root=tmp / "run",
        poll_seconds=args.poll_seconds,
        log_level="warning",
    )
    upgrade_to_head(settings.effective_database_url)
    ensure_event_loop()  # before our own connection: one libvirt event loop per process
    conn = libvirt.open(settings.libvirt_uri)
    vms: list[TestVM] = []
    try:
        big_vm = create_vm(conn, workdir=tmp / "vms", disks={"vda": args.disk_gib * GiB})
        vms.append(big_vm)
        tiny_vm = create_vm(conn, workdir=tmp / "vms", disks={"vda": 64 * MiB})
        vms.append(tiny_vm)
        took = fill(conn, big_vm, args.data_mib * MiB)
        print(f"wrote {args.data_mib} MiB into {big_vm.name} in {took:.1f} s (qemu-io)")
        fill(conn, tiny_vm, MiB)
        for vm in vms:
            domain(conn, vm).suspend()  # the guest sits still during the measurements
        big = Case("large", big_vm, args.pairs, [], [])
        tiny = Case("tiny", tiny_vm, args.tiny_pairs, [], [])
        asyncio.run(measure(settings, conn, tmp, [big, tiny], args.client_poll))
        report(big, tiny, args)
    finally:
        for vm in vms:
            try:
                destroy_vm(conn, vm)
            except Exception as e:  # keep cleaning up
                print(f"cleanup: {e}", file=sys.stderr)
        conn.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
