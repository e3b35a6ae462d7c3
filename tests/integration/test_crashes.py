"""`kill -9` of the service at each named step of a backup, then a restart:
the backup reaches the right terminal status by looking at libvirt, with one
libvirt job and data equal to the disk. Real processes (`vmbackup serve`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from app.crashpoints import CRASH_EXIT_CODE
from app.settings import Settings
from tests.support.service import ServiceProcess, service_env
from tests.support.vms import MiB, TestVM, pause, qemu_img_compare, resume, write_pattern

pytestmark = pytest.mark.libvirt
TERMINAL = {"succeeded", "failed", "cancelled"}


def wait_status(
    client: httpx.Client, backup_id: str, statuses: set[str], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        backup: dict[str, Any] = client.get(f"/v1/backups/{backup_id}").json()
        if backup["status"] in statuses:
            return backup
        assert time.monotonic() < deadline, f"still {backup['status']}: {backup}"
        time.sleep(0.1)


def test_a_crash_right_after_backup_begin_is_recovered_without_a_second_job(
    settings: Settings, libvirt_conn: libvirt.virConnect, vm: TestVM, tmp_path: Path
) -> None:
    write_pattern(libvirt_conn, vm, "vda", 0, 2 * MiB, 0x5A)
    pause(libvirt_conn, vm)
    with ServiceProcess(service_env(settings), log=tmp_path / "service.log") as service:
        service.start(crash_at="after-begin")
        service.wait_ready()
        with service.client() as client:
            response = client.post(f"/v1/hosts/local/domains/{vm.name}/backups", json={})
            assert response.status_code == 202, response.text
            backup_id = response.json()["id"]
        assert service.wait_exit() == CRASH_EXIT_CODE
        service.start()
        service.wait_ready()
        with service.client() as client:
            done = wait_status(client, backup_id, TERMINAL)
    assert done["status"] == "succeeded", done
    assert qemu_img_compare(vm.disks["vda"], done["disks"][0]["target"])
    resume(libvirt_conn, vm)
