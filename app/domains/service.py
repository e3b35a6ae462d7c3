"""Domains are read live from libvirt; their last backup from the database."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Backup
from app.domains.schemas import DomainOut, LastBackup
from app.hypervisor import Hypervisor


async def _last_backups(
    session: AsyncSession, host: str, domain_uuids: list[str]
) -> dict[str, LastBackup]:
    if not domain_uuids:
        return {}
    newest = (
        select(Backup.domain_uuid, func.max(Backup.created_at).label("created_at"))
        .where(Backup.host == host, Backup.domain_uuid.in_(domain_uuids))
        .group_by(Backup.domain_uuid)
        .subquery()
    )
    rows = await session.execute(
        select(Backup.domain_uuid, Backup.id, Backup.status, Backup.finished_at)
        .join(
            newest,
            (Backup.domain_uuid == newest.c.domain_uuid)
            & (Backup.created_at == newest.c.created_at),
        )
        .where(Backup.host == host)
    )
    return {
        row.domain_uuid: LastBackup(id=row.id, status=row.status, finished_at=row.finished_at)
        for row in rows
    }


async def list_domains(session: AsyncSession, host: Hypervisor) -> list[DomainOut]:
    domains = await host.list_domains()
    last = await _last_backups(session, host.name, [d.uuid for d in domains])
    return [DomainOut.of(d, last.get(d.uuid)) for d in domains]


async def get_domain(session: AsyncSession, host: Hypervisor, ref: str) -> DomainOut:
    domain = await host.get_domain(ref)
    last = await _last_backups(session, host.name, [domain.uuid])
    return DomainOut.of(domain, last.get(domain.uuid))
