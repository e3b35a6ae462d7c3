"""The big replica run (issue 7): two `vmbackup serve` replicas on one
PostgreSQL take many push backups (full and auto) of paused domains, POSTed
through either replica; one replica is `kill -9`ed midway and started again.
A sampler lists the backups through the API throughout and counts any domain
seen with two active backups at once. At the end every backup is checked:
`succeeded`, exactly one `starting` and one `succeeded` in its events, and its
file (or chain head) equal to its domain's disk.

Used by tests/integration/test_replica_run.py and by bench/replicas.py (which
prints the figures, at any count).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import libvirt
import psycopg

from app.settings import Settings
from app.worker.notify import libpq_conninfo
from tests.support.replicas import TERMINAL, pid, status_events
from tests.support.service import ServiceProcess, service_env
from tests.support.vms import (
    MiB,
    TestVM,
    create_vm,
    destroy_vm,
    pause,
    qemu_img_compare,
    write_pattern,
)

ACTIVE = {"starting", "running", "ready", "finishing"}
POSTERS = 4  # clients POSTing at once


@dataclass
class Figures:
    backups: int = 0
    succeeded: int = 0
    lost: int = 0  # not succeeded at the end (or never seen)
    duplicated: int = 0  # more than one `starting` or `succeeded` in its events
    overlapping: int = 0  # samples in which a domain had two active backups
    mismatched: int = 0  # data not equal to the disk
    samples: int = 0
    held_by_killed: int = 0  # active backups the killed replica held
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.backups == self.succeeded and not (
            self.lost or self.duplicated or self.overlapping or self.mismatched
        )

    def line(self) -> str:
        return (
            f"backups={self.backups} succeeded={self.succeeded} lost={self.lost} "
            f"duplicated={self.duplicated} overlapping={self.overlapping} "
            f"mismatched={self.mismatched} samples={self.samples} "
            f"held_by_killed={self.held_by_killed} time={self.seconds:.1f}s"
        )


@contextmanager
def patterned_domains(uri: str, workdir: Path, count: int, disk_mib: int) -> Iterator[list[TestVM]]:
    """`count` paused throw-away domains, each disk holding a pattern of its own
    (so a backup of the wrong domain, or of nothing, compares unequal). Removed
    through a fresh connection: libvirtd may have been restarted meanwhile."""
    vms: list[TestVM] = []
    conn = libvirt.open(uri)
    try:
        for i in range(count):
            vm = create_vm(conn, workdir=workdir, disks={"vda": disk_mib * MiB})
            vms.append(vm)
            write_pattern(conn, vm, "vda", 0, MiB, 0x10 + i)
            write_pattern(conn, vm, "vda", disk_mib // 2 * MiB, MiB, 0x80 + i)
            pause(conn, vm)
        yield vms
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
        _destroy_all(uri, vms)


def _keep_qemu_log(vm: TestVM) -> None:
    """Beside the domains' directory: why a domain stopped, if one did."""
    with contextlib.suppress(OSError):
        shutil.copy(vm.log, vm.dir.parent / f"{vm.name}.qemu.log")


def _destroy_all(uri: str, vms: list[TestVM], attempts: int = 30) -> None:
    """Destroy every domain, through a new connection each attempt (libvirtd may
    be restarting: other tests on this host restart it)."""
    left = list(vms)
    for attempt in range(attempts):
        try:
            conn = libvirt.open(uri)
            try:
                while left:
                    _keep_qemu_log(left[0])
                    destroy_vm(conn, left[0])
                    left.pop(0)
                return
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
        except (libvirt.libvirtError, RuntimeError):
            if attempt == attempts - 1:
                raise
            time.sleep(2)


def _alive(replicas: Sequence[ServiceProcess]) -> list[ServiceProcess]:
    return [r for r in replicas if r.process is not None and r.process.poll() is None]


def _list_all(replicas: Sequence[ServiceProcess]) -> list[dict[str, Any]] | None:
    """Every backup, through whichever replica answers (one query: one snapshot)."""
    for replica in _alive(replicas):
        try:
            response = httpx.get(f"{replica.url}/v1/backups", params={"limit": 500}, timeout=10)
        except httpx.TransportError:
            continue
        if response.status_code == 200:
            items: list[dict[str, Any]] = response.json()["items"]
            return items
    return None


class Sampler(threading.Thread):
    """Counts the samples in which some domain has more than one active backup."""

    def __init__(self, replicas: Sequence[ServiceProcess], figures: Figures) -> None:
        super().__init__(daemon=True)
        self.replicas = replicas
        self.figures = figures
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            items = _list_all(self.replicas)
            if items is not None:
                self.figures.samples += 1
                active = Counter(b["domain"]["uuid"] for b in items if b["status"] in ACTIVE)
                if any(n > 1 for n in active.values()):
                    self.figures.overlapping += 1
                    self.figures.problems.append(f"two active on one domain: {dict(active)}")
            self.done.wait(0.05)


def _retryable(response: httpx.Response) -> bool:
    """503, or libvirt's connection dropped in the middle of the request (502
    with libvirt's VIR_ERR_SYSTEM_ERROR): nothing was queued either way."""
    if response.status_code == 503:
        return True
    return response.status_code == 502 and (
        response.json().get("libvirt_code") == libvirt.VIR_ERR_SYSTEM_ERROR
    )


def _post(replicas: Sequence[ServiceProcess], i: int, vm: TestVM, body: dict[str, Any]) -> str:
    """POST backup `i` through a live replica, again under the same key while
    libvirtd is away (restarted by some other test on this host, say)."""
    deadline = time.monotonic() + 120
    while True:
        live = _alive(replicas)
        response = httpx.post(
            f"{live[i % len(live)].url}/v1/hosts/local/domains/{vm.name}/backups",
            json=body,
            headers={"Idempotency-Key": f"replica-run-{i}"},
            timeout=30,
        )
        if not _retryable(response) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert response.status_code == 202, response.text
    backup_id: str = response.json()["id"]
    return backup_id


def _post_many(
    replicas: Sequence[ServiceProcess], vms: Sequence[TestVM], first: int, count: int
) -> list[str]:
    """Backup i goes to domain i mod N through replica i mod 2 (a live one), every
    third a full one, the rest auto; several at once, as clients would."""

    def post(i: int) -> str:
        return _post(replicas, i, vms[i % len(vms)], {"kind": "full" if i % 3 == 0 else "auto"})

    with ThreadPoolExecutor(POSTERS) as posters:
        return list(posters.map(post, range(first, first + count)))


def _wait_for(
    replicas: Sequence[ServiceProcess],
    ids: Sequence[str],
    enough: Callable[[list[dict[str, Any]]], bool],
    timeout: float,
) -> list[dict[str, Any]]:
    """The backups of `ids` as listed, once `enough` holds of them (or at the timeout)."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    while True:
        items = [b for b in _list_all(replicas) or [] if b["id"] in wanted]
        if enough(items) or time.monotonic() > deadline:
            return items
        time.sleep(0.2)


def _succeeded(items: list[dict[str, Any]]) -> int:
    return sum(b["status"] == "succeeded" for b in items)


def _all_ended(count: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda items: len(items) == count and all(b["status"] in TERMINAL for b in items)


def _held_by(database_url: str, replica: ServiceProcess) -> int:
    """How many active backups the replica holds (the lease is not in the API)."""
    with psycopg.connect(libpq_conninfo(database_url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM backups WHERE lease_holder LIKE %s"
            " AND status IN ('starting', 'running', 'ready', 'finishing')",
            (f"%:{pid(replica)}:%",),
        ).fetchone()
    return int(row[0]) if row else 0


def _busiest(database_url: str, replicas: Sequence[ServiceProcess]) -> ServiceProcess:
    """The replica holding the most active backups, once one holds any (briefly
    none may: between two claims, or while libvirtd restarts)."""
    deadline = time.monotonic() + 60
    while True:
        held = {_held_by(database_url, r): r for r in replicas}
        if max(held) > 0 or time.monotonic() > deadline:
            return held[max(held)]
        time.sleep(0.02)


def _check(
    replicas: Sequence[ServiceProcess],
    vms: Sequence[TestVM],
    ids: Sequence[str],
    final: list[dict[str, Any]],
    figures: Figures,
) -> None:
    by_id = {b["id"]: b for b in final}
    disks = {vm.uuid: vm.disks["vda"] for vm in vms}
    with httpx.Client(base_url=_alive(replicas)[0].url, timeout=30) as client:
        for backup_id in ids:
            backup = by_id.get(backup_id)
            if backup is None or backup["status"] != "succeeded":
                figures.lost += 1
                seen = backup and (backup["status"], backup["error"], backup["kind"])
                figures.problems.append(f"{backup_id}: {seen}")
                continue
            figures.succeeded += 1
            statuses = status_events(client, backup_id)
            if statuses.count("starting") != 1 or statuses.count("succeeded") != 1:
                figures.duplicated += 1
                figures.problems.append(f"{backup_id}: events {statuses}")
            target = backup["disks"][0]["target"]
            if not qemu_img_compare(disks[backup["domain"]["uuid"]], target):
                figures.mismatched += 1
                figures.problems.append(f"{backup_id}: {target} differs from its disk")


def run_replicas(
    settings: Settings, vms: Sequence[TestVM], total: int, logs: Path, timeout: float = 600
) -> Figures:
    """The domains must be paused, each disk holding its own pattern."""
    figures = Figures(backups=total)
    env = service_env(settings)
    with (
        ServiceProcess(env, log=logs / "a.log") as a,
        ServiceProcess(env, log=logs / "b.log") as b,
    ):
        replicas = [a, b]
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        sampler = Sampler(replicas, figures)
        sampler.start()
        started = time.monotonic()
        try:
            half = total // 2
            ids = _post_many(replicas, vms, 0, half)
            _wait_for(replicas, ids, lambda items: _succeeded(items) >= total // 4, timeout)
            victim = _busiest(settings.effective_database_url, replicas)
            victim.kill()
            figures.held_by_killed = _held_by(settings.effective_database_url, victim)
            ids += _post_many(replicas, vms, half, total - half)
            victim.start()
            victim.wait_ready()
            final = _wait_for(replicas, ids, _all_ended(total), timeout)
            figures.seconds = time.monotonic() - started
        finally:
            sampler.done.set()
            sampler.join()
        _check(replicas, vms, ids, final, figures)
    return figures
