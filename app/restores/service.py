"""Restores: one standalone image per disk, the disk as it was at a push backup."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, event, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import images
from app.backups import chain, space
from app.backups.schemas import ErrorOut
from app.backups.service import get_backup
from app.db.models import BackupStatus, Restore, RestoreStatus
from app.errors import ChainBroken, InvalidState, LimitReached, RestoreNotFound, UnknownDisk
from app.restores import files
from app.restores.schemas import RestoreCreate, RestoreDiskOut, RestoreOut
from app.settings import Settings

ACTIVE = (RestoreStatus.QUEUED, RestoreStatus.RUNNING)
TERMINAL = (RestoreStatus.SUCCEEDED, RestoreStatus.FAILED)


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


async def _refuse_over_limit(session: AsyncSession, settings: Settings) -> None:
    active = await session.scalar(
        select(func.count()).select_from(Restore).where(Restore.status.in_(ACTIVE))
    )
    if (active or 0) >= settings.max_active_restores:
        raise LimitReached(
            f"{active} restores are queued or running, the most allowed "
            f"(VMBACKUP_MAX_ACTIVE_RESTORES={settings.max_active_restores}): retry when one ends"
        )


async def _capacity(link: chain.Link, disk: str) -> int:
    """The disk's size at that backup: what a standalone image of it may take."""
    try:
        found = await images.info(images.Image(link.file or "", link.format or ""))
    except images.ImageToolError as error:
        raise ChainBroken(
            f"disk {disk}: the file of backup {link.backup_id} does not open as its "
            f"recorded format ({error.message})",
            disk=disk,
        ) from None
    return found.virtual_size


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
    await _refuse_over_limit(session, settings)
    restore_id = uuid.uuid4()
    disks, needs = [], []
    for name in wanted:
        newest = (await chain.disk_chain(session, backup, name))[-1]  # 409 when broken
        file = str(settings.restores_dir / str(restore_id) / f"{name}.{body.format}")
        capacity = await _capacity(newest, name)
        needs.append((file, capacity))
        disks.append(
            {
                "name": name,
                "file": file,
                "format": body.format,
                "bytes": None,
                "estimated_bytes": capacity,
            }
        )
    space.require_room(needs, reserve=settings.free_space_reserve_bytes, where="restore root")
    restore = Restore(id=restore_id, backup_id=backup_id, format=body.format, disks=disks)
    session.add(restore)
    await session.flush()
    return restore


async def delete_restore(session: AsyncSession, settings: Settings, restore_id: uuid.UUID) -> None:
    """A terminal restore; its files go once the deletion is committed."""
    restore = await get_restore(session, restore_id)
    deleted = await session.execute(
        delete(Restore)
        .where(Restore.id == restore_id, Restore.status.in_(TERMINAL))
        .returning(Restore.id)
    )
    if deleted.first() is None:
        raise InvalidState(f"restore {restore_id} is {restore.status.value}: wait until it ends")
    session.expunge(restore)
    event.listen(
        session.sync_session,
        "after_commit",
        lambda _s: files.remove(restore, settings),
        once=True,
    )


async def get_restore(session: AsyncSession, restore_id: uuid.UUID) -> Restore:
    restore = await session.get(Restore, restore_id)
    if restore is None:
        raise RestoreNotFound(f"restore {restore_id} does not exist")
    return restore
