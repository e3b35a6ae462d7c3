"""libvirtd carries out a call (backupBegin, or the abortJob that ends a
pull at /finish), but its reply never arrives: the connection drops, as when
libvirtd restarts at that very instant. libvirt's client then says "End of
file while reading data" (a system error, not a connection error code). That
is an outage, not a failed call: the service must wait for the host, look,
and go on with the job it started; never fail the backup with the job left
running, never start a second one.

The reply is lost by a proxy in front of libvirtd's loopback TCP listener
(tests/support/rpcproxy.py), so libvirtd itself is not disturbed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from tests.support.faults import LEASE_SECONDS, FaultRun, short_socket_root, write_and_pause
from tests.support.libvirtd import LiveConnection
from tests.support.rpcproxy import ABORT_JOB, BACKUP_BEGIN, LosingProxy
from tests.support.service import ServiceProcess, service_env
from tests.support.vms import TestVM

pytestmark = [pytest.mark.libvirt, pytest.mark.timeout(100)]


@pytest.fixture
def settings(settings: Settings) -> Iterator[Settings]:
    with short_socket_root(settings) as short:
        yield short


@pytest.mark.parametrize(
    ("procedure", "mode"),
    [(BACKUP_BEGIN, "pull"), (BACKUP_BEGIN, "push"), (ABORT_JOB, "pull")],
    ids=["begin-pull", "begin-push", "finish-pull"],
)
def test_a_backup_whose_call_reply_is_lost_goes_on_with_the_job_libvirt_started(
    settings: Settings,
    libvirt_live: LiveConnection,
    vm: TestVM,
    tmp_path: Path,
    procedure: int,
    mode: str,
) -> None:
    with LosingProxy(procedure) as proxy:
        env = service_env(
            settings, VMBACKUP_LIBVIRT_URI=proxy.uri, VMBACKUP_LEASE_SECONDS=str(LEASE_SECONDS)
        )
        with ServiceProcess(env, log=tmp_path / "service.log") as service:
            run = FaultRun(settings, libvirt_live, vm, service)
            write_and_pause(run, 0x4D)
            run.start()
            try:
                with run.client() as client:
                    backup_id = run.post_backup(client, mode=mode)
                    if mode == "push":
                        run.expect_push(client, backup_id)
                    else:
                        run.read_export(client, backup_id)
                        run.finish(client, backup_id)
                        run.expect_finished(client, backup_id)
                run.sweep()
            finally:
                print(service.output())
    assert proxy.lost.is_set()  # the fault did happen
    assert run.tally.problems() == {}
