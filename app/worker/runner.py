"""Runs one backup: begins the libvirt job (once), follows it to its end, and
writes the outcome. Only what the service itself did decides how a pull ends:
libvirt reports an aborted pull as completed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Update, select, update
from sqlalchemy.orm import selectinload
from structlog.contextvars import bind_contextvars

from app import images
from app.backups import chain, storage
from app.backups.lineage import choose_base
from app.backups.paths import confine
from app.backups.planner import nbd_uri
from app.checkpoints import repository
from app.checkpoints import service as checkpoints
from app.crashpoints import crash_point
from app.db.base import utcnow
from app.db.models import ABORT_LATER, VERIFICATION_OK, Backup, BackupDisk, BackupStatus
from app.db.session import DATABASE_UNAVAILABLE, Database
from app.errors import (
    AppError,
    ChainBroken,
    CheckpointNotFound,
    DomainNotFound,
    HostUnreachable,
    HypervisorError,
)
from app.hypervisor import (
    BackupDiskState,
    BackupMode,
    BackupSpec,
    CheckpointDiskSpec,
    CheckpointSpec,
    DiskBackupMode,
    DiskBackupSpec,
    Hypervisor,
    JobCompleted,
    JobStats,
    NbdServerSpec,
)
from app.settings import Settings
from app.transitions import LeaseLost, fenced, move_backup, record_progress

log = logging.getLogger(__name__)
S = BackupStatus


@dataclass
class JobSignal:
    """Set from hypervisor events: wakes the follower at once instead of a poll."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    domain_stopped: bool = False
    completed: JobCompleted | None = None


_DISK_MODES: dict[str, DiskBackupMode] = {"full": "full", "incremental": "incremental"}


def backup_spec(backup: Backup) -> BackupSpec:
    server = None
    if backup.server is not None:
        server = NbdServerSpec(
            transport=backup.server["transport"],
            socket=backup.server.get("socket"),
            name=backup.server.get("name"),
            port=backup.server.get("port"),
            tls=bool(backup.server.get("tls")),
        )
    disks = tuple(
        DiskBackupSpec(
            name=d.name,
            backup=d.backup,
            backupmode=_DISK_MODES.get(d.backupmode or ""),
            type="block" if d.type == "block" else "file",
            target=d.target,
            driver=d.format,
            scratch=d.scratch,
        )
        for d in backup.disks
    )
    mode: BackupMode = "pull" if backup.mode == "pull" else "push"
    return BackupSpec(mode=mode, disks=disks, incremental=backup.incremental, server=server)


def checkpoint_spec(backup: Backup) -> CheckpointSpec | None:
    if backup.checkpoint is None:
        return None
    return CheckpointSpec(
        name=backup.checkpoint,
        description=backup.checkpoint_description,
        disks=tuple(
            CheckpointDiskSpec(d.name, "bitmap" if d.backup and d.bitmap else "no")
            for d in backup.disks
        ),
    )


def _actual_values(backup: Backup, disk: BackupDiskState) -> dict[str, object]:
    """What libvirt chose for a disk. Its paths are not taken: the planned ones,
    confined when planned, stand; one that differs is logged, never stored
    (it would later be opened, rebased and deleted)."""
    values: dict[str, object] = {
        "export_name": disk.export_name,
        "export_bitmap": disk.export_bitmap,
    }
    planned = next((d for d in backup.disks if d.name == disk.name), None)
    for column, reported in (("target", disk.target), ("scratch", disk.scratch)):
        if reported and (planned is None or reported != getattr(planned, column)):
            log.warning("backup %s: libvirt reports %s %s, not ours", backup.id, column, reported)
    if disk.export_name and backup.server is not None:
        values["nbd_uri"] = nbd_uri(backup.server, disk.export_name)
    return values


def _progress(stats: JobStats) -> dict[str, int | None]:
    return {
        "bytes_total": stats.disk_total,
        "bytes_processed": stats.disk_processed,
        "temp_used": stats.disk_temp_used,
        "temp_total": stats.disk_temp_total,
    }


def _allocated_bytes(path: str | None) -> int | None:
    try:
        return os.stat(path).st_blocks * 512 if path else None
    except OSError:
        return None  # not visible from here (a remote host's file)


class BackupRunner:
    def __init__(
        self,
        database: Database,
        hypervisor: Hypervisor,
        backup_id: uuid.UUID,
        epoch: int,
        signal: JobSignal,
        settings: Settings,
        *,
        resumed: bool = False,
    ) -> None:
        self.database = database
        self.settings = settings  # the roots, checked again at the moment of use
        self.hypervisor = hypervisor
        self.backup_id = backup_id
        self.epoch = epoch
        self.signal = signal
        self.poll_seconds = settings.poll_seconds
        self.outage_limit_seconds = settings.host_outage_limit_seconds
        # Taken over, or resumed after an outage: libvirt may already run its job.
        self.resumed = resumed
        self._aborted = False
        # Whether libvirt took our backupBegin: only then is the checkpoint ours to
        # delete (a refused begin may share its name with someone else's).
        self._begun = False
        self._host_lost_at: float | None = None

    async def _load(self) -> Backup:
        async with self.database.session_scope() as session:
            query = select(Backup).options(selectinload(Backup.disks))
            backup = (await session.scalars(query.where(Backup.id == self.backup_id))).one()
        return backup

    async def _move(self, expected: S, to: S, **values: Any) -> None:
        await move_backup(self.database, self.backup_id, self.epoch, expected, to, **values)

    def _disk_update(self, name: str, **values: object) -> Update:
        return (
            update(BackupDisk)
            .where(BackupDisk.backup_id == self.backup_id, BackupDisk.name == name)
            .values(**values)
        )

    async def run(self) -> None:
        """Follow the backup to a terminal status. A lost host or database is
        waited out, then the backup is resumed by looking at libvirt, as after a
        takeover: an outage alone never fails a backup, only one past the limit."""
        while True:
            try:
                await self._run_once()
                return
            except LeaseLost as lost:
                log.info("%s", lost)
                return
            except HostUnreachable as error:
                if not await self._wait_for_host(error):
                    await self._give_up_on_host()
                    return
            except DATABASE_UNAVAILABLE as error:
                log.warning("backup %s: database unavailable, waiting: %s", self.backup_id, error)
                await self.database.wait_until_available()
            except AppError as error:
                await self._fail_now(error.code, error.detail)
                return
            except Exception as error:
                # Say so in the backup rather than leave it stalled in an active state.
                log.exception("backup %s: unexpected error", self.backup_id)
                await self._fail_now("internal-error", f"{type(error).__name__}: {error}")
                return
            self.resumed = True  # whatever happened meanwhile: look before acting

    async def _run_once(self) -> None:
        backup = await self._load()
        bind_contextvars(domain=backup.domain_name)  # this runner's task: its lines
        self._begun = self._begun or backup.status != S.STARTING
        if backup.status == S.STARTING:
            backup = await self._start(backup)
        if not backup.status.terminal:
            await self._follow(backup)

    async def _fail_now(self, code: str, message: str) -> None:
        backup = await self._load()
        if backup.status.terminal:
            return
        await self._discard_checkpoint(backup)
        with contextlib.suppress(LeaseLost):
            await asyncio.shield(
                self._move(backup.status, S.FAILED, error_code=code, error_message=message)
            )

    # -- host outages ---------------------------------------------------------

    async def _wait_for_host(self, error: HostUnreachable) -> bool:
        """Wait for the host to come back (the registry reconnects with backoff);
        False once the outage has lasted past the limit."""
        loop = asyncio.get_running_loop()
        if self._host_lost_at is None:
            self._host_lost_at = loop.time()
            log.warning("backup %s: waiting for the host: %s", self.backup_id, error.detail)
        deadline = self._host_lost_at + self.outage_limit_seconds
        # The failed call can precede the connection's close callback: look again
        # after a tick rather than retry in a tight loop.
        await asyncio.sleep(min(self.poll_seconds, deadline - loop.time(), 1.0))
        while not self.hypervisor.status.connected:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self.signal.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.signal.wake.wait(), min(remaining, self.poll_seconds))
        return loop.time() < deadline

    async def _give_up_on_host(self) -> None:
        """Past the outage limit: fail the backup, and leave its job to be aborted
        (and its checkpoint dropped) by the pool once the host is back."""
        backup = await self._load()
        if backup.status.terminal:
            return
        message = (
            f"host {self.hypervisor.name} unreachable for more than "
            f"{self.outage_limit_seconds:g} s; its libvirt job is aborted when it returns"
        )
        log.warning("backup %s: %s", backup.id, message)
        with contextlib.suppress(LeaseLost):
            await self._move(
                backup.status,
                S.FAILED,
                error_code=HostUnreachable.code,
                error_message=message,
                message=message,
                end_action=ABORT_LATER,
            )

    # -- starting -------------------------------------------------------------

    async def _start(self, backup: Backup) -> Backup:
        if backup.end_action == "cancel":
            await self._move(S.STARTING, S.CANCELLED, message="cancelled before it started")
            return await self._load()
        if self.resumed and await self._already_begun(backup):
            log.info("backup %s: job found in libvirt, not starting another", backup.id)
            self._begun = True
        else:
            if backup.requested_kind == "auto":
                backup = await self._choose_base_now(backup)
            await self._prepare_directories(backup)  # fenced: a stale holder stops here
            crash_point("before-begin")
            await self.hypervisor.backup_begin(
                backup.domain_uuid,
                backup_spec(backup),
                checkpoint_spec(backup),
                reuse_external=backup.reuse_external,
                quiesce=backup.quiesce,
            )
            self._begun = True
            crash_point("after-begin")
        await self._record_actual_values(backup)
        if backup.mode == "pull":
            expires = utcnow() + timedelta(seconds=backup.ttl_seconds or 0)
            await self._move(S.STARTING, S.READY, expires_at=expires)
            crash_point("ready")
        else:
            await self._move(S.STARTING, S.RUNNING)
            crash_point("running")
        return await self._load()

    async def _choose_base_now(self, backup: Backup) -> Backup:
        """`kind: auto` picks its base when it starts, not when it was queued: a
        backup queued behind another of the same domain then builds on that one."""
        domain = await self.hypervisor.get_domain(backup.domain_uuid)
        async with fenced(self.database, backup.id, self.epoch) as session:
            base = await choose_base(
                session, self.hypervisor, domain, kind="auto", named=None, mode=backup.mode
            )
            await session.execute(
                update(Backup)
                .where(Backup.id == backup.id)
                .values(
                    kind="incremental" if base.checkpoint else "full",
                    incremental=base.checkpoint,
                    parent_backup_id=base.parent_backup_id,
                    fallback_reason=base.fallback_reason,
                )
            )
            for disk in backup.disks:
                if disk.backup:
                    mode = _disk_backupmode(backup, disk, incremental=base.checkpoint is not None)
                    await session.execute(self._disk_update(disk.name, backupmode=mode))
        return await self._load()

    async def _already_begun(self, backup: Backup) -> bool:
        """After a crash in `starting`: did our backupBegin reach libvirt?"""
        if (await self.hypervisor.job_stats(backup.domain_uuid)).active:
            return True
        if backup.checkpoint is not None:
            names = {cp.name for cp in await self.hypervisor.list_checkpoints(backup.domain_uuid)}
            if backup.checkpoint in names:
                return True
        return backup.mode == "push" and any(
            d.target and Path(d.target).exists() for d in backup.disks if d.backup
        )

    async def _prepare_directories(self, backup: Backup) -> None:
        """Room, directories and files checked again now, without following links
        (a link or a file may have appeared since the request); the targets the
        service is about to make are recorded first, as only those it may delete."""
        made = await asyncio.to_thread(storage.prepare, backup, self.settings)
        async with fenced(self.database, backup.id, self.epoch) as session:
            for name in made:
                await session.execute(self._disk_update(name, owns_target=True))

    async def _record_actual_values(self, backup: Backup) -> None:
        found = await self.hypervisor.backup_state(backup.domain_uuid)
        if found is None:
            return  # a push that finished at once: its planned values stand
        xml, state = found
        async with fenced(self.database, backup.id, self.epoch) as session:
            await session.execute(
                update(Backup).where(Backup.id == backup.id).values(libvirt_xml=xml)
            )
            for disk in state.disks:
                await session.execute(self._disk_update(disk.name, **_actual_values(backup, disk)))

    # -- following ------------------------------------------------------------

    async def _follow(self, backup: Backup) -> None:
        last_progress: dict[str, int | None] | None = None
        while not backup.status.terminal:
            # Cleared before looking: an event that arrives while we look is kept.
            self.signal.wake.clear()
            if await self._act_on_requests(backup):
                backup = await self._load()  # it may have moved on (ready -> finishing)
            stats = await self._stats(backup)
            self._host_lost_at = None  # libvirt answered: any outage is over
            if stats is None or not stats.active:
                await self._complete(await self._load(), domain_gone=stats is None)
                return
            progress = _progress(stats)
            if progress != last_progress:
                await record_progress(self.database, backup.id, self.epoch, backup.status, progress)
                last_progress = progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.signal.wake.wait(), self._wait_seconds(backup))
            backup = await self._load()

    def _wait_seconds(self, backup: Backup) -> float:
        if backup.expires_at is not None and backup.status == S.READY:
            remaining = (backup.expires_at - utcnow()).total_seconds()
            return max(0.0, min(self.poll_seconds, remaining))
        return self.poll_seconds

    async def _stats(self, backup: Backup) -> JobStats | None:
        """None when the domain is gone or stopped: its job went with it."""
        if self.signal.domain_stopped:
            return None
        try:
            if not await self.hypervisor.is_active(backup.domain_uuid):
                return None
            stats = await self.hypervisor.job_stats(backup.domain_uuid)
            # A job gone because the domain stopped between the two calls.
            if not stats.active and not await self.hypervisor.is_active(backup.domain_uuid):
                return None
            return stats
        except DomainNotFound:
            return None
        except HypervisorError:
            if not await self.hypervisor.is_active(backup.domain_uuid):
                return None  # it stopped meanwhile: "domain is not running"
            raise

    async def _act_on_requests(self, backup: Backup) -> bool:
        """Carry out /finish, /cancel or the ttl: abort the job (for a pull that is
        its normal end). True when it acted."""
        if self._aborted:
            return False
        expired = backup.expires_at is not None and utcnow() >= backup.expires_at
        if backup.status == S.READY and backup.end_action == "finish":
            await self._move(S.READY, S.FINISHING)
            crash_point("finishing")
        elif backup.status == S.READY and expired and backup.end_action is None:
            await self._set_end_action(backup, "ttl")
        elif backup.end_action not in ("cancel", "ttl") and backup.status != S.FINISHING:
            return False  # nothing asked of it (a resumed finish or ttl aborts again)
        with contextlib.suppress(DomainNotFound, HypervisorError):  # ended already
            await self.hypervisor.abort_job(backup.domain_uuid)
        self._aborted = True
        return True

    async def _set_end_action(self, backup: Backup, action: str) -> None:
        async with fenced(self.database, backup.id, self.epoch) as session:
            await session.execute(
                update(Backup)
                .where(Backup.id == backup.id, Backup.end_action.is_(None))
                .values(end_action=action)
            )

    # -- completing -----------------------------------------------------------

    async def _complete(self, backup: Backup, *, domain_gone: bool) -> None:
        final = (
            None
            if domain_gone
            else await self.hypervisor.job_stats(backup.domain_uuid, completed=True)
        )
        outcome, code, message = self._outcome(backup, domain_gone, final)
        crash_point("completing")
        if outcome == S.SUCCEEDED:
            await self._keep_results(backup)
            # While this backup still holds the domain: no other starts meanwhile.
            await self._prune_checkpoints(backup)
        else:
            await self._discard_checkpoint(backup)
        await asyncio.shield(
            self._move(
                backup.status,
                outcome,
                error_code=code,
                error_message=message,
                message=message,
                **_final_progress(final),
            )
        )

    def _outcome(
        self, backup: Backup, domain_gone: bool, final: JobStats | None
    ) -> tuple[S, str | None, str | None]:
        action = backup.end_action
        if action == "cancel":
            return S.CANCELLED, None, None
        if action == "ttl":
            return S.CANCELLED, "ttl-expired", f"not finished within {backup.ttl_seconds} s"
        if domain_gone:
            return S.FAILED, "domain-not-running", "the domain stopped or vanished during the job"
        if action == "finish":
            return S.SUCCEEDED, None, None
        success, errmsg = self._verdict(final)
        if backup.mode == "push" and success:
            return S.SUCCEEDED, None, None
        if backup.mode == "pull":
            return S.FAILED, "libvirt-error", errmsg or "the export ended without /finish"
        return S.FAILED, "libvirt-error", errmsg or "the libvirt job ended without success"

    def _verdict(self, final: JobStats | None) -> tuple[bool | None, str | None]:
        """The JOB_COMPLETED event's word, else the completed job's statistics
        (the net for an event lost while the connection was down)."""
        event = self.signal.completed
        if event is not None and event.success is not None:
            return event.success, event.errmsg
        return (None, None) if final is None else (final.success, final.errmsg)

    async def _discard_checkpoint(self, backup: Backup) -> None:
        """A checkpoint whose backup did not succeed must not be a base later."""
        if backup.checkpoint is None or not self._begun:
            return
        with contextlib.suppress(DomainNotFound, CheckpointNotFound, HypervisorError):
            await self.hypervisor.delete_checkpoint(backup.domain_uuid, backup.checkpoint)

    async def _keep_results(self, backup: Backup) -> None:
        if backup.mode == "push":
            for disk in backup.disks:
                if disk.backup and disk.target and disk.format and Path(disk.target).exists():
                    await images.wait_released(images.Image(disk.target, disk.format))
        if backup.mode == "push" and backup.parent_backup_id is not None:
            await self._rebase_onto_previous(backup)
        checkpoint = (
            None
            if backup.checkpoint is None
            else await self.hypervisor.get_checkpoint(backup.domain_uuid, backup.checkpoint)
        )
        digests = await self._digests(backup) if backup.mode == "push" and backup.verify else None
        async with fenced(self.database, backup.id, self.epoch) as session:
            for disk in backup.disks:
                if disk.backup and disk.target:
                    sized = self._disk_update(disk.name, bytes=_allocated_bytes(disk.target))
                    await session.execute(sized)
            if digests is not None:
                await session.execute(
                    update(Backup)
                    .where(Backup.id == backup.id)
                    .values(
                        digests=digests,
                        verification_status=VERIFICATION_OK,
                        verification_checked_at=utcnow(),
                        verification_detail="content digests recorded as the backup completed",
                    )
                )
            if checkpoint is not None:
                await repository.record_made_by_backup(
                    session, backup.host, backup.domain_uuid, checkpoint, backup.id
                )

    async def _prune_checkpoints(self, backup: Backup) -> None:
        """Keep the domain's checkpoints bounded, one committed deletion at a time.
        Best effort: whatever fails now goes after the next success."""
        if backup.checkpoint is None:
            return
        try:
            async with self.database.session_scope() as session:
                doomed = await checkpoints.prunable(
                    session, backup.host, backup.domain_uuid, self.settings.checkpoints_per_domain
                )
            for name in doomed:
                async with self.database.session_scope() as session:
                    await checkpoints.delete_checkpoint(
                        session,
                        self.hypervisor,
                        backup.domain_uuid,
                        name,
                        children=False,
                        metadata_only=False,
                    )
                log.info(
                    "domain %s: checkpoint %s deleted (bound %d)",
                    backup.domain_name,
                    name,
                    self.settings.checkpoints_per_domain,
                )
        except (AppError, *DATABASE_UNAVAILABLE) as error:
            log.warning("domain %s: checkpoints not pruned now: %s", backup.domain_name, error)

    async def _rebase_onto_previous(self, backup: Backup) -> None:
        """libvirt makes an incremental's qcow2 with the live disk as backing;
        re-point it at the previous backup's file so the chain opens alone. The
        chain it joins is checked first, link by link against the record, and
        again with the new link on top."""
        async with self.database.session_scope() as session:
            parent = await session.scalar(
                select(Backup)
                .options(selectinload(Backup.disks))
                .where(Backup.id == backup.parent_backup_id)
            )
            if parent is None:
                raise ChainBroken(f"backup {backup.parent_backup_id}, the base, was deleted")
            below = {
                name: await chain.recorded_images(session, parent, name, self.root)
                for name in self._rebased_disks(backup)
            }
        for disk in backup.disks:
            if disk.name not in below or not disk.target:
                continue
            top = images.Image(disk.target, "qcow2")
            confine(disk.target, self.root, what="backup file")
            await images.verify_chain(below[disk.name])
            await images.rebase_unsafe(top, below[disk.name][-1])
            await images.verify_chain([*below[disk.name], top])
            crash_point("rebasing")
            async with fenced(self.database, backup.id, self.epoch) as session:
                update_disk = self._disk_update(disk.name, backing_file=below[disk.name][-1].path)
                await session.execute(update_disk)

    async def _digests(self, backup: Backup) -> dict[str, str]:
        """Each disk's content as its whole chain reads it, read once while the new
        file is still in the page cache: the reference a later verify compares."""
        async with self.database.session_scope() as session:
            parent = (
                None
                if backup.parent_backup_id is None
                else await session.scalar(
                    select(Backup)
                    .options(selectinload(Backup.disks))
                    .where(Backup.id == backup.parent_backup_id)
                )
            )
            chains: dict[str, list[images.Image]] = {}
            for disk in backup.disks:
                if not (disk.backup and disk.target and disk.format):
                    continue
                below = (
                    await chain.recorded_images(session, parent, disk.name, self.root)
                    if parent is not None and disk.backupmode == "incremental"
                    else []
                )
                confine(disk.target, self.root, what="backup file")
                chains[disk.name] = [*below, images.Image(disk.target, disk.format)]
        return {
            name: await images.digest(links, timeout=self.settings.restore_timeout_seconds)
            for name, links in chains.items()
        }

    @staticmethod
    def _rebased_disks(backup: Backup) -> set[str]:
        return {
            d.name for d in backup.disks if d.backup and d.target and d.backupmode == "incremental"
        }

    @property
    def root(self) -> Path:
        return self.settings.backups_dir


def _disk_backupmode(backup: Backup, disk: BackupDisk, *, incremental: bool) -> str:
    """A disk with a bitmap follows the backup's kind; a push target that is not
    qcow2 cannot hold an incremental, so it stays full."""
    can_hold = backup.mode == "pull" or (disk.format or "qcow2") == "qcow2"
    return "incremental" if incremental and disk.bitmap and can_hold else "full"


def _final_progress(final: JobStats | None) -> dict[str, object]:
    """The completed job's counters, where libvirt still has them: the last word
    on how much was copied (a small push ends before the first poll)."""
    counters = {k: v for k, v in _progress(final).items() if v is not None} if final else {}
    return {**counters, "progress_updated_at": utcnow()} if counters else {}
