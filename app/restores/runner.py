"""Runs one restore: each disk's chain, exactly as the service recorded it
(every file confined to the backup root and opened as its recorded format,
headers checked against the record), converted into one standalone image.
Rerunnable after a crash: it writes to a hidden partial name and renames once
whole."""

from __future__ import annotations

import logging
import os
import stat
import uuid
from typing import Any

from structlog.contextvars import bind_contextvars

from app import images
from app.backups import chain, paths, space
from app.backups.service import get_backup
from app.crashpoints import crash_point
from app.db.models import Backup, Restore, RestoreStatus
from app.db.session import Database
from app.errors import AppError, PathNotAllowed
from app.restores.files import partial_name, replace_into_place
from app.settings import Settings
from app.transitions import finish_restore

log = logging.getLogger(__name__)


async def recorded_chain(
    database: Database, backup_id: uuid.UUID, disk: str, settings: Settings
) -> list[images.Image]:
    async with database.session_scope() as session:
        backup = await get_backup(session, backup_id)
        return await chain.recorded_images(session, backup, disk, settings.backups_dir)


async def _convert(
    source: list[images.Image], disk: dict[str, Any], restore_id: uuid.UUID, settings: Settings
) -> int:
    """Into the restore's own directory, made and entered without following
    links; a partial name left by an earlier run is replaced. Its bytes."""
    root = settings.restores_dir
    names = paths.parts_under(disk["file"], root, what="restore file")
    if names[:-1] != (str(restore_id),):
        raise PathNotAllowed(f"disk {disk['name']}: the restore file is not in its own directory")
    partial, final = os.path.basename(partial_name(disk["file"])), names[-1]
    with paths.open_dir(root, names[:-1], create=True, what="restore directory") as directory:
        for name in (partial, final):
            try:
                found = os.stat(name, dir_fd=directory, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(found.st_mode):
                raise PathNotAllowed(f"disk {disk['name']}: {name} is not a regular file")
            os.unlink(name, dir_fd=directory)  # ours, from a run that did not finish
        target = images.InDirectory(directory, partial)
        await images.convert(
            source, target, disk["format"], timeout=settings.restore_timeout_seconds
        )
        crash_point("restore-converting")  # converted, not yet in place
        return replace_into_place(directory, partial, final)


def _failure(restore_id: uuid.UUID, error: Exception) -> tuple[str, str]:
    """(code, message) for the restore's row: no tool output reaches clients."""
    if isinstance(error, images.ImageToolError):
        log.warning("restore %s: %s", restore_id, error)  # with the tool's stderr
        code = error.code if isinstance(error, images.ChainMismatch) else "restore-failed"
        return code, error.message
    if isinstance(error, AppError):
        return error.code, error.detail
    log.warning("restore %s: %s", restore_id, error)
    return "restore-failed", f"{type(error).__name__}: {getattr(error, 'strerror', None) or error}"


async def run_restore(
    database: Database, restore_id: uuid.UUID, epoch: int, settings: Settings
) -> None:
    async with database.session_scope() as session:
        restore = await session.get(Restore, restore_id)
        assert restore is not None
        backup = await session.get(Backup, restore.backup_id)
    if backup is not None:  # the pool's task for this restore: its lines name the backup
        bind_contextvars(backup_id=str(backup.id), host=backup.host, domain=backup.domain_name)
    disks: list[dict[str, Any]] = [dict(d) for d in restore.disks]
    try:
        needs = [(d["file"], int(d.get("estimated_bytes") or 0)) for d in disks]
        reserve = settings.free_space_reserve_bytes
        space.require_room(needs, reserve=reserve, where="restore root")
        for disk in disks:
            source = await recorded_chain(database, restore.backup_id, disk["name"], settings)
            await images.verify_chain(source)
            disk["bytes"] = await _convert(source, disk, restore_id, settings)
    except (AppError, OSError) as error:
        code, message = _failure(restore_id, error)
        await finish_restore(
            database,
            restore_id,
            epoch,
            RestoreStatus.FAILED,
            error_code=code,
            error_message=message,
            disks=disks,
        )
        return
    await finish_restore(database, restore_id, epoch, RestoreStatus.SUCCEEDED, disks=disks)
