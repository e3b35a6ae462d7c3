"""Paths libvirt reports back (virDomainBackupGetXMLDesc) are never stored in
place of the planned, confined ones: they would later be opened, rebased and
deleted."""

from __future__ import annotations

import uuid

import pytest

from app.db.models import Backup, BackupDisk
from app.hypervisor import BackupDiskState
from app.worker.runner import _actual_values


def _backup(mode: str, **disk: str) -> Backup:
    return Backup(
        id=uuid.uuid4(),
        mode=mode,
        server={"transport": "unix", "socket": "/run/vmbackup/x.sock"} if mode == "pull" else None,
        disks=[BackupDisk(name="vda", position=0, **disk)],
    )


def test_the_planned_target_stands_when_libvirt_names_another() -> None:
    backup = _backup("push", target="/var/lib/vmbackup/backups/d/b/vda.qcow2")
    reported = BackupDiskState(name="vda", backup=True, target="/etc/shadow")
    assert "target" not in _actual_values(backup, reported)


@pytest.mark.parametrize("disk", ["vda", "vdz"])
def test_a_reported_scratch_is_not_taken_but_the_export_is(disk: str) -> None:
    backup = _backup("pull", scratch="/var/lib/vmbackup/scratch/b.vda.scratch")
    reported = BackupDiskState(
        name=disk, backup=True, scratch="/root/.ssh/id_rsa", export_name=disk
    )
    values = _actual_values(backup, reported)
    assert "scratch" not in values
    assert values["export_name"] == disk
    assert values["nbd_uri"] == f"nbd+unix:///{disk}?socket=/run/vmbackup/x.sock"
