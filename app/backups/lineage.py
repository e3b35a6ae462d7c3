"""Choosing the base of an incremental: the newest checkpoint made by a
succeeded backup, still present in libvirt, and for push held in a push chain."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.backups.planner import Base
from app.db.models import Backup, BackupStatus, Checkpoint
from app.errors import BaseCheckpointMissing
from app.hypervisor import DomainInfo, Hypervisor


async def _newest_good(
    session: AsyncSession, host: str, domain_uuid: str, mode: str
) -> Checkpoint | None:
    query = (
        select(Checkpoint)
        .join(Backup, Backup.id == Checkpoint.backup_id)
        .where(
            Checkpoint.host == host,
            Checkpoint.domain_uuid == domain_uuid,
            Checkpoint.state == "ok",
            Backup.status == BackupStatus.SUCCEEDED,
        )
        .order_by(Checkpoint.created_at.desc(), Checkpoint.id.desc())
        .limit(1)
    )
    if mode == "push":
        # A pull backup's data is with its client: a push chain cannot build on it.
        query = query.where(Backup.mode == "push")
    return (await session.scalars(query)).first()


async def choose_base(
    session: AsyncSession,
    hypervisor: Hypervisor,
    domain: DomainInfo,
    *,
    kind: str,
    named: str | None,
    mode: str,
) -> Base:
    if kind == "full":
        return Base(None)
    in_libvirt = {cp.name for cp in await hypervisor.list_checkpoints(domain.uuid)}
    if named is not None:
        if named not in in_libvirt:
            raise BaseCheckpointMissing(f"checkpoint {named} does not exist on {domain.name}")
        return Base(named)
    newest = await _newest_good(session, hypervisor.name, domain.uuid, mode)
    reason = None
    if newest is None:
        reason = f"no checkpoint of a succeeded {mode} backup of {domain.name}"
    elif newest.name not in in_libvirt:
        reason = f"checkpoint {newest.name} is missing from libvirt"
    if reason is None and newest is not None:
        return Base(newest.name)
    if kind == "incremental":
        raise BaseCheckpointMissing(f"no base for an incremental backup: {reason}")
    return Base(None, fallback_reason=reason)
