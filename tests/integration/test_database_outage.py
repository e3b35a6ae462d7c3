"""PostgreSQL stopped for ~5 s while backups run (a server of the test's own):
`/readyz` and requests answer 503 problem+json, the libvirt jobs go on, and
once the database is back the service resumes by itself: every backup
succeeds once, with its data equal to the disk, and the `ready` pull export
is the same one, still readable."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import libvirt
import pytest

from app.settings import Settings
from tests.support.postgres import OwnPostgres, own_postgres  # noqa: F401 (a fixture)
from tests.support.replicas import status_events, wait_status
from tests.support.service import ServiceProcess, service_env
from tests.support.vms import (
    MiB,
    TestVM,
    nbd_copy,
    pause,
    qemu_img_compare,
    read_image,
    throwaway_vm,
    write_pattern,
)

pytestmark = pytest.mark.libvirt
OUTAGE_SECONDS = 5.0


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "service-unavailable"
    assert int(response.headers["retry-after"]) > 0


def job_active(conn: libvirt.virConnect, vm: TestVM) -> bool:
    dom = conn.lookupByUUIDString(vm.uuid)
    return bool(dom.jobStats().get("type", 0) != libvirt.VIR_DOMAIN_JOB_NONE)


def test_a_database_outage_answers_503_and_every_backup_succeeds_after_it(
    own_postgres: OwnPostgres,  # noqa: F811
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    tmp_path: Path,
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=own_postgres.create_database("vmbackup"),
        libvirt_uri=os.environ.get("VMBACKUP_TEST_LIBVIRT_URI", "qemu:///system"),
        socket_root=tmp_path / "run",
        tokens=[],
        lease_seconds=6,
        poll_seconds=0.2,
    )
    with (
        throwaway_vm(libvirt_conn, workdir=tmp_path / "vms") as first,
        throwaway_vm(libvirt_conn, workdir=tmp_path / "vms") as second,
        ServiceProcess(service_env(settings), log=tmp_path / "service.log") as service,
        service.client() as client,
    ):
        pushed = [first, second]
        for byte, machine in enumerate([vm, *pushed], start=0xD1):
            write_pattern(libvirt_conn, machine, "vda", 0, 2 * MiB, byte)
            pause(libvirt_conn, machine)
        service.start()  # migrates the new database, then serves
        service.wait_ready()
        posted = client.post(f"/v1/hosts/local/domains/{vm.name}/backups", json={"mode": "pull"})
        assert posted.status_code == 202, posted.text
        pull = wait_status(client, f"/v1/backups/{posted.json()['id']}", {"ready"})
        # Two per domain: the first is in flight as the database stops, the
        # second waits queued behind it.
        queued = [
            client.post(f"/v1/hosts/local/domains/{machine.name}/backups", json=body)
            for machine in pushed
            for body in ({"kind": "full"}, {"kind": "auto"})
        ]
        assert [r.status_code for r in queued] == [202] * 4, [r.text for r in queued]
        backups = [r.json()["id"] for r in queued]

        own_postgres.stop()
        stopped_at = time.monotonic()
        assert_unavailable(client.get(f"/v1/backups/{pull['id']}"))
        assert_unavailable(client.get("/v1/backups"))
        assert_unavailable(client.post(f"/v1/backups/{pull['id']}/finish"))
        assert_unavailable(client.post(f"/v1/hosts/local/domains/{vm.name}/backups", json={}))
        while time.monotonic() - stopped_at < OUTAGE_SECONDS:
            ready = client.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["database"].startswith("unreachable"), ready.text
            assert job_active(libvirt_conn, vm)  # the export is not aborted
            time.sleep(0.5)
        own_postgres.start()

        service.wait_ready()
        done = [wait_status(client, f"/v1/backups/{b}", {"succeeded"}) for b in backups]
        taken = wait_status(client, f"/v1/backups/{pull['id']}", {"ready"})
        assert taken["disks"][0]["nbd_uri"] == pull["disks"][0]["nbd_uri"]
        exported = nbd_copy(taken["disks"][0]["nbd_uri"], tmp_path / "export.raw")
        assert exported == read_image(vm.disks["vda"], "qcow2")
        assert client.post(f"/v1/backups/{pull['id']}/finish").status_code == 202
        wait_status(client, f"/v1/backups/{pull['id']}", {"succeeded"})

        # Nothing lost, nothing twice: the 503'd POST left no backup behind.
        listed = client.get("/v1/backups", params={"limit": 500}).json()["items"]
        assert sorted(b["id"] for b in listed) == sorted([pull["id"], *backups])
        for backup_id in [pull["id"], *backups]:
            statuses = status_events(client, backup_id)
            assert statuses.count("starting") == 1, statuses
            assert statuses[-1] == "succeeded", statuses
            assert statuses.count("succeeded") == 1, statuses
        for backup in done:
            machine = next(m for m in pushed if m.uuid == backup["domain"]["uuid"])
            assert qemu_img_compare(machine.disks["vda"], backup["disks"][0]["target"])
        assert [b["kind"] for b in done] == ["full", "incremental", "full", "incremental"]
        for machine in [vm, *pushed]:
            assert not job_active(libvirt_conn, machine)
        log = service.log.read_text(errors="replace")
    # The pull's runner polls throughout: it met the outage and waited it out.
    assert f"backup {pull['id']}: database unavailable, waiting" in log
