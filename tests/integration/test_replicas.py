"""Two `vmbackup serve` replicas on one PostgreSQL: they share the work through
leases, a backup queued on a busy replica starts at once on an idle one
(LISTEN/NOTIFY), and a replica killed while holding a `ready` pull export and
a running restore hands both to the other, which finishes them."""

from __future__ import annotations

import time
from pathlib import Path

import libvirt
import pytest

from app.crashpoints import CRASH_EXIT_CODE
from app.settings import Settings
from tests.support.replicas import lease, looking_away, pid, status_events, wait_status
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

pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]
# Far longer than any wait below: a replica that finds work within them was woken.
NEVER_POLL_SECONDS = "600"


def test_a_backup_queued_on_a_busy_replica_starts_at_once_on_the_idle_one(
    settings: Settings, libvirt_conn: libvirt.virConnect, vm: TestVM, tmp_path: Path
) -> None:
    env = service_env(
        settings, VMBACKUP_WORKERS_PER_HOST="1", VMBACKUP_POLL_SECONDS=NEVER_POLL_SECONDS
    )
    with (
        throwaway_vm(libvirt_conn, workdir=tmp_path / "vms") as other,
        ServiceProcess(env, log=tmp_path / "a.log") as a,
        ServiceProcess(env, log=tmp_path / "b.log") as b,
    ):
        write_pattern(libvirt_conn, other, "vda", 0, 2 * MiB, 0xC3)
        pause(libvirt_conn, other)
        a.start()
        b.start()
        a.wait_ready()
        b.wait_ready()
        with a.client() as client:
            posted = client.post(
                f"/v1/hosts/local/domains/{vm.name}/backups", json={"mode": "pull"}
            )
            assert posted.status_code == 202, posted.text
            pull = wait_status(client, f"/v1/backups/{posted.json()['id']}", {"ready"}, 30)
        holder, _ = lease(settings.effective_database_url, "backups", pull["id"])
        busy, idle = (a, b) if holder == pid(a) else (b, a)
        assert holder == pid(busy)

        # The busy replica has no room: only the idle one can start it, and it
        # polls every 10 minutes, so only the notification wakes it in time.
        with busy.client() as client:
            posted = client.post(f"/v1/hosts/local/domains/{other.name}/backups", json={})
            assert posted.status_code == 202, posted.text
            push = wait_status(client, f"/v1/backups/{posted.json()['id']}", {"succeeded"}, 30)
        assert lease(settings.effective_database_url, "backups", push["id"])[0] == pid(idle)
        assert qemu_img_compare(other.disks["vda"], push["disks"][0]["target"])


def test_a_killed_replica_hands_its_ready_pull_and_its_restore_to_another(
    settings: Settings, libvirt_conn: libvirt.virConnect, vm: TestVM, tmp_path: Path
) -> None:
    url = settings.effective_database_url
    env = service_env(settings)
    with (
        throwaway_vm(libvirt_conn, workdir=tmp_path / "vms") as source,
        ServiceProcess(env, log=tmp_path / "a.log") as a,
        ServiceProcess(env, log=tmp_path / "b.log") as b,
    ):
        write_pattern(libvirt_conn, vm, "vda", 0, 4 * MiB, 0xA1)
        write_pattern(libvirt_conn, source, "vda", 2 * MiB, 4 * MiB, 0xB2)
        pause(libvirt_conn, vm)
        pause(libvirt_conn, source)
        a.start(crash_at="restore-converting")
        b.start()
        a.wait_ready()
        b.wait_ready()
        with looking_away(b), a.client() as client:  # so that a holds all of it
            posted = client.post(f"/v1/hosts/local/domains/{source.name}/backups", json={})
            push = wait_status(client, f"/v1/backups/{posted.json()['id']}", {"succeeded"})
            posted = client.post(
                f"/v1/hosts/local/domains/{vm.name}/backups", json={"mode": "pull"}
            )
            pull = wait_status(client, f"/v1/backups/{posted.json()['id']}", {"ready"})
            posted = client.post(f"/v1/backups/{push['id']}/restores", json={"format": "qcow2"})
            assert posted.status_code == 202, posted.text
            restore_id = posted.json()["id"]
            assert a.wait_exit() == CRASH_EXIT_CODE  # as `kill -9` while converting
        assert lease(url, "backups", pull["id"]) == (pid(a), 1)
        assert lease(url, "restores", restore_id) == (pid(a), 1)
        killed_at = time.monotonic()

        with b.client() as client:
            restored = wait_status(client, f"/v1/restores/{restore_id}", {"succeeded"})
            assert lease(url, "restores", restore_id) == (pid(b), 2)
            deadline = time.monotonic() + 60
            while lease(url, "backups", pull["id"]) != (pid(b), 2):
                assert time.monotonic() < deadline, "the pull was not taken over"
                time.sleep(0.1)
            handed_over = time.monotonic() - killed_at
            print(
                f"handed over {handed_over:.1f} s after the kill (lease {settings.lease_seconds} s)"
            )

            taken = wait_status(client, f"/v1/backups/{pull['id']}", {"ready"})
            assert taken["disks"][0]["nbd_uri"] == pull["disks"][0]["nbd_uri"]
            exported = nbd_copy(taken["disks"][0]["nbd_uri"], tmp_path / "export.raw")
            assert exported == read_image(vm.disks["vda"], "qcow2")
            assert client.post(f"/v1/backups/{pull['id']}/finish").status_code == 202
            done = wait_status(client, f"/v1/backups/{pull['id']}", {"succeeded"})
            statuses = status_events(client, pull["id"])
        assert statuses == ["queued", "starting", "ready", "finishing", "succeeded"]
        assert done["checkpoint"] is not None
        assert qemu_img_compare(source.disks["vda"], restored["disks"][0]["file"])
        dom = libvirt_conn.lookupByUUIDString(vm.uuid)
        assert dom.jobStats().get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE
