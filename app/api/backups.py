from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.api import examples, idempotency
from app.api.deps import (
    AdminDep,
    HostsDep,
    OperateDep,
    ReadDep,
    SessionDep,
    SettingsDep,
    StateDep,
)
from app.api.idempotency import IdempotencyKeyHeader
from app.api.params import DomainPath, DomainQuery, HostPath, HostQuery
from app.api.problems import problem_responses
from app.api.responses import accepted
from app.api.routing import AuthFirstRoute
from app.api.state import AppState
from app.backups import service
from app.backups.schemas import BackupCreate, BackupList, BackupOut, ChainOut
from app.errors import (
    BackupNotFound,
    BaseCheckpointMissing,
    ChainBroken,
    CheckpointNotFound,
    DomainNotFound,
    DomainNotRunning,
    HostNotFound,
    HostUnreachable,
    HypervisorError,
    HypervisorInvalidState,
    HypervisorUnsupported,
    IdempotencyConflict,
    IdempotencyInProgress,
    InsufficientStorage,
    InvalidRequest,
    InvalidState,
    LimitReached,
    PathNotAllowed,
    UnknownDisk,
)

router = APIRouter(tags=["backups"], route_class=AuthFirstRoute)
StatusFilter = Literal[
    "queued", "starting", "running", "ready", "finishing", "succeeded", "failed", "cancelled"
]


def _accepted(state: AppState, session: AsyncSession, backup: BackupOut) -> JSONResponse:
    return accepted(state, session, backup, f"/v1/backups/{backup.id}")


@router.post(
    "/v1/hosts/{host}/domains/{domain}/backups",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BackupOut,
    responses=problem_responses(
        HostNotFound,
        DomainNotFound,
        CheckpointNotFound,
        BaseCheckpointMissing,
        DomainNotRunning,
        ChainBroken,
        InvalidState,
        InvalidRequest,
        UnknownDisk,
        PathNotAllowed,
        IdempotencyConflict,
        IdempotencyInProgress,
        HypervisorError,
        HypervisorUnsupported,
        HypervisorInvalidState,
        HostUnreachable,
        LimitReached,
        InsufficientStorage,
    )
    | examples.answer(202, examples.BACKUP_OUT),
    description="Starts a backup: validated against live libvirt, planned, and queued; a "
    "worker runs it. A second backup of a domain waits as `queued` until the first ends. "
    "The same `Idempotency-Key` and body within 24 h returns the first response again. "
    "Limits (settings): a domain or a host with its most `queued` backups is 429 "
    "`limit-reached` with `Retry-After`; `ttl_seconds` above `MAX_PULL_TTL_SECONDS` is 422; "
    "a `tcp` export off loopback needs `tls` unless `ALLOW_PLAIN_TCP_EXPORTS` (else 422).",
    summary="Start a backup",
)
async def start_backup(
    host: HostPath,
    domain: DomainPath,
    body: Annotated[BackupCreate, Body(openapi_examples=examples.BACKUP_CREATE)],
    request: Request,
    principal: OperateDep,
    hosts: HostsDep,
    settings: SettingsDep,
    session: SessionDep,
    state: StateDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    async def start() -> JSONResponse:
        backup = await service.create_backup(
            session, hosts, settings, host=host, domain_ref=domain, body=body
        )
        return _accepted(state, session, service.backup_out(backup))

    return await idempotency.respond_once(
        session, request, body, principal=principal, key=idempotency_key, make=start
    )


@router.get(
    "/v1/backups",
    responses=problem_responses(InvalidRequest),
    description="Newest first. `cursor` is opaque and keyset-based: pages stay stable while "
    "backups are added.",
    summary="List backups",
)
async def list_backups(
    _: ReadDep,
    session: SessionDep,
    host: HostQuery = None,
    domain: DomainQuery = None,
    status_filter: Annotated[StatusFilter | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_-]+$")] = None,
) -> BackupList:
    filters = service.BackupFilters(host=host, domain=domain, status=status_filter)
    return await service.list_backups(session, filters=filters, limit=limit, cursor=cursor)


@router.get(
    "/v1/backups/{backup_id}", responses=problem_responses(BackupNotFound), summary="Get a backup"
)
async def get_backup(backup_id: uuid.UUID, _: ReadDep, session: SessionDep) -> BackupOut:
    return service.backup_out(await service.get_backup(session, backup_id))


@router.post(
    "/v1/backups/{backup_id}/finish",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BackupOut,
    responses=problem_responses(BackupNotFound, InvalidState),
    description="Pull only, in `ready`: the client has read what it needs; the service ends "
    "the libvirt job and the backup becomes `succeeded`. Else 409 `invalid-state`.",
    summary="Finish a pull backup",
)
async def finish_backup(
    backup_id: uuid.UUID, _: OperateDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    backup = await service.request_finish(session, backup_id)
    return _accepted(state, session, service.backup_out(backup))


@router.post(
    "/v1/backups/{backup_id}/verify",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BackupOut,
    responses=problem_responses(BackupNotFound, InvalidState),
    description="Succeeded push backups only (else 409 `invalid-state`): a worker re-reads "
    "the backup's chain, `qemu-img check` of each file and then the content digest against "
    "the one recorded when it completed (`verify: true`; without one, the digest is recorded "
    "now). `verification.status` goes `running`, then `ok` or `corrupt`; a corrupt backup "
    "is never a base, and the chains through it answer 409 `chain-broken`.",
    summary="Verify a backup's files",
)
async def verify_backup(
    backup_id: uuid.UUID, _: OperateDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    backup = await service.request_verification(session, backup_id)
    return _accepted(state, session, service.backup_out(backup))


@router.post(
    "/v1/backups/{backup_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BackupOut,
    responses=problem_responses(BackupNotFound, InvalidState),
    description="A `queued` backup is cancelled at once; an active one has its libvirt job "
    "aborted, then becomes `cancelled`. A terminal one: 409 `invalid-state`.",
    summary="Cancel a backup",
)
async def cancel_backup(
    backup_id: uuid.UUID, _: OperateDep, session: SessionDep, state: StateDep
) -> JSONResponse:
    backup = await service.request_cancel(session, backup_id)
    return _accepted(state, session, service.backup_out(backup))


@router.get(
    "/v1/backups/{backup_id}/chain",
    responses=problem_responses(BackupNotFound, ChainBroken),
    description="Each disk's links from its full backup to this one, oldest first. For push "
    "backups the files form a qcow2 backing chain: the newest opens on its own and reads the "
    "disk as it was at this backup. 409 `chain-broken` names the first missing link (a "
    "deleted file counts).",
    summary="Get a backup's chain",
)
async def get_chain(backup_id: uuid.UUID, _: ReadDep, session: SessionDep) -> ChainOut:
    return await service.chain_of(session, backup_id)


@router.delete(
    "/v1/backups/{backup_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(BackupNotFound, InvalidState),
    description="Deletes a terminal backup, the files it made (never a `reuse_external` file "
    "nor another backup's) and its restores with their files. 409 `invalid-state` while it "
    "is active, while one of its restores runs, or while a later backup's chain needs it, "
    "unless `cascade=true`, which deletes those later backups too.",
    summary="Delete a backup",
)
async def delete_backup(
    backup_id: uuid.UUID,
    _: AdminDep,
    settings: SettingsDep,
    session: SessionDep,
    cascade: bool = False,
) -> None:
    await service.delete_backup(session, backup_id, cascade=cascade, settings=settings)
