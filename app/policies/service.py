"""Policies from the API side: create, read, change, delete, and their runs."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.backups.schemas import DomainRef
from app.db import keyset
from app.db.base import utcnow
from app.db.models import Policy, PolicyRun
from app.errors import InvalidState, PolicyNotFound
from app.hosts.registry import HostRegistry
from app.policies.schedule import next_run
from app.policies.schemas import (
    FullEvery,
    PolicyBackup,
    PolicyCreate,
    PolicyOut,
    PolicyRunList,
    PolicyRunOut,
    PolicyUpdate,
    Retention,
    Schedule,
    Selector,
)


def policy_out(policy: Policy) -> PolicyOut:
    return PolicyOut(
        id=policy.id,
        name=policy.name,
        enabled=policy.enabled,
        selector=Selector(host=policy.host, domains=policy.domains, exclude=policy.exclude),
        schedule=Schedule(cron=policy.cron, timezone=policy.timezone),
        backup=PolicyBackup.model_validate(policy.backup),
        full_every=None if policy.full_every is None else FullEvery(**policy.full_every),
        retention=None if policy.retention is None else Retention(**policy.retention),
        verify=policy.verify,
        next_run_at=policy.next_run_at,
        created_at=policy.created_at,
    )


def run_out(run: PolicyRun) -> PolicyRunOut:
    return PolicyRunOut(
        id=run.id,
        domain=DomainRef(name=run.domain_name, uuid=run.domain_uuid),
        scheduled_for=run.scheduled_for,
        backup_id=run.backup_id,
        skipped=run.skipped,
    )


def _apply(policy: Policy, body: PolicyCreate | PolicyUpdate, now: datetime) -> None:
    """Copy what the body gives onto the row; a new schedule or a re-enabled
    policy runs next at its next slot from now, not at a slot missed meanwhile."""
    given = body.model_fields_set
    if "name" in given and body.name is not None:
        policy.name = body.name
    if "enabled" in given and body.enabled is not None:
        policy.enabled = body.enabled
    if "selector" in given and body.selector is not None:
        policy.host = body.selector.host
        policy.domains = body.selector.domains
        policy.exclude = body.selector.exclude
    if "schedule" in given and body.schedule is not None:
        policy.cron, policy.timezone = body.schedule.cron, body.schedule.timezone
    if "backup" in given and body.backup is not None:
        policy.backup = body.backup.model_dump(mode="json", exclude_none=True)
    if "full_every" in given:
        policy.full_every = (
            body.full_every.model_dump(exclude_none=True) if body.full_every else None
        )
    if "retention" in given:
        policy.retention = body.retention.model_dump(exclude_none=True) if body.retention else None
    if "verify" in given and body.verify is not None:
        policy.verify = body.verify
    policy.next_run_at = next_run(policy.cron, policy.timezone, now) if policy.enabled else None


def _stored(part: FullEvery | Retention | None) -> dict[str, int] | None:
    return None if part is None else part.model_dump(exclude_none=True)


async def create_policy(session: AsyncSession, hosts: HostRegistry, body: PolicyCreate) -> Policy:
    hosts.get(body.selector.host)  # 404 for a host that is not registered
    policy = Policy(id=uuid.uuid4(), created_at=utcnow(), exclude=[], backup={})
    body.model_fields_set.update(PolicyCreate.model_fields)  # every field, defaults too
    _apply(policy, body, utcnow())
    session.add(policy)
    await _flush_named(session, policy.name)
    return policy


async def update_policy(
    session: AsyncSession, hosts: HostRegistry, policy_id: uuid.UUID, body: PolicyUpdate
) -> Policy:
    policy = await get_policy(session, policy_id)
    if body.selector is not None:
        hosts.get(body.selector.host)
    _apply(policy, body, utcnow())
    await _flush_named(session, policy.name)
    return policy


async def _flush_named(session: AsyncSession, name: str) -> None:
    try:
        await session.flush()
    except IntegrityError as error:
        raise InvalidState(f"a policy named {name} exists already") from error


async def get_policy(session: AsyncSession, policy_id: uuid.UUID) -> Policy:
    policy = await session.get(Policy, policy_id)
    if policy is None:
        raise PolicyNotFound(f"policy {policy_id} does not exist")
    return policy


async def list_policies(session: AsyncSession) -> list[Policy]:
    return list(await session.scalars(select(Policy).order_by(Policy.name)))


async def delete_policy(session: AsyncSession, policy_id: uuid.UUID) -> None:
    """Its runs go with it; its backups stay (they are no longer pruned by it)."""
    await session.delete(await get_policy(session, policy_id))
    await session.flush()


async def list_runs(
    session: AsyncSession, policy_id: uuid.UUID, *, limit: int, cursor: str | None
) -> PolicyRunList:
    await get_policy(session, policy_id)
    query = (
        select(PolicyRun)
        .where(PolicyRun.policy_id == policy_id)
        .order_by(PolicyRun.created_at.desc(), PolicyRun.id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        created_at, run_id = keyset.decode(cursor)
        query = query.where(
            (PolicyRun.created_at < created_at)
            | ((PolicyRun.created_at == created_at) & (PolicyRun.id < run_id))
        )
    rows = list(await session.scalars(query))
    page = rows[:limit]
    more = len(rows) > limit
    return PolicyRunList(
        items=[run_out(run) for run in page],
        next_cursor=keyset.encode(page[-1].created_at, page[-1].id) if more else None,
    )
