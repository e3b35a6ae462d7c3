"""The backup runner through faults, driven by a fake hypervisor over a real
database (SQLite and PostgreSQL): a lost host is waited out, an outage past
the limit fails the backup and leaves its job to be aborted, a lost
JOB_COMPLETED is recovered from the completed statistics, and a resumed or
stale runner never begins a second job or writes over another holder."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from app import transitions
from app.backups.service import request_finish
from app.db.models import ABORT_LATER, ABORTED_LATE, Backup, BackupDisk, BackupEvent, BackupStatus
from app.db.session import Database
from app.hosts.registry import HostRegistry
from app.settings import Settings
from app.worker.pool import WorkerPool
from app.worker.runner import BackupRunner, JobSignal, backup_spec, checkpoint_spec
from tests.support.fake_hypervisor import DOMAIN_UUID, FakeHypervisor, MiB

S = BackupStatus
HOLDER = "test-holder"


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    yield db
    await db.dispose()


async def _claimed_backup(database: Database, mode: str, settings: Settings) -> uuid.UUID:
    """A backup as the pool leaves it after a claim: `starting`, epoch 1, its
    files planned under the configured roots."""
    backup_id = uuid.uuid4()
    pull = mode == "pull"
    server = {"transport": "unix", "socket": str(settings.socket_root / f"{backup_id}.sock")}
    disk = BackupDisk(name="vda", position=0, backup=True, backupmode="full", bitmap=True)
    if pull:
        disk.scratch = str(settings.scratch_dir / f"{backup_id}.vda.scratch")
    else:
        disk.target = str(settings.backups_dir / DOMAIN_UUID / str(backup_id) / "vda.qcow2")
        disk.format = "qcow2"
    backup = Backup(
        id=backup_id,
        host="local",
        domain_uuid=DOMAIN_UUID,
        domain_name="fake",
        mode=mode,
        kind="full",
        requested_kind="full",
        checkpoint=f"vmb-{backup_id.hex[:8]}",
        server=server if pull else None,
        ttl_seconds=3600 if pull else None,
        created_at=datetime.now(UTC),
        disks=[disk],
    )
    async with database.session_scope() as session:
        transitions.queue_backup(session, backup)
    expires = datetime.now(UTC) + timedelta(seconds=30)
    async with database.session_scope() as session:
        assert await transitions.claim_backup(session, backup_id, 0, HOLDER, expires)
    return backup_id


def _runner(
    database: Database,
    fake: FakeHypervisor,
    backup_id: uuid.UUID,
    settings: Settings,
    *,
    epoch: int = 1,
    resumed: bool = False,
    outage_limit: float = 30.0,
) -> BackupRunner:
    tuned = settings.model_copy(
        update={"poll_seconds": 0.02, "host_outage_limit_seconds": outage_limit}
    )
    return BackupRunner(database, fake, backup_id, epoch, JobSignal(), tuned, resumed=resumed)


async def _load(database: Database, backup_id: uuid.UUID) -> Backup:
    async with database.session_scope() as session:
        query = select(Backup).options(selectinload(Backup.disks)).where(Backup.id == backup_id)
        return (await session.scalars(query)).one()


async def _statuses(database: Database, backup_id: uuid.UUID) -> list[str]:
    async with database.session_scope() as session:
        events = await session.scalars(
            select(BackupEvent)
            .where(BackupEvent.backup_id == backup_id, BackupEvent.progress.is_(None))
            .order_by(BackupEvent.id)
        )
        return [event.status for event in events]


async def _until(database: Database, backup_id: uuid.UUID, status: BackupStatus) -> Backup:
    for _ in range(500):
        backup = await _load(database, backup_id)
        if backup.status == status:
            return backup
        await asyncio.sleep(0.01)
    raise AssertionError(
        f"backup {backup_id} is {backup.status} ({backup.error_message}), never {status}"
    )


async def test_a_host_outage_is_waited_out_and_the_pull_then_finishes(
    database: Database, settings: Settings
) -> None:
    fake = FakeHypervisor()
    backup_id = await _claimed_backup(database, "pull", settings)
    run = asyncio.create_task(_runner(database, fake, backup_id, settings).run())
    await _until(database, backup_id, S.READY)

    fake.disconnect()
    await asyncio.sleep(0.3)  # many poll ticks, each failing with HostUnreachable
    assert (await _load(database, backup_id)).status == S.READY
    fake.reconnect()
    async with database.session_scope() as session:
        await request_finish(session, backup_id)
    await asyncio.wait_for(run, 10)

    assert (await _load(database, backup_id)).status == S.SUCCEEDED
    assert len(fake.begun) == 1
    assert fake.aborted == 1  # the finish; the outage aborted nothing
    assert await _statuses(database, backup_id) == [
        "queued",
        "starting",
        "ready",
        "finishing",
        "succeeded",
    ]


async def test_a_job_that_ended_during_the_outage_is_judged_by_its_completed_stats(
    database: Database, settings: Settings
) -> None:
    fake = FakeHypervisor()
    backup_id = await _claimed_backup(database, "push", settings)
    run = asyncio.create_task(_runner(database, fake, backup_id, settings).run())
    await _until(database, backup_id, S.RUNNING)

    fake.disconnect()
    fake.finish_job()  # its JOB_COMPLETED event went nowhere
    await asyncio.sleep(0.1)
    fake.reconnect()
    await asyncio.wait_for(run, 10)

    done = await _load(database, backup_id)
    assert done.status == S.SUCCEEDED
    # The completed job's counters are the final progress.
    assert (done.bytes_total, done.bytes_processed) == (64 * MiB, 64 * MiB)
    assert done.checkpoint in fake.checkpoints


async def test_an_outage_past_the_limit_fails_the_backup_and_its_job_is_aborted_on_return(
    database: Database, settings: Settings
) -> None:
    fake = FakeHypervisor()
    backup_id = await _claimed_backup(database, "pull", settings)
    run = asyncio.create_task(_runner(database, fake, backup_id, settings, outage_limit=0.3).run())
    await _until(database, backup_id, S.READY)

    fake.disconnect()
    await asyncio.wait_for(run, 10)
    failed = await _load(database, backup_id)
    assert failed.status == S.FAILED
    assert failed.error_code == "host-unreachable"
    assert "unreachable for more than 0.3 s" in (failed.error_message or "")
    assert failed.end_action == ABORT_LATER
    assert fake.job is not None  # nothing could reach it yet

    registry = HostRegistry(lambda _name, _uri: fake)
    await registry.add("local", fake.uri)
    pool = WorkerPool(settings, database, registry)
    fake.reconnect()
    await pool.start()
    try:
        for _ in range(200):
            if (await _load(database, backup_id)).end_action == ABORTED_LATE:
                break
            await asyncio.sleep(0.02)
    finally:
        await pool.stop()
    assert (await _load(database, backup_id)).end_action == ABORTED_LATE
    assert fake.job is None
    assert fake.aborted == 1
    assert failed.checkpoint not in fake.checkpoints  # no base left from unstored data


async def test_a_resumed_runner_finds_the_job_and_never_begins_a_second(
    database: Database, settings: Settings
) -> None:
    fake = FakeHypervisor()
    backup_id = await _claimed_backup(database, "pull", settings)
    # The previous holder's backupBegin reached libvirt, then it died.
    planned = await _load(database, backup_id)
    await fake.backup_begin(DOMAIN_UUID, backup_spec(planned), checkpoint_spec(planned))

    async with database.session_scope() as session:
        expires = datetime.now(UTC) + timedelta(seconds=30)
        assert await transitions.take_over(session, backup_id, 1, "replica-b", expires)
    run = asyncio.create_task(
        _runner(database, fake, backup_id, settings, epoch=2, resumed=True).run()
    )
    await _until(database, backup_id, S.READY)
    async with database.session_scope() as session:
        await request_finish(session, backup_id)
    await asyncio.wait_for(run, 10)

    assert (await _load(database, backup_id)).status == S.SUCCEEDED
    assert len(fake.begun) == 1


async def test_a_runner_whose_lease_was_taken_over_writes_nothing(
    database: Database, settings: Settings
) -> None:
    fake = FakeHypervisor()
    backup_id = await _claimed_backup(database, "push", settings)
    async with database.session_scope() as session:
        expires = datetime.now(UTC) + timedelta(seconds=30)
        assert await transitions.take_over(session, backup_id, 1, "replica-b", expires)

    await asyncio.wait_for(_runner(database, fake, backup_id, settings, epoch=1).run(), 10)

    stale = await _load(database, backup_id)
    assert fake.begun == []  # it looked at its lease before calling libvirt
    assert stale.status == S.STARTING
    assert stale.lease_holder == "replica-b"
    assert await _statuses(database, backup_id) == ["queued", "starting"]
