"""Verifying a succeeded push backup, in the worker pool: `qemu-img check` of
every recorded file of each disk's chain, then the disk's content digest read
through the pinned chain, compared with the one recorded when the backup
completed. A mismatch marks the backup `corrupt`: it is never a base again and
every chain through it answers `chain-broken` (app/backups/chain.py).

A verification is claimed like a restore (holder and expiry, renewed by the
pool's heartbeat), reads only, and writes its verdict guarded on its holder:
one that dies is simply run again by another worker."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import selectinload

from app import images
from app.backups import chain
from app.db.base import utcnow
from app.db.models import (
    VERIFICATION_CORRUPT,
    VERIFICATION_OK,
    VERIFICATION_RUNNING,
    VERIFICATION_UNVERIFIED,
    Backup,
)
from app.db.session import Database
from app.errors import ChainBroken
from app.settings import Settings

log = logging.getLogger(__name__)


async def claim(database: Database, holder: str, expires_at: datetime) -> uuid.UUID | None:
    """A requested verification no live worker runs, now held by `holder`."""
    now = utcnow()
    async with database.session_scope() as session:
        found = await session.scalar(
            select(Backup.id)
            .where(
                Backup.verification_status == VERIFICATION_RUNNING,
                or_(
                    Backup.verification_holder.is_(None),
                    Backup.verification_expires_at < now,
                ),
            )
            .limit(1)
        )
        if found is None:
            return None
        taken = await session.execute(
            update(Backup)
            .where(
                Backup.id == found,
                Backup.verification_status == VERIFICATION_RUNNING,
                or_(Backup.verification_holder.is_(None), Backup.verification_expires_at < now),
            )
            .values(verification_holder=holder, verification_expires_at=expires_at)
            .returning(Backup.id)
        )
        return found if taken.first() is not None else None


async def run(database: Database, backup_id: uuid.UUID, holder: str, settings: Settings) -> None:
    status, detail, digests = await _verdict(database, backup_id, settings)
    async with database.session_scope() as session:
        await session.execute(
            update(Backup)
            .where(Backup.id == backup_id, Backup.verification_holder == holder)
            .values(
                verification_status=status,
                verification_detail=detail,
                verification_checked_at=utcnow(),
                verification_holder=None,
                verification_expires_at=None,
                digests=digests,
            )
        )
    log.info("backup %s: verification %s: %s", backup_id, status, detail)


async def _verdict(
    database: Database, backup_id: uuid.UUID, settings: Settings
) -> tuple[str, str, dict[str, str] | None]:
    async with database.session_scope() as session:
        query = select(Backup).options(selectinload(Backup.disks)).where(Backup.id == backup_id)
        backup = (await session.scalars(query)).one()
        recorded = dict(backup.digests or {})
        try:
            chains = {
                d.name: await chain.recorded_images(session, backup, d.name, settings.backups_dir)
                for d in backup.disks
                if d.backup
            }
        except ChainBroken as broken:
            return VERIFICATION_CORRUPT, broken.detail, backup.digests
    found: dict[str, str] = {}
    try:
        for name, links in chains.items():
            for image in links:
                await images.check(image)
            found[name] = await images.digest(links, timeout=settings.restore_timeout_seconds)
    except images.ChainMismatch as error:
        log.warning("backup %s: verification: %s", backup_id, error)
        return VERIFICATION_CORRUPT, f"disk {name}: {error.message}", backup.digests
    except images.ImageToolError as error:  # could not read it: no verdict either way
        log.warning("backup %s: verification: %s", backup_id, error)
        return VERIFICATION_UNVERIFIED, f"disk {name}: {error.message}", backup.digests
    differs = sorted(name for name, value in found.items() if recorded.get(name, value) != value)
    if differs:
        detail = f"content of {', '.join(differs)} differs from the digest recorded at backup time"
        return VERIFICATION_CORRUPT, detail, backup.digests
    if recorded.keys() >= found.keys():
        return VERIFICATION_OK, "every file checks, and the content matches its digest", recorded
    # No reference recorded at backup time: this reading becomes the reference.
    return VERIFICATION_OK, "every file checks; content digests recorded now", found
