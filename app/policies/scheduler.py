"""Runs policies when they are due, inside the worker pool, on every replica.

Each due slot is taken by one guarded UPDATE that moves the policy's
`next_run_at` from the slot it saw to the next one after now: one replica
wins, the others find zero rows. A service that was down for several slots
therefore runs once when it is back, not once per missed slot. Each domain's
run is a `policy_runs` row, unique per (policy, domain, slot), made in the same
transaction as its backup, which goes through the same path as a POSTed one
(`create_backup`: queueing, one active backup per domain, validation).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.backups.service import create_backup
from app.db.base import utcnow
from app.db.models import Backup, BackupStatus, Policy, PolicyRun
from app.db.session import Database
from app.errors import AppError
from app.hosts.registry import HostRegistry
from app.hypervisor import DomainInfo
from app.policies import retention
from app.policies.schedule import next_run
from app.policies.schemas import PolicyBackup
from app.settings import Settings

log = logging.getLogger(__name__)
EVERY_DOMAIN = "*"  # the run row of a selection that could not be listed


async def run_due(
    database: Database, hosts: HostRegistry, settings: Settings, now: datetime | None = None
) -> int:
    """Run every policy whose slot has come; the number of slots this replica took."""
    now = now or utcnow()
    async with database.session_scope() as session:
        due = (
            await session.execute(
                select(Policy.id, Policy.next_run_at).where(
                    Policy.enabled.is_(True), Policy.next_run_at <= now
                )
            )
        ).all()
    taken = 0
    for policy_id, slot in due:
        assert slot is not None  # selected by `next_run_at <= now`
        policy = await _take_slot(database, policy_id, slot, now)
        if policy is not None:
            runs = await run_policy(database, hosts, settings, policy, scheduled_for=slot)
            for domain_uuid in {run.domain_uuid for run in runs} - {EVERY_DOMAIN}:
                await retention.apply(database, settings, policy.id, domain_uuid)
            taken += 1
    return taken


async def _take_slot(
    database: Database, policy_id: uuid.UUID, slot: datetime, now: datetime
) -> Policy | None:
    async with database.session_scope() as session:
        policy = await session.get(Policy, policy_id)
        if policy is None:
            return None
        moved = await session.execute(
            update(Policy)
            .where(Policy.id == policy_id, Policy.next_run_at == slot)
            .values(next_run_at=next_run(policy.cron, policy.timezone, now))
            .returning(Policy.id)
        )
        return policy if moved.first() is not None else None


async def run_policy(
    database: Database,
    hosts: HostRegistry,
    settings: Settings,
    policy: Policy,
    *,
    scheduled_for: datetime,
) -> list[PolicyRun]:
    """One run of `policy` for each domain it selects, made at once (scheduled
    or asked for); a domain that cannot be backed up is a skipped run with the
    reason."""
    try:
        domains = await hosts.get(policy.host).list_domains()
    except AppError as error:
        log.warning(
            "policy %s: cannot list the domains of %s: %s",
            policy.name,
            policy.host,
            error,
            extra={"policy": policy.name, "host": policy.host},
        )
        return [await _record(database, policy, None, scheduled_for, skipped=error.detail)]
    runs = []
    for selected in _selected(policy, domains):
        if isinstance(selected, str):
            runs.append(await _record(database, policy, None, scheduled_for, skipped=selected))
        else:
            runs.append(await _run_one(database, hosts, settings, policy, selected, scheduled_for))
    return runs


def _selected(policy: Policy, domains: Sequence[DomainInfo]) -> list[DomainInfo | str]:
    """The domains the selector names (by name or UUID), less the excluded ones;
    a named domain that does not exist stands as the reason it is skipped."""
    excluded = set(policy.exclude)
    chosen: list[DomainInfo | str] = []
    for ref in policy.domains if policy.domains is not None else [d.uuid for d in domains]:
        found = next((d for d in domains if ref in (d.name, d.uuid)), None)
        if found is None:
            chosen.append(f"domain {ref} not found on host {policy.host}")
        elif not excluded & {found.name, found.uuid}:
            chosen.append(found)
    return chosen


async def _run_one(
    database: Database,
    hosts: HostRegistry,
    settings: Settings,
    policy: Policy,
    domain: DomainInfo,
    scheduled_for: datetime,
) -> PolicyRun:
    if not domain.active:
        return await _record(
            database, policy, domain, scheduled_for, skipped=f"domain is {domain.state}"
        )
    try:
        async with database.session_scope() as session:
            kind = await _kind(session, policy, domain.uuid)
            body = PolicyBackup.model_validate(policy.backup).request(kind, verify=policy.verify)
            backup = await create_backup(
                session, hosts, settings, host=policy.host, domain_ref=domain.uuid, body=body
            )
            backup.policy_id = policy.id
            run = _run_row(policy, domain, scheduled_for, backup_id=backup.id)
            session.add(run)
        return run
    except AppError as error:
        return await _record(database, policy, domain, scheduled_for, skipped=error.detail)
    except IntegrityError:
        log.info(
            "policy %s: %s at %s ran already",
            policy.name,
            domain.name,
            scheduled_for,
            extra={"policy": policy.name, "host": policy.host, "domain": domain.name},
        )
        return await _existing(database, policy.id, domain.uuid, scheduled_for)


async def _kind(session: AsyncSession, policy: Policy, domain_uuid: str) -> Literal["full", "auto"]:
    """`full_every`: a full backup once the chain since the last full is long
    (or old) enough, so chains stay short; else `auto`."""
    if not policy.full_every:
        return "auto"
    mine = (
        Backup.policy_id == policy.id,
        Backup.domain_uuid == domain_uuid,
        Backup.status == BackupStatus.SUCCEEDED,
    )
    last_full = await session.scalar(
        select(func.max(Backup.created_at)).where(*mine, Backup.kind == "full")
    )
    if last_full is None:
        return "auto"  # the first backup of the chain is full anyway
    if "days" in policy.full_every:
        return (
            "full" if utcnow() - last_full >= timedelta(days=policy.full_every["days"]) else "auto"
        )
    since = await session.scalar(
        select(func.count()).where(
            *mine, Backup.kind == "incremental", Backup.created_at > last_full
        )
    )
    return "full" if (since or 0) >= policy.full_every["incrementals"] else "auto"


def _run_row(
    policy: Policy,
    domain: DomainInfo | None,
    scheduled_for: datetime,
    *,
    backup_id: uuid.UUID | None = None,
    skipped: str | None = None,
) -> PolicyRun:
    return PolicyRun(
        id=uuid.uuid4(),
        policy_id=policy.id,
        domain_uuid=domain.uuid if domain else EVERY_DOMAIN,
        domain_name=domain.name if domain else EVERY_DOMAIN,
        scheduled_for=scheduled_for,
        backup_id=backup_id,
        skipped=skipped,
        created_at=utcnow(),
    )


async def _record(
    database: Database,
    policy: Policy,
    domain: DomainInfo | None,
    scheduled_for: datetime,
    *,
    skipped: str,
) -> PolicyRun:
    log.info(
        "policy %s: skipped %s: %s",
        policy.name,
        domain.name if domain else "run",
        skipped,
        extra={"policy": policy.name, "host": policy.host}
        | ({"domain": domain.name} if domain else {}),
    )
    run = _run_row(policy, domain, scheduled_for, skipped=skipped)
    try:
        async with database.session_scope() as session:
            session.add(run)
    except IntegrityError:
        return await _existing(database, policy.id, run.domain_uuid, scheduled_for)
    return run


async def _existing(
    database: Database, policy_id: uuid.UUID, domain_uuid: str, scheduled_for: datetime
) -> PolicyRun:
    async with database.session_scope() as session:
        found = await session.scalars(
            select(PolicyRun).where(
                PolicyRun.policy_id == policy_id,
                PolicyRun.domain_uuid == domain_uuid,
                PolicyRun.scheduled_for == scheduled_for,
            )
        )
        return found.one()
