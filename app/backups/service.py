"""Starting, listing and ending backups from the API side. After `queued`,
status belongs to the worker pool: the API records requests (`end_action`)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Select, event, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app import transitions
from app.backups import chain, paths, planner, storage
from app.backups.lineage import choose_base
from app.backups.schemas import (
    BackupCreate,
    BackupList,
    BackupOut,
    ChainOut,
    CheckpointIn,
    DiskOut,
    DomainRef,
    ErrorOut,
    LinkOut,
    ProgressOut,
    VerificationOut,
)
from app.checkpoints import repository
from app.db import keyset
from app.db.base import utcnow
from app.db.models import (
    TERMINAL_STATUSES,
    VERIFICATION_RUNNING,
    Backup,
    BackupDisk,
    BackupStatus,
    Restore,
    RestoreStatus,
)
from app.errors import (
    AppError,
    BackupNotFound,
    DomainNotRunning,
    InvalidRequest,
    InvalidState,
    LimitReached,
)
from app.hosts.registry import HostRegistry
from app.hypervisor import DomainInfo, Hypervisor
from app.restores import files as restore_files
from app.settings import Settings

log = logging.getLogger(__name__)

# Any select over backups (SQLAlchemy 2.1 types a select by its variadic row).
SelectT = TypeVar("SelectT", bound=Select[*tuple[Any, ...]])
# A queued backup waits for the one before it on its domain: minutes, typically.
QUEUE_RETRY_AFTER_SECONDS = 60


def backup_out(backup: Backup) -> BackupOut:
    return BackupOut(
        id=backup.id,
        host=backup.host,
        domain=DomainRef(name=backup.domain_name, uuid=backup.domain_uuid),
        mode=backup.mode,
        kind=backup.kind,
        incremental=backup.incremental,
        checkpoint=backup.checkpoint,
        fallback_reason=backup.fallback_reason,
        status=backup.status.value,
        progress=ProgressOut(
            bytes_total=backup.bytes_total,
            bytes_processed=backup.bytes_processed,
            temp_used=backup.temp_used,
            temp_total=backup.temp_total,
            updated_at=backup.progress_updated_at,
        ),
        disks=[
            DiskOut(
                name=d.name,
                backup=d.backup,
                backupmode=d.backupmode,
                type=d.type,
                format=d.format,
                target=d.target,
                scratch=d.scratch,
                export=d.export_name,
                export_bitmap=d.export_bitmap,
                nbd_uri=d.nbd_uri,
                bytes=d.bytes,
            )
            for d in backup.disks
        ],
        server=backup.server,
        libvirt_xml=backup.libvirt_xml,
        error=ErrorOut.of(backup.error_code, backup.error_message),
        description=backup.description,
        created_at=backup.created_at,
        started_at=backup.started_at,
        finished_at=backup.finished_at,
        expires_at=backup.expires_at,
        policy_id=backup.policy_id,
        verification=VerificationOut(
            status=backup.verification_status,
            checked_at=backup.verification_checked_at,
            detail=backup.verification_detail,
        ),
    )


def _checkpoint_request(body: BackupCreate) -> CheckpointIn | None:
    if body.checkpoint is False:
        return None
    return body.checkpoint if isinstance(body.checkpoint, CheckpointIn) else CheckpointIn()


async def _refuse_taken_name(
    session: AsyncSession, hypervisor: Hypervisor, domain: DomainInfo, name: str
) -> None:
    """libvirt would refuse the backup, and cleaning up after that failure would
    delete the checkpoint that already has the name."""
    stored = await repository.checkpoint(session, hypervisor.name, domain.uuid, name)
    live = {cp.name for cp in await hypervisor.list_checkpoints(domain.uuid)}
    if stored is not None or name in live:
        raise InvalidState(f"checkpoint {name} already exists on {domain.name}")


def _disk_rows(
    body: BackupCreate,
    domain: DomainInfo,
    backup_id: uuid.UUID,
    incremental: bool,
    settings: Settings,
) -> list[BackupDisk]:
    specs = planner.select_disks(domain, body.disks)
    infos = {disk.name: disk for disk in domain.disks}
    plans = [
        planner.plan_disk(
            spec,
            infos[name],
            request=body,
            incremental=incremental,
            backup_id=backup_id,
            domain_uuid=domain.uuid,
            settings=settings,
        )
        for name, spec in specs.items()
    ]
    if not any(plan.backup for plan in plans):
        raise InvalidRequest(f"no disk of {domain.name} would be backed up")
    planner.check_reuse_external(body, plans)
    return [BackupDisk(position=i, **asdict(plan)) for i, plan in enumerate(plans)]


def _chosen_at_start(body: BackupCreate) -> bool:
    """`auto` is settled again when the backup starts (a backup queued behind
    another of the domain then builds on it), unless a disk names its own
    backupmode: that request is planned once, here."""
    return body.effective_kind == "auto" and not any(d.backupmode for d in body.disks or [])


def _refuse_out_of_bounds(body: BackupCreate, settings: Settings) -> None:
    if body.ttl_seconds is not None and body.ttl_seconds > settings.max_pull_ttl_seconds:
        raise InvalidRequest(
            f"ttl_seconds: at most {settings.max_pull_ttl_seconds} (VMBACKUP_MAX_PULL_TTL_SECONDS)",
            errors=[{"field": "body.ttl_seconds", "message": "above the configured bound"}],
        )


async def _queued(session: AsyncSession, host: str, domain_uuid: str | None = None) -> int:
    query = select(func.count()).where(Backup.host == host, Backup.status == BackupStatus.QUEUED)
    if domain_uuid is not None:
        query = query.where(Backup.domain_uuid == domain_uuid)
    return int(await session.scalar(query) or 0)


async def _refuse_a_full_queue(
    session: AsyncSession, settings: Settings, host: str, domain: DomainInfo, *, adding: int
) -> None:
    """429 when the domain's or the host's queue is full, counting `adding` more."""
    limits = (
        (domain.uuid, settings.max_queued_backups_per_domain, f"domain {domain.name}", "DOMAIN"),
        (None, settings.max_queued_backups_per_host, f"host {host}", "HOST"),
    )
    for domain_uuid, limit, whose, setting in limits:
        queued = await _queued(session, host, domain_uuid)
        if queued + adding > limit:
            raise LimitReached(
                f"{whose} has {queued} queued backups, the most allowed "
                f"(VMBACKUP_MAX_QUEUED_BACKUPS_PER_{setting}): retry once one has started",
                retry_after=QUEUE_RETRY_AFTER_SECONDS,
            )


async def _hold_the_queue(session: AsyncSession, host: str) -> None:
    """Counts that include concurrent requests. SQLite has one writer: after our
    insert, no other request's insert can commit before ours. PostgreSQL needs a
    lock, held to the end of the transaction, so two inserts cannot both count
    before either commits."""
    if session.get_bind().dialect.name == "postgresql":
        key = func.hashtext(f"vmbackup.queue:{host}")
        await session.execute(select(func.pg_advisory_xact_lock(key)))


async def create_backup(
    session: AsyncSession,
    hosts: HostRegistry,
    settings: Settings,
    *,
    host: str,
    domain_ref: str,
    body: BackupCreate,
) -> Backup:
    """Validate against live libvirt, plan, and write the intent as `queued`."""
    _refuse_out_of_bounds(body, settings)
    backup_id = uuid.uuid4()
    server = planner.plan_server(body.server, backup_id, settings) if body.mode == "pull" else None
    hypervisor = hosts.get(host)
    domain = await hypervisor.get_domain(domain_ref)
    if not domain.active:
        raise DomainNotRunning(f"domain {domain.name} is {domain.state}")
    planner.select_disks(domain, body.disks)  # unknown disks before anything slower
    await _refuse_a_full_queue(session, settings, host, domain, adding=1)  # before any work
    checkpoint = _checkpoint_request(body)
    if checkpoint is not None and checkpoint.name is not None:
        await _refuse_taken_name(session, hypervisor, domain, checkpoint.name)
    base = await choose_base(
        session,
        hypervisor,
        domain,
        kind=body.effective_kind,
        named=body.incremental,
        mode=body.mode,
        provisional=_chosen_at_start(body),
    )
    now = utcnow()
    disks = _disk_rows(body, domain, backup_id, base.checkpoint is not None, settings)
    has_bitmaps = any(disk.backup and disk.bitmap for disk in disks)
    kind = "incremental" if base.checkpoint else "full"
    backup = Backup(
        id=backup_id,
        host=host,
        domain_uuid=domain.uuid,
        domain_name=domain.name,
        mode=body.mode,
        kind=kind,
        requested_kind="auto" if _chosen_at_start(body) else kind,
        incremental=base.checkpoint,
        parent_backup_id=base.parent_backup_id,
        checkpoint=(
            (checkpoint.name or planner.checkpoint_name(backup_id, now))
            if checkpoint and has_bitmaps
            else None
        ),
        checkpoint_description=checkpoint.description if checkpoint else None,
        fallback_reason=base.fallback_reason,
        quiesce=body.quiesce,
        reuse_external=body.reuse_external,
        verify=body.verify,
        ttl_seconds=(body.ttl_seconds or settings.default_pull_ttl_seconds)
        if body.mode == "pull"
        else None,
        description=body.description,
        server=server,
        created_at=now,
        disks=disks,
    )
    await storage.check_request(session, hypervisor, domain, backup, settings)
    transitions.queue_backup(session, backup)
    await session.flush()
    await _hold_the_queue(session, host)
    await _refuse_a_full_queue(session, settings, host, domain, adding=0)  # with ours, exactly
    return backup


def _with_disks() -> Select[Backup]:
    return select(Backup).options(selectinload(Backup.disks))


async def get_backup(session: AsyncSession, backup_id: uuid.UUID) -> Backup:
    backup = (await session.scalars(_with_disks().where(Backup.id == backup_id))).first()
    if backup is None:
        raise BackupNotFound(f"backup {backup_id} does not exist")
    return backup


@dataclass(frozen=True)
class BackupFilters:
    host: str | None = None
    domain: str | None = None  # a name or a UUID
    status: str | None = None

    def apply(self, query: SelectT) -> SelectT:
        if self.host is not None:
            query = query.where(Backup.host == self.host)
        if self.status is not None:
            query = query.where(Backup.status == self.status)
        if self.domain is not None:
            query = query.where(Backup.domain_is(self.domain))
        return query


async def list_backups(
    session: AsyncSession, *, filters: BackupFilters, limit: int, cursor: str | None
) -> BackupList:
    query = _with_disks().order_by(Backup.created_at.desc(), Backup.id.desc()).limit(limit + 1)
    query = filters.apply(query)
    if cursor is not None:
        created_at, backup_id = keyset.decode(cursor)
        query = query.where(
            (Backup.created_at < created_at)
            | ((Backup.created_at == created_at) & (Backup.id < backup_id))
        )
    rows = list((await session.scalars(query)).all())
    page = rows[:limit]
    next_cursor = keyset.encode(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return BackupList(items=[backup_out(b) for b in page], next_cursor=next_cursor)


async def request_finish(session: AsyncSession, backup_id: uuid.UUID) -> Backup:
    backup = await get_backup(session, backup_id)
    if backup.mode != "pull" or backup.status != BackupStatus.READY or backup.end_action:
        raise InvalidState(
            f"backup {backup_id} is a {backup.mode} backup in {backup.status.value}: "
            "only a pull backup in ready can be finished"
        )
    await _set_end_action(session, backup, "finish")
    return backup


async def request_cancel(session: AsyncSession, backup_id: uuid.UUID) -> Backup:
    backup = await get_backup(session, backup_id)
    if backup.status in TERMINAL_STATUSES:
        raise InvalidState(f"backup {backup_id} has ended: {backup.status.value}")
    if backup.status == BackupStatus.QUEUED and await transitions.cancel_queued(session, backup):
        await session.flush()
        await session.refresh(backup)
        return backup
        # A worker claimed it meanwhile: ask that worker to abort instead.
    await _set_end_action(session, backup, "cancel")
    return backup


async def _set_end_action(session: AsyncSession, backup: Backup, action: str) -> None:
    await session.execute(
        update(Backup)
        .where(Backup.id == backup.id, Backup.end_action.is_(None))
        .values(end_action=action)
    )
    await session.flush()
    await session.refresh(backup)


async def chain_of(session: AsyncSession, backup_id: uuid.UUID) -> ChainOut:
    backup = await get_backup(session, backup_id)
    found = await chain.chains(session, backup)
    return ChainOut(
        disks={name: [LinkOut(**asdict(link)) for link in links] for name, links in found.items()}
    )


async def _restores_of(session: AsyncSession, backups: list[Backup]) -> list[Restore]:
    """The doomed backups' restores, whose files go with them; refused while one runs."""
    found = list(
        await session.scalars(select(Restore).where(Restore.backup_id.in_([b.id for b in backups])))
    )
    active = [r for r in found if r.status in (RestoreStatus.QUEUED, RestoreStatus.RUNNING)]
    if active:
        raise InvalidState(
            f"restore {active[0].id} of backup {active[0].backup_id} is "
            f"{active[0].status.value}: delete the backup once it has ended"
        )
    return found


async def _shared_files(session: AsyncSession, backups: list[Backup]) -> set[str]:
    """Doomed backups' targets that a surviving backup also names (rows from
    before targets were owned): those stay."""
    targets = [d.target for b in backups for d in b.disks if d.target]
    if not targets:
        return set()
    rows = await session.scalars(
        select(BackupDisk.target).where(
            BackupDisk.target.in_(targets),
            BackupDisk.backup_id.notin_([b.id for b in backups]),
        )
    )
    return {path for path in rows if path}


async def delete_backup(
    session: AsyncSession, backup_id: uuid.UUID, *, cascade: bool, settings: Settings
) -> None:
    """A terminal backup, and with `cascade` every later backup built on it,
    with the files they made and their restores' files (once the deletion is
    committed). Their checkpoints stop serving as bases (the foreign key is
    nulled), so no incremental is ever based on deleted data."""
    backup = await get_backup(session, backup_id)
    if not backup.status.terminal:
        raise InvalidState(f"backup {backup_id} is {backup.status.value}: cancel it first")
    later = [await get_backup(session, b) for b in await chain.dependents(session, backup_id)]
    needing = [b for b in later if b.status == BackupStatus.SUCCEEDED]
    if needing and not cascade:
        ids = ", ".join(str(b.id) for b in needing[:5])
        raise InvalidState(
            f"backups {ids} build on backup {backup_id}: delete them first or use cascade=true"
        )
    if any(not b.status.terminal for b in later):
        raise InvalidState(f"a backup built on {backup_id} is still active")
    if not cascade:  # only failed or cancelled ones point at it: they need nothing
        later = []
    doomed = [*reversed(later), backup]  # newest first: a parent outlives its children's rows
    restores = await _restores_of(session, doomed)
    shared = await _shared_files(session, doomed)
    if not cascade:
        await session.execute(
            update(Backup).where(Backup.parent_backup_id == backup_id).values(parent_backup_id=None)
        )
    for victim in doomed:
        await session.delete(victim)
        await session.flush()
    for restore in restores:
        session.expunge(restore)  # its row goes with the backup's (ON DELETE CASCADE)

    def remove_files(_session: object) -> None:
        _remove_files(doomed, shared, settings)
        for restore in restores:
            restore_files.remove(restore, settings)

    event.listen(session.sync_session, "after_commit", remove_files, once=True)


def _remove_files(backups: list[Backup], shared: set[str], settings: Settings) -> None:
    """Only the targets the service made (never a reuse_external file, never a
    file another backup names), under the backup root with no link on the way;
    then the backup's own directory once empty. Failures are logged: the rows
    are gone, and `vmbackup orphans` lists what stayed."""
    root = settings.backups_dir
    for backup in backups:
        for disk in backup.disks:
            if backup.mode != "push" or not disk.target:
                continue
            what = f"backup {backup.id}: disk {disk.name}"
            try:
                if disk.owns_target and disk.target not in shared:
                    paths.remove_file(disk.target, root, what=what)
                if Path(disk.target).parent.name == str(backup.id):  # generated: its own
                    names = paths.parts_under(disk.target, root, what=what)
                    paths.remove_empty_dir(root, names[:-1], what=what)
            except (OSError, AppError) as error:
                log.warning("%s: file not removed: %s", what, error)


async def request_verification(session: AsyncSession, backup_id: uuid.UUID) -> Backup:
    """Queue a re-read of a succeeded push backup's chain; the worker pool runs
    it (`app/backups/verification.py`). Asking again while one runs changes nothing."""
    backup = await get_backup(session, backup_id)
    if backup.mode != "push" or backup.status != BackupStatus.SUCCEEDED:
        raise InvalidState(
            f"backup {backup_id} is a {backup.status.value} {backup.mode} backup: only a "
            "succeeded push backup holds files to verify"
        )
    if backup.verification_status != VERIFICATION_RUNNING:
        await session.execute(
            update(Backup)
            .where(Backup.id == backup_id)
            .values(
                verification_status=VERIFICATION_RUNNING,
                verification_holder=None,
                verification_expires_at=None,
            )
        )
        await session.flush()
        await session.refresh(backup)
    return backup
