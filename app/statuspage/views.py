"""What the status page shows, gathered through the slices' own services."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.backups import service as backups
from app.backups.schemas import BackupOut, ChainOut
from app.backups.service import BackupFilters
from app.checkpoints import service as checkpoints
from app.checkpoints.schemas import CheckpointOut
from app.db.models import ACTIVE_STATUSES, Backup, BackupStatus
from app.domains import service as domains
from app.domains.schemas import DomainOut
from app.errors import AppError, ChainBroken
from app.hosts.registry import HostRegistry
from app.hosts.schemas import HostOut
from app.hosts.service import host_out
from app.hypervisor import Hypervisor

RECENT_FAILURES = 10
DOMAIN_BACKUPS = 25
WAITING_OR_ACTIVE = (BackupStatus.QUEUED, *ACTIVE_STATUSES)


@dataclass(frozen=True)
class DomainRow:
    domain: DomainOut
    last_success: datetime | None  # the RPO is measured from here


@dataclass(frozen=True)
class HostSection:
    host: HostOut
    domains: list[DomainRow]
    error: str | None  # why its domains cannot be listed now


@dataclass(frozen=True)
class Overview:
    hosts: list[HostSection]
    active: list[BackupOut]
    failures: list[BackupOut]


@dataclass(frozen=True)
class CheckpointRow:
    checkpoint: CheckpointOut
    depth: int  # parents first, children indented under them


@dataclass(frozen=True)
class DomainPage:
    host: str
    domain: DomainOut
    last_success: datetime | None
    active: list[BackupOut]
    backups: list[BackupOut]
    checkpoints: list[CheckpointRow]
    newest: BackupOut | None  # the newest succeeded backup, whose chains are shown
    chains: ChainOut | None
    chain_error: str | None


async def _last_successes(session: AsyncSession) -> dict[tuple[str, str], datetime]:
    rows = await session.execute(
        select(Backup.host, Backup.domain_uuid, func.max(Backup.finished_at))
        .where(Backup.status == BackupStatus.SUCCEEDED)
        .group_by(Backup.host, Backup.domain_uuid)
    )
    return {(host, domain): at for host, domain, at in rows if at is not None}


async def _active(
    session: AsyncSession, *, host: str | None = None, domain_uuid: str | None = None
) -> list[BackupOut]:
    query = (
        select(Backup)
        .options(selectinload(Backup.disks))
        .where(Backup.status.in_(WAITING_OR_ACTIVE))
        .order_by(Backup.created_at, Backup.id)
    )
    if host is not None:
        query = query.where(Backup.host == host)
    if domain_uuid is not None:
        query = query.where(Backup.domain_uuid == domain_uuid)
    return [backups.backup_out(b) for b in (await session.scalars(query)).all()]


async def _host_section(
    session: AsyncSession, hypervisor: Hypervisor, successes: dict[tuple[str, str], datetime]
) -> HostSection:
    host = host_out(hypervisor)
    if host.state != "connected":
        return HostSection(host, [], host.error or "disconnected")
    try:
        found = await domains.list_domains(session, hypervisor)
    except AppError as error:  # the host went away since its status was read
        return HostSection(host, [], error.detail)
    rows = [DomainRow(d, successes.get((host.name, d.uuid))) for d in found]
    return HostSection(host, sorted(rows, key=lambda row: row.domain.name), None)


async def overview(session: AsyncSession, hosts: HostRegistry) -> Overview:
    successes = await _last_successes(session)
    sections = [
        await _host_section(session, hypervisor, successes)
        for hypervisor in sorted(hosts, key=lambda h: h.name)
    ]
    failures = await backups.list_backups(
        session, filters=BackupFilters(status="failed"), limit=RECENT_FAILURES, cursor=None
    )
    return Overview(sections, await _active(session), failures.items)


def _with_depth(items: list[CheckpointOut]) -> list[CheckpointRow]:
    depth: dict[str, int] = {}
    rows = []
    for checkpoint in items:  # parents come before their children
        depth[checkpoint.name] = depth.get(checkpoint.parent or "", -1) + 1
        rows.append(CheckpointRow(checkpoint, depth[checkpoint.name]))
    return rows


async def _chains(
    session: AsyncSession, backup: BackupOut | None
) -> tuple[ChainOut | None, str | None]:
    if backup is None:
        return None, None
    try:
        return await backups.chain_of(session, backup.id), None
    except ChainBroken as error:  # it names the missing link: show it, as the API would
        return None, error.detail


async def domain_page(
    session: AsyncSession, hosts: HostRegistry, host: str, ref: str
) -> DomainPage:
    hypervisor = hosts.get(host)
    domain = await domains.get_domain(session, hypervisor, ref)
    own = BackupFilters(host=host, domain=domain.uuid)
    recent = await backups.list_backups(session, filters=own, limit=DOMAIN_BACKUPS, cursor=None)
    newest = await backups.list_backups(
        session,
        filters=BackupFilters(host=host, domain=domain.uuid, status="succeeded"),
        limit=1,
        cursor=None,
    )
    newest_ok = newest.items[0] if newest.items else None
    chains, chain_error = await _chains(session, newest_ok)
    found = await checkpoints.list_checkpoints(session, hypervisor, domain.uuid)
    return DomainPage(
        host=host,
        domain=domain,
        last_success=newest_ok.finished_at if newest_ok else None,
        active=await _active(session, host=host, domain_uuid=domain.uuid),
        backups=recent.items,
        checkpoints=_with_depth(found.items),
        newest=newest_ok,
        chains=chains,
        chain_error=chain_error,
    )
