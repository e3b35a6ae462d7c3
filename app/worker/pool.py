"""The worker pool: the only writer of a backup's status after `queued`.

One pool per process. It claims queued backups (oldest first, one active per
domain), holds each by a lease it renews with its heartbeat, takes over the
active backups whose lease expired (a crashed or stopped replica), and
follows every job to its end through the host's events and job statistics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, delete, event, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app import logs, transitions
from app.backups import verification
from app.crashpoints import crash_point
from app.db.models import (
    ABORT_LATER,
    ABORTED_LATE,
    ACTIVE_STATUSES,
    Backup,
    BackupStatus,
    Restore,
    RestoreStatus,
    Worker,
)
from app.db.session import DATABASE_UNAVAILABLE, Database
from app.errors import AppError, CheckpointNotFound, DomainNotFound
from app.hosts.registry import HostRegistry
from app.hypervisor import DomainStopped, HostReconnected, HypervisorEvent, JobCompleted
from app.policies import retention, scheduler
from app.restores.runner import run_restore
from app.settings import Settings
from app.worker import notify
from app.worker.runner import BackupRunner, JobSignal

log = logging.getLogger(__name__)
MAX_RESTORES = 2  # per process: each is a full read and write of its disks
MAX_VERIFICATIONS = 1  # per process: each is a full read of its chains


class WorkerPool:
    def __init__(self, settings: Settings, database: Database, hosts: HostRegistry) -> None:
        self.settings = settings
        self.database = database
        self.hosts = hosts
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._tasks: list[asyncio.Task[None]] = []
        self._runs: dict[uuid.UUID, tuple[str, asyncio.Task[None]]] = {}
        self._restores: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._verifications: dict[uuid.UUID, asyncio.Task[None]] = {}
        # Backups that just ended: their policy's retention runs next (None: at
        # start, finish whatever pruning a previous process left marked).
        self._retention_due: set[uuid.UUID] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._signals: dict[tuple[str, str], JobSignal] = {}
        self._wake = asyncio.Event()
        # Jobs left by backups failed in a host outage are looked for at start and
        # when a host comes back, not on every tick.
        self._abandoned_due = True
        self._last_heartbeat: datetime | None = None

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.lease_seconds)

    def _lease_end(self) -> datetime:
        return datetime.now(UTC) + self.lease

    def _live_holders(self, now: datetime) -> Select[str]:
        return select(Worker.holder).where(Worker.heartbeat_at > now - self.lease)

    @property
    def alive(self) -> bool:
        if not self._tasks or any(task.done() for task in self._tasks):
            return False
        if self._last_heartbeat is None:
            return False
        return datetime.now(UTC) - self._last_heartbeat < self.lease

    async def start(self) -> None:
        await self._heartbeat_once()
        self.hosts.subscribe_all(self._on_event)
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat"),
            asyncio.create_task(self._dispatch_loop(), name="worker-dispatch"),
        ]
        if self.database.is_postgresql:  # other replicas' work wakes this one at once
            listener = notify.listen(self.database.url, self._wake.set)
            self._tasks.append(asyncio.create_task(listener, name="worker-listen"))

    async def stop(self) -> None:
        """Stop following; libvirt jobs go on and the next start takes them over."""
        tasks = [
            *self._tasks,
            *(task for _host, task in self._runs.values()),
            *self._restores.values(),
            *self._verifications.values(),
            *([self._retention] if self._retention is not None else []),
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks, self._runs, self._restores, self._verifications = [], {}, {}, {}
        self._retention = None
        with contextlib.suppress(Exception):
            async with self.database.session_scope() as session:
                await session.execute(delete(Worker).where(Worker.holder == self.holder))

    def wake(self) -> None:
        self._wake.set()

    def wake_after_commit(self, session: AsyncSession) -> None:
        """Look for work as soon as the request's transaction is committed, here
        and (PostgreSQL) on every other replica."""
        notify.notify_on_commit(session)
        loop = asyncio.get_running_loop()
        event.listen(
            session.sync_session,
            "after_commit",
            lambda _session: loop.call_soon_threadsafe(self._wake.set),
            once=True,
        )

    async def _announce_freed(self, backup_id: uuid.UUID) -> None:
        """Tell the other replicas a domain may be free: one of them may have room
        for its next backup when this one has not."""
        try:
            await notify.announce(self.database)
        except DATABASE_UNAVAILABLE as error:  # they find it by polling
            log.info("backup %s: cannot announce its end: %s", backup_id, error)

    def _on_event(self, happened: HypervisorEvent) -> None:
        if isinstance(happened, HostReconnected):
            # Runners waiting out the outage resume (by looking at libvirt).
            for (host, _domain), waiting in self._signals.items():
                if host == happened.host:
                    waiting.wake.set()
            self._abandoned_due = True
            self._wake.set()
            return
        signal = self._signals.get((happened.host, happened.domain_uuid))
        if signal is None:
            return
        if isinstance(happened, DomainStopped):
            signal.domain_stopped = True
        if isinstance(happened, JobCompleted):
            signal.completed = happened
        if isinstance(happened, JobCompleted | DomainStopped):
            signal.wake.set()

    # -- heartbeat and leases -------------------------------------------------

    async def _heartbeat_once(self) -> None:
        now = datetime.now(UTC)
        async with self.database.session_scope() as session:
            updated = await session.execute(
                update(Worker)
                .where(Worker.holder == self.holder)
                .values(heartbeat_at=now)
                .returning(Worker.holder)
            )
            if updated.first() is None:
                session.add(Worker(holder=self.holder, started_at=now, heartbeat_at=now))
            # Only runs still followed here: a dead runner's lease must expire.
            await session.execute(
                update(Backup)
                .where(
                    Backup.lease_holder == self.holder,
                    Backup.status.in_(ACTIVE_STATUSES),
                    Backup.id.in_(list(self._runs)),
                )
                .values(lease_expires_at=now + self.lease)
            )
            await session.execute(
                update(Restore)
                .where(Restore.lease_holder == self.holder, Restore.id.in_(list(self._restores)))
                .values(lease_expires_at=now + self.lease)
            )
            await session.execute(
                update(Backup)
                .where(
                    Backup.verification_holder == self.holder,
                    Backup.id.in_(list(self._verifications)),
                )
                .values(verification_expires_at=now + self.lease)
            )
            await session.execute(delete(Worker).where(Worker.heartbeat_at < now - 10 * self.lease))
        self._last_heartbeat = now

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                await self._heartbeat_once()
            except DATABASE_UNAVAILABLE as error:  # away for a while: try again
                log.warning("worker heartbeat: database unavailable: %s", error)
            except Exception:
                log.exception("worker heartbeat failed")

    # -- dispatch -------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            try:
                if self._abandoned_due:
                    self._abandoned_due = not await self._abort_abandoned()
                await self._take_over_stalled()
                await scheduler.run_due(self.database, self.hosts, self.settings)
                self._start_retention()
                while await self._claim_next():
                    pass
                while await self._claim_restore():
                    pass
                while await self._claim_verification():
                    pass
            except DATABASE_UNAVAILABLE as error:
                log.warning("worker dispatch: database unavailable: %s", error)
            except Exception:
                log.exception("worker dispatch failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)

    def _hosts_with_room(self) -> list[str]:
        busy: dict[str, int] = {}
        for host, _task in self._runs.values():
            busy[host] = busy.get(host, 0) + 1
        return [
            host.name
            for host in self.hosts
            if host.status.connected and busy.get(host.name, 0) < self.settings.workers_per_host
        ]

    async def _claim_next(self) -> bool:
        hosts = self._hosts_with_room()
        if not hosts:
            return False
        active = aliased(Backup)
        busy_domain = exists().where(
            active.host == Backup.host,
            active.domain_uuid == Backup.domain_uuid,
            or_(active.status.in_(ACTIVE_STATUSES), active.end_action == ABORT_LATER),
        )
        query = (
            select(Backup.id, Backup.host, Backup.lease_epoch)
            .where(Backup.status == BackupStatus.QUEUED, Backup.host.in_(hosts), ~busy_domain)
            .order_by(Backup.created_at, Backup.id)
            .limit(1)
        )
        if self.database.is_postgresql:
            query = query.with_for_update(skip_locked=True, of=Backup)
        try:
            async with self.database.session_scope() as session:
                row = (await session.execute(query)).first()
                if row is None:
                    return False
                domain_uuid = await transitions.claim_backup(
                    session, row.id, row.lease_epoch, self.holder, self._lease_end()
                )
        except IntegrityError:
            # Another replica started a backup of the same domain in between.
            return False
        if domain_uuid is None:
            return True  # cancelled or taken meanwhile: look again
        crash_point("claimed")
        log.info(
            "backup %s: claimed, starting",
            row.id,
            extra={"backup_id": row.id, "host": row.host, "domain_uuid": domain_uuid},
        )
        self._run(row.id, row.host, domain_uuid, row.lease_epoch + 1, resumed=False)
        return True

    async def _claim_restore(self) -> bool:
        """A queued restore, or a running one whose holder stopped (a restore is
        rerunnable: it writes to a temporary name and renames when whole)."""
        if len(self._restores) >= MAX_RESTORES:
            return False
        now = datetime.now(UTC)
        live_holders = self._live_holders(now)
        query = (
            select(Restore.id, Restore.lease_epoch, Restore.status)
            .where(
                or_(
                    Restore.status == RestoreStatus.QUEUED,
                    (Restore.status == RestoreStatus.RUNNING)
                    & Restore.id.notin_(list(self._restores))
                    & or_(
                        Restore.lease_expires_at < now,
                        Restore.lease_holder.notin_(live_holders),
                    ),
                )
            )
            .order_by(Restore.created_at)
            .limit(1)
        )
        if self.database.is_postgresql:
            query = query.with_for_update(skip_locked=True, of=Restore)
        async with self.database.session_scope() as session:
            row = (await session.execute(query)).first()
            if row is None:
                return False
            claimed = await transitions.claim_restore(
                session, row.id, row.status, row.lease_epoch, self.holder, self._lease_end()
            )
        if claimed:
            log.info("restore %s: claimed, running", row.id, extra={"restore_id": row.id})
            self._start_restore(row.id, row.lease_epoch + 1)
        return True

    def _start_restore(self, restore_id: uuid.UUID, epoch: int) -> None:
        async def run() -> None:
            try:
                with logs.concerning(restore_id=restore_id):
                    await run_restore(self.database, restore_id, epoch, self.settings)
            except transitions.LeaseLost as lost:
                log.info("%s", lost, extra={"restore_id": restore_id})
            except Exception:
                log.exception(
                    "restore %s: runner failed", restore_id, extra={"restore_id": restore_id}
                )
            finally:
                self._restores.pop(restore_id, None)
                self._wake.set()

        self._restores[restore_id] = asyncio.create_task(run(), name=f"restore-{restore_id}")

    def _start_retention(self) -> None:
        """Merging a pruned backup forward rewrites a file (qemu-img rebase), minutes
        for a large disk: it runs beside the dispatch loop, one pass at a time, so
        claims and takeovers never wait for it."""
        if self._retention is not None and not self._retention.done():
            return
        if self._retention_due is not None and not self._retention_due:
            return  # nothing ended since the last pass
        self._retention = asyncio.create_task(self._retention_pass(), name="retention")

    async def _retention_pass(self) -> None:
        try:
            await self._apply_retention()
        except DATABASE_UNAVAILABLE as error:
            log.warning("retention: database unavailable: %s", error)
        except Exception:
            log.exception("retention pass failed")

    async def _apply_retention(self) -> None:
        """After a policy's backup succeeds, prune what its policy no longer keeps."""
        if self._retention_due is None:
            await retention.finish(self.database, self.settings)
            self._retention_due = set()
            return
        due, self._retention_due = self._retention_due, set()
        if not due:
            return
        async with self.database.session_scope() as session:
            ended = (
                await session.execute(
                    select(Backup.policy_id, Backup.domain_uuid)
                    .where(
                        Backup.id.in_(due),
                        Backup.policy_id.is_not(None),
                        Backup.status == BackupStatus.SUCCEEDED,
                    )
                    .distinct()
                )
            ).all()
        for policy_id, domain_uuid in ended:
            if policy_id is not None:  # selected so; the type does not know
                await retention.apply(self.database, self.settings, policy_id, domain_uuid)

    async def _claim_verification(self) -> bool:
        if len(self._verifications) >= MAX_VERIFICATIONS:
            return False
        backup_id = await verification.claim(self.database, self.holder, self._lease_end())
        if backup_id is None:
            return False

        async def run() -> None:
            try:
                with logs.concerning(backup_id=backup_id):
                    await verification.run(self.database, backup_id, self.holder, self.settings)
            except Exception:
                log.exception(
                    "backup %s: verification failed to run",
                    backup_id,
                    extra={"backup_id": backup_id},
                )
            finally:
                self._verifications.pop(backup_id, None)

        self._verifications[backup_id] = asyncio.create_task(run(), name=f"verify-{backup_id}")
        return True

    async def _abort_abandoned(self) -> bool:
        """Backups failed by a host outage past the limit: once their host is back,
        abort the job they left and drop their checkpoint, so nothing is orphaned.
        Until then no other backup of the domain is claimed. True when none is left
        on a connected host."""
        connected = [host.name for host in self.hosts if host.status.connected]
        done = True
        async with self.database.session_scope() as session:
            abandoned = (
                await session.execute(
                    select(Backup.id, Backup.host, Backup.domain_uuid, Backup.checkpoint).where(
                        Backup.end_action == ABORT_LATER, Backup.host.in_(connected)
                    )
                )
            ).all()
        for row in abandoned:
            hypervisor = self.hosts.get(row.host)
            try:
                if await hypervisor.backup_state(row.domain_uuid) is not None:
                    await hypervisor.abort_job(row.domain_uuid)
                if row.checkpoint is not None:
                    with contextlib.suppress(CheckpointNotFound):
                        await hypervisor.delete_checkpoint(row.domain_uuid, row.checkpoint)
            except DomainNotFound:
                pass  # the job and its checkpoint went with the domain
            except AppError as error:
                log.warning(
                    "backup %s: cannot abort its job yet: %s",
                    row.id,
                    error.detail,
                    extra={"backup_id": row.id, "host": row.host, "domain_uuid": row.domain_uuid},
                )
                done = False
                continue
            log.info(
                "backup %s: aborted the job it left during the outage",
                row.id,
                extra={"backup_id": row.id, "host": row.host, "domain_uuid": row.domain_uuid},
            )
            async with self.database.session_scope() as session:
                await session.execute(
                    update(Backup)
                    .where(Backup.id == row.id, Backup.end_action == ABORT_LATER)
                    .values(end_action=ABORTED_LATE)
                )
        return done

    async def _take_over_stalled(self) -> None:
        now = datetime.now(UTC)
        live_holders = self._live_holders(now)
        hosts = self._hosts_with_room()
        async with self.database.session_scope() as session:
            stalled = (
                await session.execute(
                    select(Backup.id, Backup.host, Backup.domain_uuid, Backup.lease_epoch).where(
                        Backup.status.in_(ACTIVE_STATUSES),
                        Backup.host.in_(hosts),
                        Backup.id.notin_(list(self._runs)),
                        or_(
                            Backup.lease_expires_at < now,
                            Backup.lease_holder.is_(None),
                            Backup.lease_holder.notin_(live_holders),
                        ),
                    )
                )
            ).all()
            taken = [
                row
                for row in stalled
                if await transitions.take_over(
                    session, row.id, row.lease_epoch, self.holder, self._lease_end()
                )
            ]
        for row in taken:
            log.info(
                "taking over backup %s (lease expired)",
                row.id,
                extra={"backup_id": row.id, "host": row.host, "domain_uuid": row.domain_uuid},
            )
            self._run(row.id, row.host, row.domain_uuid, row.lease_epoch + 1, resumed=True)

    def _run(
        self, backup_id: uuid.UUID, host: str, domain_uuid: str, epoch: int, *, resumed: bool
    ) -> None:
        signal = JobSignal()
        self._signals[(host, domain_uuid)] = signal
        runner = BackupRunner(
            self.database,
            self.hosts.get(host),
            backup_id,
            epoch,
            signal,
            self.settings,
            resumed=resumed,
        )

        async def run() -> None:
            try:
                with logs.concerning(backup_id=backup_id, host=host, domain_uuid=domain_uuid):
                    await runner.run()
            except Exception:
                log.exception("backup %s: runner failed", backup_id, extra={"backup_id": backup_id})
            finally:
                self._runs.pop(backup_id, None)
                if self._signals.get((host, domain_uuid)) is signal:
                    del self._signals[(host, domain_uuid)]
                self._abandoned_due = True  # it may have given up on its host
                if self._retention_due is not None:
                    self._retention_due.add(backup_id)
                self._wake.set()  # a queued backup of this domain may start now
            await self._announce_freed(backup_id)

        self._runs[backup_id] = (host, asyncio.create_task(run(), name=f"backup-{backup_id}"))
