"""Choosing the base of an incremental: the newest checkpoint made by a
succeeded backup, present in libvirt, and for push the head of a push chain
whose every file is still there."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.backups.chain import chains
from app.backups.planner import Base
from app.checkpoints import repository
from app.checkpoints.reconcile import reconcile
from app.db.models import Backup, BackupStatus, Checkpoint
from app.errors import BaseCheckpointMissing, ChainBroken
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
            Backup.status == BackupStatus.SUCCEEDED,
        )
        .order_by(Checkpoint.created_at.desc(), Checkpoint.id.desc())
        .limit(1)
    )
    if mode == "push":
        # A pull backup's data is with its client: a push chain cannot build on it.
        query = query.where(Backup.mode == "push")
    return (await session.scalars(query)).first()


async def _check_push_chain(session: AsyncSession, backup_id: uuid.UUID | None) -> None:
    """Raises ChainBroken unless the base backup's every chain opens."""
    if backup_id is None:
        raise ChainBroken("the base checkpoint was not made by a backup this service holds")
    query = select(Backup).options(selectinload(Backup.disks)).where(Backup.id == backup_id)
    base = (await session.scalars(query)).one()
    await chains(session, base)


async def _named_base(
    session: AsyncSession, hypervisor: Hypervisor, domain: DomainInfo, name: str, mode: str
) -> Base:
    row = await repository.checkpoint(session, hypervisor.name, domain.uuid, name)
    if row is not None and row.state == "broken":
        raise ChainBroken(f"checkpoint {name} is broken: {row.state_reason}")
    parent = row.backup_id if row is not None else None
    if mode == "push":
        await _check_push_chain(session, parent)
    return Base(name, parent)


async def choose_base(
    session: AsyncSession,
    hypervisor: Hypervisor,
    domain: DomainInfo,
    *,
    kind: str,
    named: str | None,
    mode: str,
    provisional: bool = False,
) -> Base:
    """`provisional`: the choice is made again when the backup starts (`auto`), so
    look without repairing anything now (nothing written, nothing to race)."""
    if kind == "full":
        return Base(None)
    # Repair what can be repaired first (lost metadata, outside checkpoints, broken
    # bitmaps), so the choice below sees the lineage as it really is.
    await reconcile(session, hypervisor, domain, dry_run=provisional)
    in_libvirt = {cp.name for cp in await hypervisor.list_checkpoints(domain.uuid)}
    if named is not None:
        if named not in in_libvirt:
            raise BaseCheckpointMissing(f"checkpoint {named} does not exist on {domain.name}")
        return await _named_base(session, hypervisor, domain, named, mode)
    newest = await _newest_good(session, hypervisor.name, domain.uuid, mode)
    try:
        if newest is None:
            raise ChainBroken(f"no checkpoint of a succeeded {mode} backup of {domain.name}")
        if newest.state != "ok":
            raise ChainBroken(f"checkpoint {newest.name} is {newest.state}: {newest.state_reason}")
        if newest.name not in in_libvirt:
            raise ChainBroken(f"checkpoint {newest.name} is missing from libvirt")
        if mode == "push":
            await _check_push_chain(session, newest.backup_id)
    except ChainBroken as broken:
        if kind == "incremental":
            raise BaseCheckpointMissing(
                f"no base for an incremental backup: {broken.detail}"
            ) from broken
        return Base(None, fallback_reason=broken.detail)
    return Base(newest.name, newest.backup_id)
