"""Checkpoints of a domain (API.md, Checkpoints)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, status
from fastapi.responses import JSONResponse

from app.api import examples, idempotency
from app.api.deps import AdminDep, HostsDep, OperateDep, ReadDep, SessionDep
from app.api.idempotency import IdempotencyKeyHeader
from app.api.params import CheckpointPath, DomainPath, HostPath
from app.api.problems import problem_responses
from app.api.routing import AuthFirstRoute
from app.checkpoints import service
from app.checkpoints.reconcile import ReconcileResult, reconcile
from app.checkpoints.schemas import CheckpointCreate, CheckpointList, CheckpointOut
from app.errors import (
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
    InvalidRequest,
    InvalidState,
    UnknownDisk,
)

router = APIRouter(
    prefix="/v1/hosts/{host}/domains/{domain}/checkpoints",
    tags=["checkpoints"],
    route_class=AuthFirstRoute,
)
# Every route here asks libvirt about the domain.
_LIBVIRT = (
    HostNotFound,
    DomainNotFound,
    HostUnreachable,
    HypervisorError,
    HypervisorUnsupported,
    HypervisorInvalidState,
)


@router.get(
    "",
    responses=problem_responses(*_LIBVIRT),
    description="The stored lineage merged with libvirt's live list, parents before children. "
    "A recorded checkpoint libvirt lacks shows `in_libvirt: false` (and `missing` until a "
    "reconcile redefines it or finds it `broken`); one made outside the service shows with "
    "`backup_id: null`. Sizes are null here: ask for one checkpoint.",
    summary="List a domain's checkpoints",
)
async def list_checkpoints(
    host: HostPath, domain: DomainPath, _: ReadDep, hosts: HostsDep, session: SessionDep
) -> CheckpointList:
    return await service.list_checkpoints(session, hosts.get(host), domain)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckpointOut,
    responses=problem_responses(
        *_LIBVIRT,
        DomainNotRunning,
        InvalidState,
        InvalidRequest,
        UnknownDisk,
        IdempotencyConflict,
        IdempotencyInProgress,
    )
    | examples.answer(201, examples.CHECKPOINT_OUT),
    description="409 `domain-not-running`, or `invalid-state` for a name the domain has "
    "(in libvirt or recorded); 422 `unknown-disk`. The same `Idempotency-Key` and body "
    "within 24 h returns the first response again.",
    summary="Create a checkpoint",
)
async def create_checkpoint(
    host: HostPath,
    domain: DomainPath,
    body: Annotated[CheckpointCreate, Body(openapi_examples=examples.CHECKPOINT_CREATE)],
    request: Request,
    principal: OperateDep,
    hosts: HostsDep,
    session: SessionDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    async def create() -> JSONResponse:
        checkpoint = await service.create_checkpoint(session, hosts.get(host), domain, body)
        location = f"{request.url.path}/{checkpoint.name}"
        return JSONResponse(
            checkpoint.model_dump(mode="json"),
            status.HTTP_201_CREATED,
            headers={"Location": location},
        )

    return await idempotency.respond_once(
        session, request, body, principal=principal, key=idempotency_key, make=create
    )


@router.post(
    "/reconcile",
    responses=problem_responses(*_LIBVIRT, DomainNotRunning, InvalidState),
    description="Redefines (REDEFINE_VALIDATE, parents first, from the stored XML) a "
    "checkpoint libvirt lost while its bitmaps remain, imports checkpoints made outside "
    "the service, follows libvirt's lineage, and marks broken, with the reason, a "
    "checkpoint whose bitmap is gone. Needs the domain running (409 `domain-not-running`): "
    "libvirt validates bitmaps only then. `dry_run` reports and changes nothing.",
    summary="Reconcile checkpoints with libvirt",
)
async def reconcile_checkpoints(
    host: HostPath,
    domain: DomainPath,
    _: OperateDep,
    hosts: HostsDep,
    session: SessionDep,
    dry_run: bool = False,
) -> ReconcileResult:
    hypervisor = hosts.get(host)
    return await reconcile(
        session, hypervisor, await hypervisor.get_domain(domain), dry_run=dry_run
    )


@router.get(
    "/{name}",
    responses=problem_responses(*_LIBVIRT, CheckpointNotFound),
    description="With each disk's `size_bytes` while the domain runs and no backup job is "
    "active (libvirt's size query needs a domain job); null otherwise.",
    summary="Get a checkpoint",
)
async def get_checkpoint(
    host: HostPath,
    domain: DomainPath,
    name: CheckpointPath,
    _: ReadDep,
    hosts: HostsDep,
    session: SessionDep,
) -> CheckpointOut:
    return await service.get_checkpoint(session, hosts.get(host), domain, name)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(*_LIBVIRT, CheckpointNotFound, InvalidState),
    description="libvirt merges the bitmap into the parent's; the stored lineage re-parents "
    "the children, or with `children` loses the subtree. `metadata_only` leaves the bitmaps "
    "in the disks (needed for a broken one, and for a domain that is not running) and the "
    "service forgets the checkpoint. 409 `invalid-state` while an unfinished backup uses it.",
    summary="Delete a checkpoint",
)
async def delete_checkpoint(
    host: HostPath,
    domain: DomainPath,
    name: CheckpointPath,
    _: AdminDep,
    hosts: HostsDep,
    session: SessionDep,
    children: bool = False,
    metadata_only: bool = False,
) -> None:
    await service.delete_checkpoint(
        session,
        hosts.get(host),
        domain,
        name,
        children=children,
        metadata_only=metadata_only,
    )
