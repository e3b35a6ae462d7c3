"""Policies: scheduled backups of a selection of domains (API.md, Policies)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, status
from fastapi.responses import JSONResponse

from app.api import examples, idempotency
from app.api.deps import AdminDep, HostsDep, OperateDep, ReadDep, SessionDep, SettingsDep, StateDep
from app.api.idempotency import IdempotencyKeyHeader
from app.api.problems import problem_responses
from app.api.responses import accepted
from app.api.routing import AuthFirstRoute
from app.db.base import utcnow
from app.errors import (
    HostNotFound,
    IdempotencyConflict,
    IdempotencyInProgress,
    InvalidRequest,
    InvalidState,
    PolicyNotFound,
)
from app.policies import scheduler, service
from app.policies.schemas import (
    PolicyCreate,
    PolicyList,
    PolicyOut,
    PolicyRunList,
    PolicyUpdate,
)

router = APIRouter(prefix="/v1/policies", tags=["policies"], route_class=AuthFirstRoute)
PolicyId = uuid.UUID


@router.get("", responses=problem_responses(), summary="List policies")
async def list_policies(_: ReadDep, session: SessionDep) -> PolicyList:
    return PolicyList(items=[service.policy_out(p) for p in await service.list_policies(session)])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PolicyOut,
    responses=problem_responses(
        HostNotFound, InvalidState, InvalidRequest, IdempotencyConflict, IdempotencyInProgress
    )
    | examples.answer(201, examples.POLICY_OUT),
    summary="Create a policy",
    description="`schedule.cron` has five fields, or six with seconds last; it is read in "
    "`schedule.timezone`. Each run backs up every selected domain with `kind: auto` (a full "
    "backup once `full_every` says so). 404 for an unknown host, 409 when the name is taken. "
    "The same `Idempotency-Key` and body within 24 h returns the first response again.",
)
async def create_policy(
    body: Annotated[PolicyCreate, Body(openapi_examples=examples.POLICY_CREATE)],
    request: Request,
    principal: AdminDep,
    hosts: HostsDep,
    session: SessionDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    async def create() -> JSONResponse:
        policy = await service.create_policy(session, hosts, body)
        return JSONResponse(
            service.policy_out(policy).model_dump(mode="json"),
            status.HTTP_201_CREATED,
            headers={"Location": f"/v1/policies/{policy.id}"},
        )

    return await idempotency.respond_once(
        session, request, body, principal=principal, key=idempotency_key, make=create
    )


@router.get("/{policy_id}", responses=problem_responses(PolicyNotFound), summary="Get a policy")
async def get_policy(policy_id: PolicyId, _: ReadDep, session: SessionDep) -> PolicyOut:
    return service.policy_out(await service.get_policy(session, policy_id))


@router.patch(
    "/{policy_id}",
    responses=problem_responses(PolicyNotFound, HostNotFound, InvalidState, InvalidRequest),
    summary="Change a policy",
    description="The fields given replace the policy's. A new schedule, or a policy "
    "enabled again, runs next at its next slot from now.",
)
async def update_policy(
    policy_id: PolicyId,
    body: Annotated[PolicyUpdate, Body(openapi_examples=examples.POLICY_UPDATE)],
    _: AdminDep,
    hosts: HostsDep,
    session: SessionDep,
) -> PolicyOut:
    return service.policy_out(await service.update_policy(session, hosts, policy_id, body))


@router.delete(
    "/{policy_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(PolicyNotFound),
    summary="Delete a policy",
    description="Its runs are deleted; the backups it made stay.",
)
async def delete_policy(policy_id: PolicyId, _: AdminDep, session: SessionDep) -> None:
    await service.delete_policy(session, policy_id)


@router.post(
    "/{policy_id}/run",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PolicyRunList,
    responses=problem_responses(
        PolicyNotFound, InvalidRequest, IdempotencyConflict, IdempotencyInProgress
    ),
    summary="Run a policy now",
    description="One run now, outside the schedule: a backup queued per selected domain, "
    "or a skipped run with the reason. With an `Idempotency-Key`, a retry within 24 h "
    "returns the first answer instead of running again.",
)
async def run_policy(
    policy_id: PolicyId,
    request: Request,
    principal: OperateDep,
    hosts: HostsDep,
    settings: SettingsDep,
    session: SessionDep,
    state: StateDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    async def run() -> JSONResponse:
        policy = await service.get_policy(session, policy_id)
        runs = await scheduler.run_policy(
            state.database, hosts, settings, policy, scheduled_for=utcnow()
        )
        body = PolicyRunList(items=[service.run_out(r) for r in runs], next_cursor=None)
        return accepted(state, session, body, f"/v1/policies/{policy_id}/runs")

    return await idempotency.respond_once(
        session, request, None, principal=principal, key=idempotency_key, make=run
    )


@router.get(
    "/{policy_id}/runs",
    responses=problem_responses(PolicyNotFound, InvalidRequest),
    summary="List a policy's runs",
    description="Newest first, each with the backup it made or why it made none.",
)
async def list_runs(
    policy_id: PolicyId,
    _: ReadDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> PolicyRunList:
    return await service.list_runs(session, policy_id, limit=limit, cursor=cursor)
