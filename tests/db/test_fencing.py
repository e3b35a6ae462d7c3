"""Fencing by lease epoch (app/transitions.py), on SQLite and PostgreSQL: once
another worker has taken a backup or a restore over, the old holder's every
write (a move, progress, a fenced write) raises LeaseLost and changes nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from app import transitions
from app.db.models import Backup, BackupEvent, BackupStatus, Restore, RestoreStatus
from app.db.session import Database
from app.transitions import LeaseLost
from tests.db.conftest import queued_backup

S = BackupStatus


def _lease_end() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=30)


async def _claim_then_take_over(database: Database, backup_id: uuid.UUID) -> None:
    """Worker a claims it (epoch 1); worker b takes it over (epoch 2)."""
    async with database.session_scope() as session:
        assert await transitions.claim_backup(session, backup_id, 0, "a", _lease_end())
    async with database.session_scope() as session:
        assert await transitions.take_over(session, backup_id, 1, "b", _lease_end())


async def _row(database: Database, backup_id: uuid.UUID) -> tuple[Backup, list[str]]:
    async with database.session_scope() as session:
        backup = await session.get_one(Backup, backup_id)
        events = await session.scalars(
            select(BackupEvent.status)
            .where(BackupEvent.backup_id == backup_id)
            .order_by(BackupEvent.id)
        )
        return backup, list(events)


async def test_after_a_takeover_the_old_holder_can_write_nothing(database: Database) -> None:
    backup_id = await queued_backup(database)
    await _claim_then_take_over(database, backup_id)
    before, events_before = await _row(database, backup_id)

    with pytest.raises(LeaseLost):
        await transitions.move_backup(database, backup_id, 1, S.STARTING, S.RUNNING)
    with pytest.raises(LeaseLost):
        await transitions.move_backup(
            database, backup_id, 1, S.STARTING, S.FAILED, error_code="libvirt-error"
        )
    with pytest.raises(LeaseLost):
        await transitions.record_progress(
            database, backup_id, 1, S.STARTING, {"bytes_total": 9, "bytes_processed": 9}
        )
    with pytest.raises(LeaseLost):
        async with transitions.fenced(database, backup_id, 1) as session:
            await session.execute(
                update(Backup).where(Backup.id == backup_id).values(libvirt_xml="<stale/>")
            )
    async with database.session_scope() as session:
        assert not await transitions.take_over(session, backup_id, 1, "a", _lease_end())

    after, events_after = await _row(database, backup_id)
    assert events_before == events_after == ["queued", "starting"]
    assert (after.status, after.lease_holder, after.lease_epoch) == (S.STARTING, "b", 2)
    assert after.libvirt_xml is None
    assert after.bytes_total is None
    assert after.bytes_processed is None
    assert after.finished_at is None
    assert after.error_code is None
    assert after.lease_expires_at == before.lease_expires_at


async def test_the_new_holder_writes_moves_and_records_progress(database: Database) -> None:
    backup_id = await queued_backup(database)
    await _claim_then_take_over(database, backup_id)
    async with transitions.fenced(database, backup_id, 2) as session:
        await session.execute(
            update(Backup).where(Backup.id == backup_id).values(libvirt_xml="<ours/>")
        )
    await transitions.move_backup(database, backup_id, 2, S.STARTING, S.RUNNING)
    await transitions.record_progress(
        database, backup_id, 2, S.RUNNING, {"bytes_total": 9, "bytes_processed": 4}
    )
    await transitions.move_backup(database, backup_id, 2, S.RUNNING, S.SUCCEEDED)

    after, events = await _row(database, backup_id)
    assert events == ["queued", "starting", "running", "running", "succeeded"]
    assert after.status == S.SUCCEEDED
    assert after.libvirt_xml == "<ours/>"
    assert (after.bytes_total, after.bytes_processed) == (9, 4)


async def test_a_restore_taken_over_cannot_be_finished_by_its_old_holder(
    database: Database,
) -> None:
    restore_id = uuid.uuid4()
    backup_id = await queued_backup(database)
    async with database.session_scope() as session:
        session.add(Restore(id=restore_id, backup_id=backup_id, format="qcow2", disks=[]))
    async with database.session_scope() as session:
        assert await transitions.claim_restore(
            session, restore_id, RestoreStatus.QUEUED, 0, "a", _lease_end()
        )
    async with database.session_scope() as session:
        assert await transitions.claim_restore(
            session, restore_id, RestoreStatus.RUNNING, 1, "b", _lease_end()
        )

    with pytest.raises(LeaseLost):
        await transitions.finish_restore(
            database, restore_id, 1, RestoreStatus.FAILED, error_code="restore-failed"
        )
    async with database.session_scope() as session:
        restore = await session.get_one(Restore, restore_id)
        assert (restore.status, restore.lease_holder, restore.lease_epoch) == (
            RestoreStatus.RUNNING,
            "b",
            2,
        )
        assert restore.error_code is None
        assert restore.finished_at is None

    await transitions.finish_restore(database, restore_id, 2, RestoreStatus.SUCCEEDED)
    async with database.session_scope() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Restore)
            .where(Restore.status == RestoreStatus.SUCCEEDED)
        )
    assert count == 1


async def test_a_failure_is_stored_without_host_paths_and_logged_whole(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    backup_id = await queued_backup(database)
    async with database.session_scope() as session:
        assert await transitions.claim_backup(session, backup_id, 0, "a", _lease_end())
    said = "qemu-img: Could not open '/srv/secret dir/vm.qcow2': Permission denied"
    with caplog.at_level("INFO", logger="app.transitions"):
        await transitions.move_backup(
            database,
            backup_id,
            1,
            S.STARTING,
            S.FAILED,
            error_code="internal-error",
            error_message=said,
            message=said,
        )
    async with database.session_scope() as session:
        backup = await session.get_one(Backup, backup_id)
        event = await session.scalar(
            select(BackupEvent.message).where(
                BackupEvent.backup_id == backup_id, BackupEvent.status == "failed"
            )
        )
    expected = "qemu-img: Could not open '<path>': Permission denied"
    assert (backup.error_message, event) == (expected, expected)
    (line,) = [r for r in caplog.records if r.name == "app.transitions"]
    assert line.levelname == "WARNING"
    assert line.__dict__["error_message"] == said  # the operator's log has it whole
