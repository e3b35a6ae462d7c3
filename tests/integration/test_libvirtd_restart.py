"""libvirtd stopped and started (as a package upgrade does) under running
backups: QEMU keeps copying and exporting, and the service waits the outage
out, never turning it into a failure. Only an outage past the configured
limit fails a backup, whose job is then aborted when libvirtd is back.

Real processes: `vmbackup serve` and libvirtd itself. Each outage disturbs
every other user of this libvirtd, so they are few and short, and run on
PostgreSQL only (the database plays no part in what they prove)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.support.faults import (
    LEASE_SECONDS,
    FaultRun,
    create_held_push_vm,
    next_backup_succeeds,
    restart_during_pull,
    restart_during_push,
    short_socket_root,
    write_and_pause,
)
from tests.support.libvirtd import LiveConnection, libvirtd_down
from tests.support.service import ServiceProcess, service_env
from tests.support.vms import TestVM, destroy_vm, domain

pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
    pytest.mark.timeout(100),
]
OUTAGE_LIMIT_SECONDS = 2


def host_up(client: httpx.Client) -> bool:
    metrics = client.get("/metrics").text
    found = re.search(r'^vmbackup_host_up\{host="local"\} (\S+)$', metrics, re.M)
    assert found, metrics
    return float(found.group(1)) == 1.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


@pytest.fixture
def settings(settings: Settings) -> Iterator[Settings]:
    with short_socket_root(settings) as short:
        yield short


@pytest.fixture
def service(settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    env = service_env(
        settings,
        VMBACKUP_LEASE_SECONDS=str(LEASE_SECONDS),
        VMBACKUP_HOST_OUTAGE_LIMIT_SECONDS=str(OUTAGE_LIMIT_SECONDS),
    )
    with ServiceProcess(env, log=tmp_path / "service.log") as process:
        yield process


@pytest.fixture
def patient_service(settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    """The default outage limit (15 minutes): every outage here is waited out."""
    env = service_env(settings, VMBACKUP_LEASE_SECONDS=str(LEASE_SECONDS))
    env.pop("VMBACKUP_HOST_OUTAGE_LIMIT_SECONDS", None)
    with ServiceProcess(env, log=tmp_path / "service.log") as process:
        yield process


@pytest.fixture
def big_vm(libvirt_live: LiveConnection, tmp_path: Path) -> Iterator[TestVM]:
    vm = create_held_push_vm(libvirt_live.conn, tmp_path / "vms")
    try:
        yield vm
    finally:
        destroy_vm(libvirt_live.conn, vm)


def test_a_ready_pull_stays_ready_across_a_libvirtd_restart_with_the_same_export(
    settings: Settings, libvirt_live: LiveConnection, vm: TestVM, patient_service: ServiceProcess
) -> None:
    run = FaultRun(settings, libvirt_live, vm, patient_service)
    seen_while_down: list[tuple[bool, str]] = []

    def while_down() -> None:
        with run.client() as client:
            wait_until(lambda: not host_up(client), "/metrics shows the host down")
            backup = client.get(f"/v1/backups/{run.backups[0]}").json()
            seen_while_down.append((host_up(client), backup["status"]))

    try:
        restart_during_pull(run, down_seconds=1, during=while_down)
        with run.client() as client:
            wait_until(lambda: host_up(client), "/metrics shows the host up again")
        next_backup_succeeds(run)
        run.sweep()
    finally:
        print(patient_service.output())
    assert seen_while_down == [(False, "ready")]
    assert run.tally.problems() == {}


@pytest.mark.parametrize("ends_during_outage", [False, True], ids=["runs-through", "ends-during"])
def test_a_running_push_succeeds_across_a_libvirtd_restart(
    settings: Settings,
    libvirt_live: LiveConnection,
    big_vm: TestVM,
    patient_service: ServiceProcess,
    ends_during_outage: bool,
) -> None:
    run = FaultRun(settings, libvirt_live, big_vm, patient_service)
    try:
        restart_during_push(run, ends_during_outage=ends_during_outage)
        next_backup_succeeds(run)
        run.sweep()
    finally:
        print(patient_service.output())
    assert run.tally.problems() == {}


def test_an_outage_past_the_limit_fails_the_backup_and_aborts_its_job_on_return(
    settings: Settings, libvirt_live: LiveConnection, vm: TestVM, service: ServiceProcess
) -> None:
    run = FaultRun(settings, libvirt_live, vm, service)
    write_and_pause(run, 0x2F)
    run.start()
    try:
        with run.client() as client:
            pull = run.post_backup(client, mode="pull")
            run.read_export(client, pull)
            with libvirtd_down():
                back_at = time.monotonic() + 2 * OUTAGE_LIMIT_SECONDS
                failed = run.wait(client, pull, {"failed"})
                down_seen = not host_up(client)
                time.sleep(max(0.0, back_at - time.monotonic()))
        dom = domain(run.conn, vm)
        wait_until(lambda: dom.jobStats().get("type", 0) == 0, "the job is aborted")
        wait_until(
            lambda: failed["checkpoint"] not in {cp.getName() for cp in dom.listAllCheckpoints()},
            "the failed backup's checkpoint is deleted",
        )
        run.backups.remove(pull)  # the sweep expects every other backup to succeed
        next_backup_succeeds(run)
        run.sweep()
    finally:
        print(service.output())
    assert down_seen
    assert failed["error"]["code"] == "host-unreachable"
    assert "unreachable for more than 2 s" in failed["error"]["message"]
    assert run.tally.problems() == {}
