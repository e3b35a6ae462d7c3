"""`kill -9` of the service at each step of a backup, then a restart: every
backup reaches the right terminal status by looking at libvirt, with one
libvirt job, data equal to the disk, and no checkpoint, job or file left
behind. Real processes (`vmbackup serve`); the scenarios are in
tests/support/faults.py, shared with bench/chaos.py.

Every step runs on PostgreSQL; a few run on SQLite too (each case takes a
service start, a crash, a restart and a lease's wait)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from tests.support.faults import CRASH_STEPS, LEASE_SECONDS, FaultRun, short_socket_root
from tests.support.libvirtd import LiveConnection
from tests.support.service import ServiceProcess, service_env
from tests.support.vms import TestVM

pytestmark = pytest.mark.libvirt
ON_SQLITE_TOO = {"queued", "after-begin", "ready", "rebasing", "restore-converting"}
CASES = [
    pytest.param(step, backend, id=f"{step}-{backend}")
    for backend in ("postgresql", "sqlite")
    for step in CRASH_STEPS
    if backend == "postgresql" or step in ON_SQLITE_TOO
]


@pytest.fixture
def settings(settings: Settings) -> Iterator[Settings]:
    with short_socket_root(settings) as short:
        yield short


@pytest.fixture
def service(settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    env = service_env(settings, VMBACKUP_LEASE_SECONDS=str(LEASE_SECONDS))
    with ServiceProcess(env, log=tmp_path / "service.log") as process:
        yield process


@pytest.mark.timeout(100)
@pytest.mark.parametrize(("step", "database_url"), CASES, indirect=["database_url"])
def test_a_crash_at_each_step_ends_right_with_one_job_and_nothing_left_behind(
    step: str,
    settings: Settings,
    libvirt_live: LiveConnection,
    vm: TestVM,
    service: ServiceProcess,
) -> None:
    run = FaultRun(settings, libvirt_live, vm, service)
    try:
        CRASH_STEPS[step](run)
        run.sweep()
    finally:
        print(service.output())  # shown when the test fails
    assert run.tally.problems() == {}
    assert run.backups  # the scenario did back something up
