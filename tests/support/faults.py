"""Faults and the checks that the service told the truth after them, shared by
tests/integration/test_crashes.py, test_libvirtd_restart.py and bench/chaos.py.

A fault is `kill -9` of `vmbackup serve` at a named step of a backup (its crash
points, `CRASH_STEPS`), at a random instant, or a libvirtd restart. After it
the service is started again and every backup must reach the right terminal
status by looking at libvirt:

    run = FaultRun(settings, live, vm, service)
    CRASH_STEPS["ready"](run)     # crash, restart, read the export, /finish
    run.sweep()                   # no job, checkpoint or file left behind
    assert run.tally.problems() == {}

Problems are counted in a `Tally` (the figures the chaos bench prints) rather
than asserted one by one, so one trial reports everything it found; a
backup that cannot go on (lost, or failed where it had to be ready) raises
`Broken`, which ends that trial.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import httpx
import libvirt
from lxml import etree

from app.crashpoints import CRASH_EXIT_CODE
from app.settings import Settings
from tests.support.libvirtd import LiveConnection, restart_libvirtd
from tests.support.service import ServiceProcess
from tests.support.vms import (
    TestVM,
    create_vm,
    destroy_vm,
    domain,
    fill_disk,
    nbd_copy,
    pause,
    qemu_img_compare,
    read_image,
    resume,
    set_backup_speed,
    write_pattern,
)

T = TypeVar("T")
MiB = 1024 * 1024
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# Takeover after a crash waits for the dead holder's lease: keep it short.
LEASE_SECONDS = 3
WAIT_SECONDS = 60.0


@dataclass
class Tally:
    """What went wrong, by kind; every list must stay empty."""

    trials: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong_status: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # a trial that could not run at all

    def problems(self) -> dict[str, list[str]]:
        found = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "trials"}
        return {kind: items for kind, items in found.items() if items}


class Broken(Exception):
    """A backup that cannot go on as the scenario needs: `kind` is its Tally list."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass
class FaultRun:
    """One domain and one `vmbackup serve` (restarted as the faults need), with
    every backup and restore started, checked by `sweep()` at the end."""

    settings: Settings
    live: LiveConnection
    vm: TestVM
    service: ServiceProcess
    tally: Tally = field(default_factory=Tally)
    backups: list[str] = field(default_factory=list)
    restore_files: set[str] = field(default_factory=set)

    @property
    def conn(self) -> libvirt.virConnect:
        return self.live.conn

    def client(self) -> httpx.Client:
        return self.service.client()

    def start(self, crash_at: str | None = None) -> None:
        self.service.start(crash_at=crash_at)
        self.service.wait_ready()

    def restart(self) -> None:
        """`kill -9`, then start again."""
        self.service.kill()
        self.start()

    def crash(self, step: str, action: Callable[[httpx.Client], T]) -> T:
        """Start a process that dies at `step`, do `action` with it, wait for the
        crash, and start a healthy process."""
        self.start(crash_at=step)
        with self.client() as client:
            result = action(client)
        code = self.service.wait_exit()
        if code != CRASH_EXIT_CODE:
            raise AssertionError(f"vmbackup exited with {code}, not at {step}")
        self.start()
        return result

    # -- backups ----------------------------------------------------------------

    def post_backup(self, client: httpx.Client, **body: Any) -> str:
        response = client.post(f"/v1/hosts/local/domains/{self.vm.name}/backups", json=body)
        assert response.status_code == 202, response.text
        backup_id: str = response.json()["id"]
        self.backups.append(backup_id)
        return backup_id

    def wait(
        self, client: httpx.Client, backup_id: str, wanted: set[str], timeout: float = WAIT_SECONDS
    ) -> dict[str, Any]:
        """The backup once its status is one of `wanted`; Broken if it ends
        otherwise, or is not there in time."""
        deadline = time.monotonic() + timeout
        while True:
            backup: dict[str, Any] = client.get(f"/v1/backups/{backup_id}").json()
            if backup["status"] in wanted:
                return backup
            if backup["status"] in TERMINAL:
                raise Broken(
                    "wrong_status",
                    f"{backup_id}: {backup['status']}, not {wanted}: {backup['error']}",
                )
            if time.monotonic() > deadline:
                raise Broken("lost", f"{backup_id}: still {backup['status']} after {timeout} s")
            time.sleep(0.1)

    def expect_push(self, client: httpx.Client, backup_id: str) -> dict[str, Any]:
        """Succeeded, and its newest file reads as the (paused) disk reads now."""
        done = self.wait(client, backup_id, {"succeeded"})
        target = done["disks"][0]["target"]
        if not qemu_img_compare(self.vm.disks["vda"], target):
            self.tally.mismatched.append(f"{backup_id}: {target} differs from the disk")
        return done

    def read_export(self, client: httpx.Client, backup_id: str, uri: str | None = None) -> str:
        """Wait for `ready`, check that its nbd_uri is the one seen before (if
        any) and libvirt's live export, read it with nbdcopy and compare with the
        (paused) disk. Returns the nbd_uri."""
        ready = self.wait(client, backup_id, {"ready"})
        found: str = ready["disks"][0]["nbd_uri"]
        if uri is not None and found != uri:
            self.tally.mismatched.append(f"{backup_id}: nbd_uri {found}, was {uri}")
        served = self.served_socket()
        if served is None or f"socket={served}" not in found:
            self.tally.mismatched.append(f"{backup_id}: {found} is not libvirt's export {served}")
        with tempfile.TemporaryDirectory(prefix="vmbt-") as tmp:
            if nbd_copy(found, Path(tmp) / "vda.raw") != read_image(self.vm.disks["vda"]):
                self.tally.mismatched.append(f"{backup_id}: the export differs from the disk")
        return found

    def served_socket(self) -> str | None:
        """The unix socket of the domain's running pull job, from libvirt itself."""
        try:
            desc = self.conn.lookupByUUIDString(self.vm.uuid).backupGetXMLDesc(0)
        except libvirt.libvirtError:
            return None
        found = etree.fromstring(desc.encode()).xpath("string(/domainbackup/server/@socket)")
        return str(found) or None

    def finish(self, client: httpx.Client, backup_id: str) -> None:
        response = client.post(f"/v1/backups/{backup_id}/finish")
        assert response.status_code == 202, response.text

    def expect_finished(self, client: httpx.Client, backup_id: str) -> dict[str, Any]:
        return self.wait(client, backup_id, {"succeeded"})

    def restore(self, client: httpx.Client, backup_id: str) -> str:
        response = client.post(f"/v1/backups/{backup_id}/restores", json={"format": "qcow2"})
        assert response.status_code == 202, response.text
        restore_id: str = response.json()["id"]
        return restore_id

    def expect_restored(self, client: httpx.Client, restore_id: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while (restore := client.get(f"/v1/restores/{restore_id}").json())["status"] in {
            "queued",
            "running",
        }:
            if time.monotonic() > deadline:
                raise Broken("lost", f"restore {restore_id}: still {restore['status']}")
            time.sleep(0.1)
        if restore["status"] != "succeeded":
            self.tally.wrong_status.append(f"restore {restore_id}: {restore}")
            return
        image = restore["disks"][0]["file"]
        self.restore_files.add(image)
        if not qemu_img_compare(self.vm.disks["vda"], image):
            self.tally.mismatched.append(f"restore {restore_id}: {image} differs from the disk")

    # -- after the faults -------------------------------------------------------

    def sweep(self) -> None:
        """Every backup succeeded once, and nothing is left behind: no libvirt
        job, no checkpoint the service does not hold, no stray file."""
        with self.client() as client:
            backups = [self._check_events(client, b) for b in self.backups]
            self._check_checkpoints(client, backups)
            self._check_files(client)
        stats = self.conn.lookupByUUIDString(self.vm.uuid).jobStats()
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE:
            self.tally.orphaned.append(f"{self.vm.name}: a libvirt job is left: {stats}")

    def _check_events(self, client: httpx.Client, backup_id: str) -> dict[str, Any]:
        """One `starting` (one claim, one job), never `failed`, ends `succeeded`."""
        backup: dict[str, Any] = client.get(f"/v1/backups/{backup_id}").json()
        if backup["status"] != "succeeded":
            self.tally.wrong_status.append(f"{backup_id}: {backup['status']} {backup['error']}")
            return backup
        statuses = status_events(client, backup_id)
        if statuses.count("starting") != 1:
            self.tally.duplicated.append(f"{backup_id}: events {statuses}")
        if "failed" in statuses:
            self.tally.wrong_status.append(f"{backup_id}: events {statuses}")
        return backup

    def _check_checkpoints(self, client: httpx.Client, backups: list[dict[str, Any]]) -> None:
        dom = self.conn.lookupByUUIDString(self.vm.uuid)
        in_libvirt = {cp.getName() for cp in dom.listAllCheckpoints()}
        listed = client.get(f"/v1/hosts/local/domains/{self.vm.name}/checkpoints").json()
        held = {
            cp["name"]
            for cp in listed["items"]
            if cp["in_libvirt"] and cp["backup_id"] is not None and cp["state"] == "ok"
        }
        made = {b["checkpoint"] for b in backups if b["status"] == "succeeded"}
        if not in_libvirt == held == made:
            self.tally.orphaned.append(
                f"checkpoints: libvirt {sorted(in_libvirt)}, service {sorted(held)}, "
                f"made by succeeded backups {sorted(made)}"
            )

    def _check_files(self, client: httpx.Client) -> None:
        """The backup root holds the files of succeeded push backups only (all
        the service knows of), the restore root the restored images, and no
        scratch file or socket is left."""
        targets = {
            disk["target"]
            for backup in all_backups(client)
            if backup["mode"] == "push" and backup["status"] == "succeeded"
            for disk in backup["disks"]
            if disk["target"] and Path(disk["target"]).is_relative_to(self.settings.backups_dir)
        }
        expected = [
            (self.settings.backups_dir, targets),
            (self.settings.restores_dir, self.restore_files),
            (self.settings.scratch_dir, set()),
            (self.settings.socket_root, set()),
        ]
        for root, wanted in expected:
            present = {str(p) for p in root.rglob("*") if not p.is_dir()}
            if present != wanted:
                self.tally.orphaned.append(
                    f"{root}: stray {sorted(present - wanted)}, missing {sorted(wanted - present)}"
                )


def status_events(client: httpx.Client, backup_id: str) -> list[str]:
    """The statuses a terminal backup went through, from its event stream
    (which ends after the terminal event)."""
    body = client.get(f"/v1/backups/{backup_id}/events").text
    statuses = []
    for line in body.splitlines():
        if line.startswith("data: "):
            event = json.loads(line.removeprefix("data: "))
            if event["progress"] is None:
                statuses.append(event["status"])
    return statuses


def all_backups(client: httpx.Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/backups", params=params).json()
        found.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


# -- the scenarios: one fault each, then what must follow ---------------------


def create_held_push_vm(conn: libvirt.virConnect, workdir: Path) -> TestVM:
    """A running domain with 512 MiB of data on a 1 GiB disk: a push of it
    lasts long enough (a few seconds) to be held running (`hold_backup_job`)."""
    vm = create_vm(conn, workdir=workdir, disks={"vda": 1024 * MiB}, start=False)
    try:
        fill_disk(vm, "vda", 512 * MiB, 0x3E)
        domain(conn, vm).create()
    except BaseException:
        destroy_vm(conn, vm)
        raise
    return vm


def write_and_pause(run: FaultRun, byte: int, offset: int = 0) -> None:
    """Change the disk, then hold it still: a backup taken now must read so."""
    write_pattern(run.conn, run.vm, "vda", offset, 2 * MiB, byte)
    pause(run.conn, run.vm)


def crash_push(step: str) -> Callable[[FaultRun], None]:
    """A push backup, the process killed at `step`: it succeeds after the restart."""

    def scenario(run: FaultRun) -> None:
        write_and_pause(run, 0x5A)
        backup_id = run.crash(step, lambda client: run.post_backup(client, mode="push"))
        with run.client() as client:
            run.expect_push(client, backup_id)

    return scenario


def crash_pull_before_ready(step: str) -> Callable[[FaultRun], None]:
    """A pull backup killed on its way to `ready`: ready after the restart, the
    export reads as the disk, and /finish ends it."""

    def scenario(run: FaultRun) -> None:
        write_and_pause(run, 0x6B)
        backup_id = run.crash(step, lambda client: run.post_backup(client, mode="pull"))
        with run.client() as client:
            first_seen = run.read_export(client, backup_id)
            run.finish(client, backup_id)
            done = run.expect_finished(client, backup_id)
        if done["disks"][0]["nbd_uri"] != first_seen:
            run.tally.mismatched.append(f"{backup_id}: nbd_uri changed to {done['disks']}")

    return scenario


def crash_pull_after_finish(step: str) -> Callable[[FaultRun], None]:
    """A `ready` pull, read, then /finish: the process dies at `step` on the way
    to `succeeded`, which the restarted one reaches."""

    def scenario(run: FaultRun) -> None:
        def finish(client: httpx.Client) -> str:
            backup_id = run.post_backup(client, mode="pull")
            run.read_export(client, backup_id)
            run.finish(client, backup_id)
            return backup_id

        write_and_pause(run, 0x7C)
        backup_id = run.crash(step, finish)
        with run.client() as client:
            run.expect_finished(client, backup_id)

    return scenario


def crash_while_queued(run: FaultRun) -> None:
    """A push queued behind a `ready` pull of its domain, never claimed when the
    process dies: after the restart the pull is still ready (same export) and
    the push runs once the pull is finished."""
    write_and_pause(run, 0x3C)
    run.start()
    with run.client() as client:
        pull = run.post_backup(client, mode="pull")
        uri = run.read_export(client, pull)
        push = run.post_backup(client, mode="push", kind="full")
        if (queued := client.get(f"/v1/backups/{push}").json()["status"]) != "queued":
            raise Broken("wrong_status", f"{push}: {queued} behind a ready pull")
    run.restart()
    with run.client() as client:
        run.read_export(client, pull, uri)
        run.finish(client, pull)
        run.expect_finished(client, pull)
        run.expect_push(client, push)


def crash_while_rebasing(run: FaultRun) -> None:
    """A full push, then an incremental killed while its file is re-pointed at
    the full one: after the restart its chain opens alone and reads as the disk."""
    write_and_pause(run, 0x11)
    run.start()
    with run.client() as client:
        full = run.expect_push(client, run.post_backup(client, mode="push"))
    run.service.stop()
    resume(run.conn, run.vm)
    write_and_pause(run, 0x22, offset=32 * MiB)
    incremental = run.crash("rebasing", lambda client: run.post_backup(client, mode="push"))
    with run.client() as client:
        done = run.expect_push(client, incremental)
        links = client.get(f"/v1/backups/{incremental}/chain").json()["disks"]["vda"]
    if done["kind"] != "incremental" or [link["file"] for link in links] != [
        full["disks"][0]["target"],
        done["disks"][0]["target"],
    ]:
        run.tally.mismatched.append(f"{incremental}: {done['kind']}, chain {links}")


def crash_while_restoring(run: FaultRun) -> None:
    """A restore killed after converting, before its image is renamed into
    place: the restarted process converts again and the image reads as the disk."""
    write_and_pause(run, 0x44)
    run.start()
    with run.client() as client:
        backup_id = run.post_backup(client, mode="push")
        run.expect_push(client, backup_id)
    run.service.stop()
    restore_id = run.crash("restore-converting", lambda client: run.restore(client, backup_id))
    with run.client() as client:
        run.expect_restored(client, restore_id)


CRASH_STEPS: dict[str, Callable[[FaultRun], None]] = {
    "queued": crash_while_queued,
    "claimed": crash_push("claimed"),
    "before-begin": crash_push("before-begin"),
    "after-begin": crash_push("after-begin"),
    "pull-after-begin": crash_pull_before_ready("after-begin"),
    "running": crash_push("running"),
    "ready": crash_pull_before_ready("ready"),
    "finishing": crash_pull_after_finish("finishing"),
    "completing": crash_push("completing"),
    "pull-completing": crash_pull_after_finish("completing"),
    "rebasing": crash_while_rebasing,
    "restore-converting": crash_while_restoring,
}


def kill_at_random(rng: random.Random, max_delay: float = 1.5) -> Callable[[FaultRun], None]:
    """`kill -9` at a random instant after a push or a pull is posted."""
    mode = rng.choice(["push", "pull"])
    delay = rng.uniform(0, max_delay)

    def scenario(run: FaultRun) -> None:
        write_and_pause(run, rng.randrange(1, 256))
        run.start()
        with run.client() as client:
            backup_id = run.post_backup(client, mode=mode)
        time.sleep(delay)
        run.restart()
        with run.client() as client:
            if mode == "push":
                run.expect_push(client, backup_id)
                return
            run.read_export(client, backup_id)
            run.finish(client, backup_id)
            run.expect_finished(client, backup_id)

    return scenario


def restart_during_pull(
    run: FaultRun, down_seconds: float = 1.0, during: Callable[[], None] | None = None
) -> str:
    """libvirtd restarted under a `ready` pull: still ready, same export, reads
    as the disk, /finish ends it. `during` runs while libvirtd is down."""
    write_and_pause(run, 0x5E)
    run.start()
    with run.client() as client:
        backup_id = run.post_backup(client, mode="pull")
        uri = run.read_export(client, backup_id)
        restart_libvirtd(down_seconds, during)
        run.read_export(client, backup_id, uri)
        run.finish(client, backup_id)
        run.expect_finished(client, backup_id)
    return backup_id


def restart_during_push(run: FaultRun, *, ends_during_outage: bool) -> str:
    """libvirtd restarted while a push copies (held running by a QMP speed
    limit): it succeeds and reads as the disk. With `ends_during_outage` the
    copy ends while libvirtd is away and the service is frozen until the new
    libvirtd has ended the job: its JOB_COMPLETED event is surely lost, and
    the outcome must come from the completed job's statistics."""
    write_and_pause(run, 0x9D)
    run.start()
    with run.client() as client:
        backup_id = run.post_backup(client, mode="push")
        hold_backup_job(run, client, backup_id)
        run.wait(client, backup_id, {"running"})
        if ends_during_outage:
            with frozen(run.service):
                stats = run.conn.lookupByUUIDString(run.vm.uuid).jobStats()
                # The rest in about a second, well within the outage.
                set_backup_speed(run.conn, run.vm, stats["disk_total"] - stats["disk_processed"])
                restart_libvirtd(down_seconds=2)
                wait_job_completed(run)
        else:
            restart_libvirtd(down_seconds=1)
            release_backup_job(run)
        run.expect_push(client, backup_id)
    return backup_id


@contextmanager
def frozen(service: ServiceProcess) -> Iterator[None]:
    """The service stopped (SIGSTOP) inside the block: it sees nothing until after."""
    assert service.process is not None
    os.killpg(service.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(service.process.pid, signal.SIGCONT)


def wait_job_completed(run: FaultRun, timeout: float = 30.0) -> None:
    """Until libvirt reports the domain's job completed (its statistics kept
    for the service to read)."""
    flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
    deadline = time.monotonic() + timeout
    while run.conn.lookupByUUIDString(run.vm.uuid).jobStats(flags).get("type") != (
        libvirt.VIR_DOMAIN_JOB_COMPLETED
    ):
        if time.monotonic() > deadline:
            raise Broken("lost", f"{run.vm.name}: the job did not complete in {timeout} s")
        time.sleep(0.1)


def hold_backup_job(
    run: FaultRun, client: httpx.Client, backup_id: str, timeout: float = 10.0
) -> None:
    """Slow the domain's backup job to 1 MiB/s as soon as it is in QEMU (its
    first ~64 MiB are copied at once: QEMU's copy workers are in flight).
    Raises if the push ended first: then the fault could not be set up (an
    error of the bench, not of the service)."""
    deadline = time.monotonic() + timeout
    while set_backup_speed(run.conn, run.vm, MiB) == 0:
        status = client.get(f"/v1/backups/{backup_id}").json()["status"]
        if status in TERMINAL or time.monotonic() > deadline:
            raise RuntimeError(f"{backup_id}: no running backup job to hold ({status})")
        time.sleep(0.01)


def release_backup_job(run: FaultRun, timeout: float = 10.0) -> None:
    """Lift the speed limit once libvirtd is back (retried: it may still be
    reconnecting to QEMU). A job that ended meanwhile needs nothing."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            set_backup_speed(run.conn, run.vm, 0)
            return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def short_socket_root(settings: Settings) -> Iterator[Settings]:
    """The settings with the NBD sockets in a short /tmp dir: a unix socket's
    path holds at most 107 bytes, and pytest's tmp paths grow long."""
    root = Path(tempfile.mkdtemp(prefix="vmbt-run-"))
    try:
        yield settings.model_copy(update={"socket_root": root})
    finally:
        shutil.rmtree(root, ignore_errors=True)


def next_backup_succeeds(run: FaultRun) -> str:
    """After a fault, the domain's next push backup succeeds and reads as the disk."""
    resume(run.conn, run.vm)
    write_and_pause(run, 0xE7, offset=8 * MiB)
    with run.client() as client:
        backup_id = run.post_backup(client, mode="push")
        run.expect_push(client, backup_id)
    return backup_id
