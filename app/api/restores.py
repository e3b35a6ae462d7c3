"""Restores of push backups (API.md, Lineage and restore)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Request, status
from fastapi.responses import JSONResponse

from app.api import examples, idempotency
from app.api.deps import AdminDep, OperateDep, ReadDep, SessionDep, SettingsDep, StateDep
from app.api.idempotency import IdempotencyKeyHeader
from app.api.problems import problem_responses
from app.api.responses import accepted
from app.api.routing import AuthFirstRoute
from app.errors import (
    BackupNotFound,
    ChainBroken,
    IdempotencyConflict,
    IdempotencyInProgress,
    InsufficientStorage,
    InvalidState,
    LimitReached,
    RestoreNotFound,
    UnknownDisk,
)
from app.restores import service
from app.restores.schemas import RestoreCreate, RestoreOut

router = APIRouter(tags=["restores"], route_class=AuthFirstRoute)


@router.post(
    "/v1/backups/{backup_id}/restores",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RestoreOut,
    responses=problem_responses(
        BackupNotFound,
        InvalidState,
        ChainBroken,
        UnknownDisk,
        IdempotencyConflict,
        IdempotencyInProgress,
        LimitReached,
        InsufficientStorage,
    ),
    description="Writes one standalone image per disk (default: every disk the backup holds), "
    "the disk as it was at this backup, under the restore root; run by the worker pool. "
    "Succeeded push backups only (409 `invalid-state`); 409 `chain-broken` when a file of the "
    "chain is gone or does not open as recorded. 429 `limit-reached` while "
    "`VMBACKUP_MAX_ACTIVE_RESTORES` restores are queued or running; 507 `insufficient-storage` "
    "when the restore root has less room than the disks' capacity (plus the reserve).",
    summary="Restore a backup to images",
)
async def create_restore(
    backup_id: uuid.UUID,
    body: Annotated[RestoreCreate, Body(openapi_examples=examples.RESTORE_CREATE)],
    request: Request,
    principal: OperateDep,
    settings: SettingsDep,
    session: SessionDep,
    state: StateDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    async def start() -> JSONResponse:
        restore = await service.create_restore(session, settings, backup_id, body)
        return accepted(state, session, service.restore_out(restore), f"/v1/restores/{restore.id}")

    return await idempotency.respond_once(
        session, request, body, principal=principal, key=idempotency_key, make=start
    )


@router.get(
    "/v1/restores/{restore_id}",
    responses=problem_responses(RestoreNotFound),
    summary="Get a restore",
)
async def get_restore(restore_id: uuid.UUID, _: ReadDep, session: SessionDep) -> RestoreOut:
    return service.restore_out(await service.get_restore(session, restore_id))


@router.delete(
    "/v1/restores/{restore_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(RestoreNotFound, InvalidState),
    description="Deletes a terminal (succeeded or failed) restore and the image files it "
    "wrote. 409 `invalid-state` while it is queued or running.",
    summary="Delete a restore",
)
async def delete_restore(
    restore_id: uuid.UUID, _: AdminDep, settings: SettingsDep, session: SessionDep
) -> None:
    await service.delete_restore(session, settings, restore_id)
