"""Restores: one standalone image per disk, the disk as it was at a push backup."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.backups import chain
from app.backups.schemas import ErrorOut
from app.backups.service import get_backup
from app.db.models import BackupStatus, Restore
from app.errors import InvalidState, RestoreNotFound, UnknownDisk
from app.restores.schemas import RestoreCreate, RestoreDiskOut, RestoreOut
from app.settings import Settings


def restore_out(restore: Restore) -> RestoreOut:
    return RestoreOut(
        id=restore.id,
        backup_id=restore.backup_id,
        status=restore.status.value,
        format=restore.format,
        disks=[
            RestoreDiskOut(name=d["name"], file=d["file"], format=d["format"], bytes=d["bytes"])
            for d in restore.disks
        ],
        error=ErrorOut.of(restore.error_code, restore.error_message),
        created_at=restore.created_at,
        started_at=restore.started_at,
        finished_at=restore.finished_at,
    )


async def create_restore(
    session: AsyncSession, settings: Settings, backup_id: uuid.UUID, body: RestoreCreate
) -> Restore:
    backup = await get_backup(session, backup_id)
    if backup.mode != "push" or backup.status != BackupStatus.SUCCEEDED:
        raise InvalidState(
            f"backup {backup_id} is a {backup.status.value} {backup.mode} backup: only a "
            "succeeded push backup holds the data to restore"
        )
    backed_up = [d.name for d in backup.disks if d.backup]
    wanted = body.disks or backed_up
    unknown = sorted(set(wanted) - set(backed_up))
    if unknown:
        raise UnknownDisk(f"backup {backup_id} holds no disk {', '.join(unknown)}")
    restore_id = uuid.uuid4()
    disks = []
    for name in wanted:
        newest = (await chain.disk_chain(session, backup, name))[-1]  # 409 when broken
        disks.append(
            {
                "name": name,
                "source": newest.file,
                "file": str(settings.restores_dir / str(restore_id) / f"{name}.{body.format}"),
                "format": body.format,
                "bytes": None,
            }
        )
    restore = Restore(id=restore_id, backup_id=backup_id, format=body.format, disks=disks)
    session.add(restore)
    await session.flush()
    return restore


async def get_restore(session: AsyncSession, restore_id: uuid.UUID) -> Restore:
    restore = await session.get(Restore, restore_id)
    if restore is None:
        raise RestoreNotFound(f"restore {restore_id} does not exist")
    return restore
