"""Each status change is one guarded UPDATE (expected status and the holder's
lease epoch) recorded in `backup_events`. Zero rows: someone else owns it."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import update

from app.db.base import utcnow
from app.db.models import Backup, BackupEvent, BackupStatus
from app.db.session import Database


class LeaseLost(Exception):
    """Another worker took the backup over (or it moved on): stop touching it."""


async def transition(
    database: Database,
    backup_id: uuid.UUID,
    epoch: int,
    expected: BackupStatus,
    to: BackupStatus,
    *,
    message: str | None = None,
    **values: Any,
) -> None:
    if to.terminal:
        values.setdefault("finished_at", utcnow())
        values.setdefault("lease_expires_at", None)
    async with database.session_scope() as session:
        result = await session.execute(
            update(Backup)
            .where(Backup.id == backup_id, Backup.status == expected, Backup.lease_epoch == epoch)
            .values(status=to, **values)
            .returning(Backup.id)
        )
        if result.first() is None:
            raise LeaseLost(f"backup {backup_id}: not {expected.value} at epoch {epoch}")
        session.add(
            BackupEvent(
                backup_id=backup_id,
                status=to.value,
                previous_status=expected.value,
                message=message,
            )
        )


async def record_progress(
    database: Database,
    backup_id: uuid.UUID,
    epoch: int,
    status: BackupStatus,
    progress: dict[str, int | None],
) -> None:
    async with database.session_scope() as session:
        result = await session.execute(
            update(Backup)
            .where(Backup.id == backup_id, Backup.status == status, Backup.lease_epoch == epoch)
            .values(progress_updated_at=utcnow(), **progress)
            .returning(Backup.id)
        )
        if result.first() is None:
            raise LeaseLost(f"backup {backup_id}: not in {status} at epoch {epoch}")
        session.add(BackupEvent(backup_id=backup_id, status=status.value, progress=progress))
