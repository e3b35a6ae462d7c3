"""Where a backup's files go, and whether it may write them: each backup writes
only files that are its own, checked when it is requested and again by the
worker the moment before libvirt is called (a symbolic link or a file may have
appeared in between), with room for what it is expected to write."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.backups import paths, space
from app.db.models import Backup, BackupDisk
from app.errors import AppError, InvalidState
from app.hypervisor import DomainInfo, Hypervisor
from app.settings import Settings


def _storage(backup_mode: str, disk: BackupDisk, settings: Settings) -> tuple[str, Path, str]:
    """The file libvirt writes for this disk: (path, root, what)."""
    if backup_mode == "push":
        return disk.target or "", settings.backups_dir, "target"
    return disk.scratch or "", settings.scratch_dir, "scratch"


def _files(backup_mode: str, disks: list[BackupDisk]) -> list[BackupDisk]:
    """The disks for which libvirt writes a file (not a block device)."""
    key = "target" if backup_mode == "push" else "scratch"
    return [d for d in disks if d.backup and d.type != "block" and getattr(d, key)]


async def estimate(
    hypervisor: Hypervisor, domain: DomainInfo, base: str | None, disks: list[BackupDisk]
) -> None:
    """Each disk's `estimated_bytes`: its capacity, or for an incremental disk
    the data changed since the base checkpoint, as libvirt reports it."""
    capacity = {disk.name: disk.capacity_bytes for disk in domain.disks}
    changed: dict[str, int | None] = {}
    if base is not None and any(d.backupmode == "incremental" for d in disks):
        try:
            changed = await hypervisor.checkpoint_sizes(domain.uuid, base)
        except AppError:
            changed = {}  # libvirt cannot say: count the whole disk
    for disk in disks:
        if disk.backup:
            size = changed.get(disk.name) if disk.backupmode == "incremental" else None
            disk.estimated_bytes = size if size is not None else capacity.get(disk.name)


async def _refuse_foreign(
    session: AsyncSession, backup_id: uuid.UUID, mode: str, disks: list[BackupDisk]
) -> None:
    """No two backups name one file, and none writes in another's directory
    (`<root>/<domain uuid>/<backup id>/`)."""
    for disk in _files(mode, disks):
        path = disk.target if mode == "push" else disk.scratch
        owner = await session.scalar(
            select(BackupDisk.backup_id)
            .where(or_(BackupDisk.target == path, BackupDisk.scratch == path))
            .where(BackupDisk.backup_id != backup_id)
            .limit(1)
        )
        if owner is not None:
            raise InvalidState(f"disk {disk.name}: {path} belongs to backup {owner}")
        for other in _uuids(Path(path or "").parent.parts):
            if other != backup_id and await session.get(Backup, other) is not None:
                raise InvalidState(f"disk {disk.name}: {path} is in backup {other}'s directory")


def _uuids(names: tuple[str, ...]) -> list[uuid.UUID]:
    found = []
    for name in names:
        try:
            found.append(uuid.UUID(name))
        except ValueError:
            continue
    return found


def _check_files(backup: Backup, disks: list[BackupDisk], settings: Settings) -> list[str]:
    """Without following links: a pre-made file is a regular file; a file
    libvirt is to make is not there yet (libvirt would truncate it). The names
    of the disks whose target the service is about to make."""
    made: list[str] = []
    for disk in _files(backup.mode, disks):
        path, root, what = _storage(backup.mode, disk, settings)
        if backup.reuse_external:
            paths.require_regular_file(path, root, what=f"disk {disk.name}: {what}")
        else:
            paths.require_absent(path, root, what=f"disk {disk.name}: {what}")
            made.append(disk.name)
    return made


def _require_room(backup: Backup, disks: list[BackupDisk], settings: Settings) -> None:
    where = "backup root" if backup.mode == "push" else "scratch root"
    needs = [
        (_storage(backup.mode, d, settings)[0], d.estimated_bytes or 0)
        for d in _files(backup.mode, disks)
    ]
    space.require_room(needs, reserve=settings.free_space_reserve_bytes, where=where)


async def check_request(
    session: AsyncSession,
    hypervisor: Hypervisor,
    domain: DomainInfo,
    backup: Backup,
    settings: Settings,
) -> None:
    """At request time: files that are this backup's only (409 when another
    backup's, 422 when a link or not as reuse_external says), and room for the
    estimate (507). Sets each disk's `estimated_bytes`."""
    await _refuse_foreign(session, backup.id, backup.mode, backup.disks)
    _check_files(backup, backup.disks, settings)
    await estimate(hypervisor, domain, backup.incremental, backup.disks)
    _require_room(backup, backup.disks, settings)


def prepare(backup: Backup, settings: Settings) -> list[str]:
    """In the worker, just before libvirt is called: room for the estimate,
    the directories made without following links, the files checked again.
    Returns the names of the disks whose target the service makes."""
    _require_room(backup, backup.disks, settings)
    for disk in _files(backup.mode, backup.disks):
        path, root, what = _storage(backup.mode, disk, settings)
        paths.make_parents(path, root, what=f"disk {disk.name}: {what}")
    if backup.server and backup.server.get("socket"):
        paths.close_to_others(settings.socket_root)
        paths.make_parents(backup.server["socket"], settings.socket_root, what="socket")
    made = _check_files(backup, backup.disks, settings)
    return made if backup.mode == "push" else []
