from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.api import idempotency
from app.api.deps import HostsDep, OperateDep, ReadDep, SessionDep, SettingsDep, StateDep
from app.api.problems import problem_responses
from app.api.state import AppState
from app.backups import service
from app.backups.schemas import BackupCreate, BackupList, BackupOut

router = APIRouter(tags=["backups"])
IdempotencyKeyHeader = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]
StatusFilter = Literal[
    "queued", "starting", "running", "ready", "finishing", "succeeded", "failed", "cancelled"
]


def _accepted(state: AppState, session: AsyncSession, backup: BackupOut) -> JSONResponse:
    """202 with `Location`; the worker pool looks at it as soon as it is committed."""
    if state.pool is not None:
        state.pool.wake_after_commit(session)
    return JSONResponse(
        backup.model_dump(mode="json"),
        status_code=status.HTTP_202_ACCEPTED,
        headers={"Location": f"/v1/backups/{backup.id}"},
    )


@router.post(
    "/v1/hosts/{host}/domains/{domain}/backups",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BackupOut,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
    description="Starts a backup: validated against live libvirt, planned, and queued; a "
    "worker runs it. A second backup of a domain waits as `queued` until the first ends. "
    "The same `Idempotency-Key` and body within 24 h returns the first response again.",
)
async def start_backup(
    host: str,
    domain: str,
    body: BackupCreate,
    request: Request,
    principal: OperateDep,
    hosts: HostsDep,
    settings: SettingsDep,
    session: SessionDep,
    state: StateDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    request_hash = idempotency.fingerprint("POST", request.url.path, body)
    if idempotency_key:
        replayed = await idempotency.replay(session, principal.name, idempotency_key, request_hash)
        if replayed is not None:
            return replayed
    backup = await service.create_backup(
        session, hosts, settings, host=host, domain_ref=domain, body=body
    )
    out = service.backup_out(backup)
    response = _accepted(state, session, out)
    if idempotency_key:
        await idempotency.remember(
            session,
            principal=principal.name,
            key=idempotency_key,
            request_hash=request_hash,
            status_code=response.status_code,
            body=out.model_dump(mode="json"),
            location=response.headers["Location"],
        )
    return response


@router.get(
    "/v1/backups",
    responses=problem_responses(401, 403, 422),
    description="Newest first. `cursor` is opaque and keyset-based: pages stay stable while "
    "backups are added.",
)
async def list_backups(
    _: ReadDep,
    session: SessionDep,
    host: str | None = None,
    domain: Annotated[str | None, Query(description="domain name or UUID")] = None,
    status: StatusFilter | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> BackupList:
    filters = service.BackupFilters(host=host, domain=domain, status=status)
    return await service.list_backups(session, filters=filters, limit=limit, cursor=cursor)


@router.get("/v1/backups/{backup_id}", responses=problem_responses(401, 403, 404, 422))
async def get_backup(backup_id: uuid.UUID, _: ReadDep, session: SessionDep) -> BackupOut:
    return service.backup_out(await service.get_backup(session, backup_id))


@router.post(
    "/v1/backups/{backup_id}/finish",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BackupOut,
    responses=problem_responses(401, 403, 404, 409),
    description="Pull only, in `ready`: the client has read what it needs; the service ends "
    "the libvirt job and the backup becomes `succeeded`. Else 409 `invalid-state`.",
)
async def finish_backup(
    backup_id: uuid.UUID, _: OperateDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    backup = await service.request_finish(session, backup_id)
    return _accepted(state, session, service.backup_out(backup))


@router.post(
    "/v1/backups/{backup_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BackupOut,
    responses=problem_responses(401, 403, 404, 409),
    description="A `queued` backup is cancelled at once; an active one has its libvirt job "
    "aborted, then becomes `cancelled`. A terminal one: 409 `invalid-state`.",
)
async def cancel_backup(
    backup_id: uuid.UUID, _: OperateDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    backup = await service.request_cancel(session, backup_id)
    return _accepted(state, session, service.backup_out(backup))
