"""Retention: prune the backups a policy no longer keeps, without breaking any
chain a kept backup needs.

Which backups a policy keeps, per domain, among the succeeded ones it made:
the newest `last`, plus the newest of each of the last `daily` days, `weekly`
ISO weeks and `monthly` months (GFS), in the policy's time zone. Backups the
policy did not make are never pruned by it.

How, crash-safely, in three recorded steps:
1. mark: `pruned_at` is set on each backup to prune, before any file is touched;
2. merge forward: every kept backup built on a marked one is rebased in safe
   mode (qemu-img copies into it what the dropped links held) onto its nearest
   kept ancestor, or onto nothing, becoming self-contained; its new parent is
   recorded after the rebase, and a rebase found already done is only recorded;
3. delete: the marked backups, newest first, with their files.
A crash anywhere leaves marked rows; the next pass (at start, after each
policy backup, after each policy run) finishes it. Until step 3 every old link
is still on disk, so every chain opens, before, during and after.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from app import images
from app.backups import chain
from app.backups.service import delete_backup
from app.crashpoints import crash_point
from app.db.base import utcnow
from app.db.models import TERMINAL_STATUSES, Backup, BackupDisk, BackupEvent, BackupStatus, Policy
from app.db.session import Database
from app.errors import AppError
from app.settings import Settings

log = logging.getLogger(__name__)
MERGE_TIMEOUT = 6 * 3600.0


@dataclass(frozen=True)
class Point:
    backup_id: uuid.UUID
    created_at: datetime


def kept(
    points: Sequence[Point], retention: dict[str, int] | None, timezone: str
) -> set[uuid.UUID]:
    """The backups a retention rule keeps; every one when there is no rule."""
    if not retention or not any(retention.values()):
        return {p.backup_id for p in points}
    zone = ZoneInfo(timezone)
    newest_first = sorted(points, key=lambda p: p.created_at, reverse=True)
    keep = {p.backup_id for p in newest_first[: retention.get("last") or 0]}
    for name in ("daily", "weekly", "monthly"):
        count = retention.get(name) or 0
        seen: list[object] = []
        for point in newest_first:
            period = _period(name, point.created_at.astimezone(zone))
            if period not in seen:
                seen.append(period)
                if len(seen) <= count:
                    keep.add(point.backup_id)
    return keep


def _period(name: str, at: datetime) -> object:
    if name == "daily":
        return at.date()
    if name == "weekly":
        return at.isocalendar()[:2]
    return (at.year, at.month)


async def apply(
    database: Database, settings: Settings, policy_id: uuid.UUID, domain_uuid: str
) -> None:
    """Mark what the policy no longer keeps for the domain, then finish pruning."""
    async with database.session_scope() as session:
        policy = await session.get(Policy, policy_id)
        if policy is None or not policy.retention:
            return
        made = (
            await session.execute(
                select(Backup.id, Backup.created_at).where(
                    Backup.policy_id == policy_id,
                    Backup.domain_uuid == domain_uuid,
                    Backup.status == BackupStatus.SUCCEEDED,
                    Backup.pruned_at.is_(None),
                )
            )
        ).all()
        keep = kept([Point(i, t) for i, t in made], policy.retention, policy.timezone)
        # A base an unfinished backup builds on stays until that one ends.
        bases = set(
            await session.scalars(
                select(Backup.parent_backup_id).where(
                    Backup.domain_uuid == domain_uuid, Backup.status.not_in(TERMINAL_STATUSES)
                )
            )
        )
        doomed = [i for i, _ in made if i not in keep and i not in bases]
        if doomed:
            await session.execute(
                update(Backup).where(Backup.id.in_(doomed)).values(pruned_at=utcnow())
            )
            log.info(
                "policy %s: pruning %d backups of %s",
                policy.name,
                len(doomed),
                domain_uuid,
                extra={"policy": policy.name, "host": policy.host, "domain_uuid": domain_uuid},
            )
    await finish(database, settings, domain_uuid)


async def finish(database: Database, settings: Settings, domain_uuid: str | None = None) -> None:
    """Carry out every marked pruning (of one domain, or all): merge forward, then delete."""
    async with database.session_scope() as session:
        query = select(Backup.id, Backup.domain_uuid).where(Backup.pruned_at.is_not(None))
        if domain_uuid is not None:
            query = query.where(Backup.domain_uuid == domain_uuid)
        marked = (await session.execute(query)).all()
    for domain in {d for _, d in marked}:
        doomed = {i for i, d in marked if d == domain}
        try:
            await _merge_forward(database, settings, domain, doomed)
            await _delete(database, settings, doomed)
        except AppError as error:  # a file or the host away: the next pass goes on
            log.warning(
                "retention on %s paused: %s", domain, error.detail, extra={"domain_uuid": domain}
            )


async def _load(database: Database, domain_uuid: str) -> dict[uuid.UUID, Backup]:
    async with database.session_scope() as session:
        rows = await session.scalars(
            select(Backup)
            .options(selectinload(Backup.disks))
            .where(Backup.domain_uuid == domain_uuid, Backup.status == BackupStatus.SUCCEEDED)
        )
        return {b.id: b for b in rows}


async def _merge_forward(
    database: Database, settings: Settings, domain_uuid: str, doomed: set[uuid.UUID]
) -> None:
    backups = await _load(database, domain_uuid)
    for child in sorted(backups.values(), key=lambda b: b.created_at):
        if child.id in doomed or child.parent_backup_id not in doomed:
            continue
        parent: uuid.UUID | None = child.parent_backup_id
        while parent is not None and parent in doomed:
            parent = backups[parent].parent_backup_id if parent in backups else None
        await _rebase(database, settings, child, backups.get(parent) if parent else None)


async def _rebase(
    database: Database, settings: Settings, child: Backup, onto: Backup | None
) -> None:
    """The child's incremental files re-pointed at `onto`'s (or at nothing), then
    recorded; a file whose header already says so is only recorded."""
    root = settings.backups_dir
    for disk in child.disks:
        if not (disk.backup and disk.target and disk.backupmode == "incremental"):
            continue
        top = images.Image(disk.target, disk.format or "qcow2")
        async with database.session_scope() as session:
            base = await chain.recorded_images(session, onto, disk.name, root) if onto else []
            old = await chain.recorded_images(session, child, disk.name, root)
        header = await images.info(top)
        done = (header.backing_file is None) if not base else header.backing_file == base[-1].path
        if not done:
            await images.verify_chain(old)
            if base:
                await images.verify_chain(base)
            await images.rebase_safe(old, base[-1] if base else None, timeout=MERGE_TIMEOUT)
        crash_point("merging")
        async with database.session_scope() as session:
            await session.execute(
                update(BackupDisk)
                .where(BackupDisk.backup_id == child.id, BackupDisk.name == disk.name)
                .values(
                    backing_file=base[-1].path if base else None,
                    backupmode="incremental" if base else "full",
                )
            )
    values: dict[str, object] = {"parent_backup_id": onto.id if onto else None}
    if onto is None:
        values["kind"] = "full"
        message = "retention: merged forward, now self-contained"
    else:
        message = f"retention: merged forward onto backup {onto.id}"
    async with database.session_scope() as session:
        await session.execute(update(Backup).where(Backup.id == child.id).values(**values))
        session.add(BackupEvent(backup_id=child.id, status=child.status.value, message=message))
    log.info(
        "backup %s: %s",
        child.id,
        message,
        extra={"backup_id": child.id, "host": child.host, "domain": child.domain_name},
    )


async def _delete(database: Database, settings: Settings, doomed: set[uuid.UUID]) -> None:
    backups = []
    async with database.session_scope() as session:
        rows = await session.execute(
            select(Backup.id, Backup.created_at).where(Backup.id.in_(doomed))
        )
        backups = sorted(rows.all(), key=lambda r: r.created_at, reverse=True)
    for backup_id, _created in backups:  # newest first: nothing built on it by then
        async with database.session_scope() as session:
            await delete_backup(session, backup_id, cascade=False, settings=settings)
        log.info("backup %s: pruned by retention", backup_id, extra={"backup_id": backup_id})
