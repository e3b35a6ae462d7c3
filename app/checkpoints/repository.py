"""The stored lineage of one domain's checkpoints."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.checkpoints.lineage import parents_first
from app.db.models import TERMINAL_STATUSES, Backup, Checkpoint
from app.hypervisor import CheckpointInfo


async def checkpoints(session: AsyncSession, host: str, domain_uuid: str) -> list[Checkpoint]:
    """The domain's checkpoint rows, parents before children."""
    rows = await session.scalars(
        select(Checkpoint)
        .where(Checkpoint.host == host, Checkpoint.domain_uuid == domain_uuid)
        .order_by(Checkpoint.created_at, Checkpoint.id)
    )
    return parents_first(rows, lambda row: row.name, lambda row: row.parent)


async def checkpoint(
    session: AsyncSession, host: str, domain_uuid: str, name: str
) -> Checkpoint | None:
    found = await session.scalars(
        select(Checkpoint).where(
            Checkpoint.host == host, Checkpoint.domain_uuid == domain_uuid, Checkpoint.name == name
        )
    )
    return found.first()


async def unfinished_backups(
    session: AsyncSession, host: str, domain_uuid: str
) -> Sequence[Backup]:
    """Backups of the domain that still use a checkpoint: as their base, or as the
    one they make (in libvirt from `backupBegin` on, recorded when they succeed)."""
    rows = await session.scalars(
        select(Backup).where(
            Backup.host == host,
            Backup.domain_uuid == domain_uuid,
            Backup.status.not_in(TERMINAL_STATUSES),
        )
    )
    return rows.all()


def new_row(
    host: str, domain_uuid: str, info: CheckpointInfo, backup_id: uuid.UUID | None = None
) -> Checkpoint:
    """A row for a checkpoint libvirt holds, with its redefinable XML."""
    return Checkpoint(
        host=host,
        domain_uuid=domain_uuid,
        name=info.name,
        parent=info.parent,
        created_at=info.created_at,
        description=info.description,
        disks=_disks(info),
        xml=info.xml,
        backup_id=backup_id,
        state="ok",
        in_libvirt=True,
    )


def _disks(info: CheckpointInfo) -> list[dict[str, object]]:
    return [{"name": d.name, "checkpoint": d.checkpoint, "bitmap": d.bitmap} for d in info.disks]


async def record_made_by_backup(
    session: AsyncSession, host: str, domain_uuid: str, info: CheckpointInfo, backup_id: uuid.UUID
) -> None:
    """The checkpoint a succeeded backup made. A reconcile may have imported it
    between backupBegin and now: then the row is claimed, not added twice."""
    row = await checkpoint(session, host, domain_uuid, info.name)
    if row is None:
        session.add(new_row(host, domain_uuid, info, backup_id))
        return
    row.parent, row.xml, row.disks = info.parent, info.xml, _disks(info)
    row.backup_id, row.state, row.state_reason, row.in_libvirt = backup_id, "ok", None, True
