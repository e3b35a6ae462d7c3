"""Every status change of a backup or a restore happens here, and only here.

The tables below are the allowed moves (API.md, "States"). Each move is one
guarded UPDATE, on the status the caller saw and on the lease epoch it holds,
and a backup's move writes its `backup_events` row in the same transaction.
Zero rows updated means another worker took the row over or it moved on:
`LeaseLost`, and the caller stops touching it.

    API (app/backups/service.py)      queue_backup, cancel_queued
    worker pool (app/worker/pool.py)  claim_backup, take_over, claim_restore
    backup runner (app/worker/)       move_backup, record_progress, fenced
    restore runner (app/restores/)    finish_restore

Writes that are not a status change but belong to the holder (actual values
from libvirt, sizes, checkpoint rows) go through `fenced`, so a stale holder
cannot write anything at all.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.models import Backup, BackupEvent, BackupStatus, Restore, RestoreStatus
from app.db.session import Database
from app.redact import redact_paths

S = BackupStatus
R = RestoreStatus
log = logging.getLogger(__name__)

BACKUP_MOVES: Mapping[BackupStatus, frozenset[BackupStatus]] = {
    S.QUEUED: frozenset({S.STARTING, S.CANCELLED}),
    S.STARTING: frozenset({S.RUNNING, S.READY, S.FAILED, S.CANCELLED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.READY: frozenset({S.FINISHING, S.FAILED, S.CANCELLED}),
    S.FINISHING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED}),
}
RESTORE_MOVES: Mapping[RestoreStatus, frozenset[RestoreStatus]] = {
    R.QUEUED: frozenset({R.RUNNING}),
    R.RUNNING: frozenset({R.RUNNING, R.SUCCEEDED, R.FAILED}),  # running again: taken over
}


class LeaseLost(Exception):
    """Another worker took the row over (or it moved on): stop touching it."""


class IllegalTransition(AssertionError):
    """A move the tables do not allow: a bug in the caller, never user input."""


def _check(moves: Mapping[Any, frozenset[Any]], expected: Any, to: Any) -> None:
    if to not in moves.get(expected, frozenset()):
        raise IllegalTransition(f"{expected.value} -> {to.value} is not an allowed move")


def lease_values(holder: str, epoch: int, expires_at: datetime) -> dict[str, object]:
    """The columns that make `holder` the holder, at `epoch`."""
    return {"lease_holder": holder, "lease_epoch": epoch, "lease_expires_at": expires_at}


def _log_move(what: str, row_id: uuid.UUID, was: str, now: str, values: Mapping[str, Any]) -> None:
    """The line of a move; a failure's whole message is here, for the operator."""
    failed = now == "failed"
    reason = {"error_code": values.get("error_code"), "error_message": values.get("error_message")}
    log.log(
        logging.WARNING if failed else logging.INFO,
        "%s %s: %s -> %s%s",
        what,
        row_id,
        was,
        now,
        f" ({reason['error_code']})" if failed else "",
        extra={f"{what}_id": row_id, "status": now} | (reason if failed else {}),
    )


def _redacted(text: str | None) -> str | None:
    # Rows are served to clients: no host path (a tool's or an OSError's message).
    return None if text is None else redact_paths(text)


# -- backups: the API side ------------------------------------------------------


def queue_backup(session: AsyncSession, backup: Backup) -> None:
    """A new backup enters as `queued` (the row is the planned intent)."""
    backup.status = S.QUEUED
    session.add(backup)
    session.add(BackupEvent(backup_id=backup.id, status=S.QUEUED.value, at=backup.created_at))


async def cancel_queued(session: AsyncSession, backup: Backup) -> bool:
    """Cancel a backup no worker has claimed yet; False when one claimed it first
    (it is then the holder's to cancel, through `end_action`)."""
    _check(BACKUP_MOVES, S.QUEUED, S.CANCELLED)
    cancelled = await session.execute(
        update(Backup)
        .where(
            Backup.id == backup.id,
            Backup.status == S.QUEUED,
            Backup.lease_epoch == backup.lease_epoch,
        )
        .values(status=S.CANCELLED, finished_at=utcnow(), end_action="cancel")
        .returning(Backup.id)
    )
    if cancelled.first() is None:
        return False
    session.add(
        BackupEvent(backup_id=backup.id, status=S.CANCELLED.value, previous_status=S.QUEUED.value)
    )
    return True


# -- backups: the worker pool ---------------------------------------------------


async def claim_backup(
    session: AsyncSession, backup_id: uuid.UUID, epoch: int, holder: str, expires_at: datetime
) -> str | None:
    """`queued` -> `starting` under a new lease (epoch + 1); the domain's UUID, or
    None when it was cancelled or claimed meanwhile. A second active backup of
    the domain violates the one-active-per-domain index (IntegrityError)."""
    _check(BACKUP_MOVES, S.QUEUED, S.STARTING)
    claimed = await session.execute(
        update(Backup)
        .where(Backup.id == backup_id, Backup.status == S.QUEUED, Backup.lease_epoch == epoch)
        .values(
            status=S.STARTING, started_at=utcnow(), **lease_values(holder, epoch + 1, expires_at)
        )
        .returning(Backup.domain_uuid)
    )
    domain_uuid = claimed.scalar_one_or_none()
    if domain_uuid is not None:
        session.add(
            BackupEvent(
                backup_id=backup_id, status=S.STARTING.value, previous_status=S.QUEUED.value
            )
        )
    return domain_uuid


async def take_over(
    session: AsyncSession, backup_id: uuid.UUID, epoch: int, holder: str, expires_at: datetime
) -> bool:
    """Hold an active backup whose holder stopped: the status stays, the epoch
    moves on, so the old holder's every later write finds zero rows."""
    taken = await session.execute(
        update(Backup)
        .where(Backup.id == backup_id, Backup.lease_epoch == epoch, Backup.status.in_(BACKUP_MOVES))
        .values(**lease_values(holder, epoch + 1, expires_at))
        .returning(Backup.id)
    )
    return taken.first() is not None


# -- backups: the holder --------------------------------------------------------


@asynccontextmanager
async def fenced(
    database: Database, backup_id: uuid.UUID, epoch: int
) -> AsyncIterator[AsyncSession]:
    """A transaction that commits only while `epoch` still holds the backup. Its
    first statement locks the backup's row at that epoch, so a takeover (which
    moves the epoch) waits for this commit or makes it find zero rows."""
    async with database.session_scope() as session:
        held = await session.execute(
            update(Backup)
            .where(Backup.id == backup_id, Backup.lease_epoch == epoch)
            .values(lease_epoch=epoch)
            .returning(Backup.id)
        )
        if held.first() is None:
            raise LeaseLost(f"backup {backup_id}: no longer held at epoch {epoch}")
        yield session


async def move_backup(
    database: Database,
    backup_id: uuid.UUID,
    epoch: int,
    expected: BackupStatus,
    to: BackupStatus,
    *,
    message: str | None = None,
    **values: Any,
) -> None:
    _check(BACKUP_MOVES, expected, to)
    logged = dict(values)  # the whole message, for the log once the move is made
    message = _redacted(message)
    if "error_message" in values:
        values["error_message"] = _redacted(values["error_message"])
    if to.terminal:
        values.setdefault("finished_at", utcnow())
        values.setdefault("lease_expires_at", None)
    async with database.session_scope() as session:
        moved = await session.execute(
            update(Backup)
            .where(Backup.id == backup_id, Backup.status == expected, Backup.lease_epoch == epoch)
            .values(status=to, **values)
            .returning(Backup.id)
        )
        if moved.first() is None:
            raise LeaseLost(f"backup {backup_id}: not {expected.value} at epoch {epoch}")
        session.add(
            BackupEvent(
                backup_id=backup_id,
                status=to.value,
                previous_status=expected.value,
                message=message,
            )
        )
    _log_move("backup", backup_id, expected.value, to.value, logged)


async def record_progress(
    database: Database,
    backup_id: uuid.UUID,
    epoch: int,
    status: BackupStatus,
    progress: dict[str, int | None],
) -> None:
    """Progress is not a move, but it is the holder's to write, and an event."""
    async with database.session_scope() as session:
        result = await session.execute(
            update(Backup)
            .where(Backup.id == backup_id, Backup.status == status, Backup.lease_epoch == epoch)
            .values(progress_updated_at=utcnow(), **progress)
            .returning(Backup.id)
        )
        if result.first() is None:
            raise LeaseLost(f"backup {backup_id}: not {status.value} at epoch {epoch}")
        session.add(BackupEvent(backup_id=backup_id, status=status.value, progress=progress))


# -- restores -------------------------------------------------------------------


async def claim_restore(
    session: AsyncSession,
    restore_id: uuid.UUID,
    status: RestoreStatus,
    epoch: int,
    holder: str,
    expires_at: datetime,
) -> bool:
    """A queued restore, or a running one whose holder stopped: `running` under a
    new lease (a restore is rerunnable: it writes a temporary name, then renames)."""
    _check(RESTORE_MOVES, status, R.RUNNING)
    claimed = await session.execute(
        update(Restore)
        .where(Restore.id == restore_id, Restore.status == status, Restore.lease_epoch == epoch)
        .values(
            status=R.RUNNING, started_at=utcnow(), **lease_values(holder, epoch + 1, expires_at)
        )
        .returning(Restore.id)
    )
    return claimed.first() is not None


async def finish_restore(
    database: Database, restore_id: uuid.UUID, epoch: int, to: RestoreStatus, **values: Any
) -> None:
    _check(RESTORE_MOVES, R.RUNNING, to)
    logged = dict(values)
    if "error_message" in values:
        values["error_message"] = _redacted(values["error_message"])
    async with database.session_scope() as session:
        finished = await session.execute(
            update(Restore)
            .where(
                Restore.id == restore_id,
                Restore.status == R.RUNNING,
                Restore.lease_epoch == epoch,
            )
            .values(status=to, finished_at=utcnow(), lease_expires_at=None, **values)
            .returning(Restore.id)
        )
        if finished.first() is None:
            raise LeaseLost(f"restore {restore_id}: no longer held at epoch {epoch}")
    _log_move("restore", restore_id, R.RUNNING.value, to.value, logged)
