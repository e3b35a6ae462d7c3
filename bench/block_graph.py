"""QEMU 7.2 aborts a guest asked about its block nodes while `backupBegin` opens
the backup's target (app/libvirt/block_graph.py). This runs rounds of push
backups on a fresh throw-away domain while two threads ask `blockInfo`, in three
kinds of rounds, one after the other: `bare` (straight libvirt-python), `guarded`
(the begin and the questions through the service's calls, which take turns), and
`elsewhere` (the begin bare, as another process would make it, the questions
through the service's calls: only their look at libvirt's job protects them). It
prints how many rounds of each ended with the guest crashed. Not a test: it
prints figures and exits 0.

    cd /work/main && .venv/bin/python bench/block_graph.py [--rounds 6] [--backups 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import libvirt  # noqa: E402

from app.hypervisor import BackupSpec, DiskBackupSpec  # noqa: E402
from app.libvirt import domains, jobs  # noqa: E402
from app.libvirt.events import ensure_event_loop  # noqa: E402
from tests.support.vms import create_vm, destroy_vm  # noqa: E402

URI = "qemu:///system"
QUESTION_THREADS = 2


KINDS = ("bare", "guarded", "elsewhere")


def _ask_until(stop: threading.Event, uuid: str, guarded: bool) -> None:
    dom = libvirt.open(URI).lookupByUUIDString(uuid)
    disk = next(d for d in domains.describe(dom).disks if d.name == "vda")
    while not stop.is_set():
        try:
            if guarded:
                domains.describe(dom)  # blockInfo inside the service's turn-taking
            else:
                dom.blockInfo(disk.name)
        except libvirt.libvirtError:
            if not dom.isActive():
                return


def _begin(dom: libvirt.virDomain, target: Path, guarded: bool) -> None:
    if guarded:
        disk = DiskBackupSpec(name="vda", target=str(target), driver="qcow2")
        spec = BackupSpec(mode="push", disks=(disk,))
        jobs.backup_begin(dom, backup=spec, checkpoint=None, reuse_external=False, quiesce=False)
        return
    dom.backupBegin(
        "<domainbackup mode='push'><disks><disk name='vda' backup='yes' type='file'>"
        f"<target file='{target}'/><driver type='qcow2'/></disk></disks></domainbackup>",
        None,
        0,
    )


def _round(conn: libvirt.virConnect, workdir: Path, backups: int, kind: str) -> int | None:
    """The backup during which the guest crashed, or None if it lived through all."""
    asking_guarded, begin_guarded = kind != "bare", kind == "guarded"
    vm = create_vm(conn, workdir=workdir)
    dom = conn.lookupByUUIDString(vm.uuid)
    stop = threading.Event()
    askers = [
        threading.Thread(target=_ask_until, args=(stop, vm.uuid, asking_guarded), daemon=True)
        for _ in range(QUESTION_THREADS)
    ]
    for asker in askers:
        asker.start()
    try:
        for number in range(1, backups + 1):
            target = workdir / f"{vm.name}-{number}.qcow2"
            try:
                _begin(dom, target, begin_guarded)
            except libvirt.libvirtError:
                return number if not dom.isActive() else None
            while dom.isActive() and dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
                time.sleep(0.01)
            target.unlink(missing_ok=True)
            if not dom.isActive():
                return number
        return None
    finally:
        stop.set()
        for asker in askers:
            asker.join(5)
        destroy_vm(conn, vm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each kind (6)")
    parser.add_argument("--backups", type=int, default=100, help="backups per round (100)")
    args = parser.parse_args()
    ensure_event_loop()
    conn = libvirt.open(URI)
    crashed = dict.fromkeys(KINDS, 0)
    with tempfile.TemporaryDirectory(prefix="vmb-bench-") as tmp:
        for round_number in range(args.rounds):
            for kind in KINDS:
                at = _round(conn, Path(tmp) / f"{kind}{round_number}", args.backups, kind)
                crashed[kind] += at is not None
                print(
                    f"round {round_number + 1} {kind}: "
                    + (f"crashed at backup {at}" if at else "alive")
                )
    print(
        f"guests crashed, of {args.rounds} rounds of {args.backups} backups: "
        + ", ".join(f"{kind} {crashed[kind]}" for kind in KINDS)
    )


if __name__ == "__main__":
    main()
