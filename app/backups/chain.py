"""A backup's chains: for each disk, the links from its full backup to this
one. Push chains are files on disk that must all still be there."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, selectinload

from app import images
from app.backups.paths import confine
from app.db.models import VERIFICATION_CORRUPT, Backup, BackupDisk, BackupStatus
from app.errors import ChainBroken


@dataclass(frozen=True)
class Link:
    backup_id: uuid.UUID
    kind: str  # how this disk was copied in that backup: full or incremental
    checkpoint: str | None
    file: str | None
    format: str | None


Lineage = dict[uuid.UUID, Backup]


async def _lineage(session: AsyncSession, backup: Backup) -> Lineage:
    """The backup and all its ancestors that still exist, with their disks, in two
    queries however long the chain (a link at a time made a start cost grow with
    it). `UNION` rather than `UNION ALL`: a parent cycle, never made, still ends."""
    ancestors = (
        select(Backup.id, Backup.parent_backup_id)
        .where(Backup.id == backup.id)
        .cte("ancestors", recursive=True)
    )
    parent = aliased(Backup)
    ancestors = ancestors.union(
        select(parent.id, parent.parent_backup_id).join(
            ancestors, parent.id == ancestors.c.parent_backup_id
        )
    )
    query = (
        select(Backup)
        .options(selectinload(Backup.disks))
        .where(Backup.id.in_(select(ancestors.c.id)))
    )
    found: Lineage = {row.id: row for row in await session.scalars(query)}
    return found | {backup.id: backup}


def _link(backup: Backup, disk: BackupDisk) -> Link:
    return Link(
        backup.id, disk.backupmode or backup.kind, backup.checkpoint, disk.target, disk.format
    )


def _broken(disk: str, backup: Backup, why: str) -> ChainBroken:
    return ChainBroken(f"disk {disk}: the link before backup {backup.id} {why}", disk=disk)


async def disk_chain(session: AsyncSession, backup: Backup, disk_name: str) -> list[Link]:
    """Oldest first. Raises ChainBroken naming the first missing link."""
    return _disk_chain(await _lineage(session, backup), backup, disk_name)


def _disk_chain(lineage: Lineage, backup: Backup, disk_name: str) -> list[Link]:
    links: list[Link] = []
    current: Backup | None = backup
    while current is not None:
        disk = next((d for d in current.disks if d.name == disk_name and d.backup), None)
        if disk is None:
            raise _broken(disk_name, current, "did not back this disk up")
        if current.status != BackupStatus.SUCCEEDED:
            raise ChainBroken(f"disk {disk_name}: backup {current.id} is {current.status.value}")
        if current.verification_status == VERIFICATION_CORRUPT:
            raise ChainBroken(
                f"disk {disk_name}: backup {current.id} is corrupt: {current.verification_detail}",
                disk=disk_name,
            )
        if backup.mode == "push" and current.mode != "push":
            raise _broken(disk_name, current, "is a pull backup: its data is with its client")
        if current.mode == "push" and not (disk.target and Path(disk.target).is_file()):
            raise ChainBroken(
                f"disk {disk_name}: file {disk.target} of backup {current.id} is missing",
                disk=disk_name,
            )
        links.append(_link(current, disk))
        if disk.backupmode != "incremental":
            return links[::-1]
        if current.parent_backup_id is None:
            raise _broken(disk_name, current, "is not a backup this service holds")
        parent = lineage.get(current.parent_backup_id)
        if parent is None:
            raise _broken(disk_name, current, "was deleted")
        current = parent
    raise AssertionError("unreachable")  # the loop returns or raises


async def chains(session: AsyncSession, backup: Backup) -> dict[str, list[Link]]:
    lineage = await _lineage(session, backup)
    return {d.name: _disk_chain(lineage, backup, d.name) for d in backup.disks if d.backup}


async def dependents(session: AsyncSession, backup_id: uuid.UUID) -> list[uuid.UUID]:
    """Every backup whose chains run through this one, nearest first."""
    found: list[uuid.UUID] = []
    frontier = [backup_id]
    while frontier:
        children = list(
            await session.scalars(select(Backup.id).where(Backup.parent_backup_id.in_(frontier)))
        )
        found.extend(children)
        frontier = children
    return found


async def recorded_images(
    session: AsyncSession, backup: Backup, disk_name: str, root: Path
) -> list[images.Image]:
    """The disk's chain (oldest first) as the service recorded it, each file
    confined to the backup root now, at the moment of use, with its format."""
    links = await disk_chain(session, backup, disk_name)
    for link in links:
        confine(link.file or "", root, what=f"disk {disk_name}: backup file")
    return [images.Image(link.file or "", link.format or "") for link in links]
