from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection

from app.api.deps import ReadDep, SessionDep, StateDep
from app.api.routing import AuthFirstRoute
from app.db.migrate import current_revision, head_revision
from app.metrics import render, snapshot

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"], route_class=AuthFirstRoute)


class Live(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready", "not-ready"]
    checks: dict[str, str]


@router.get("/livez", description="200 while the process runs.", summary="Is the process alive")
async def livez() -> Live:
    return Live()


async def _database_check(connection: AsyncConnection, head: str | None) -> str:
    revision = await connection.run_sync(current_revision)
    if revision != head:
        return f"at revision {revision}, head is {head}: run `vmbackup migrate`"
    return "ok"


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"model": Ready, "description": "Not ready: each check's state"}},
    description="200 when the database answers and is at the head migration and the worker "
    "pool is alive; else 503. A disconnected hypervisor host does not make the service "
    "unready: see /v1/hosts.",
    summary="Is the service ready (database, workers)",
)
async def readyz(state: StateDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with state.database.engine.connect() as connection:
            checks["database"] = await _database_check(connection, head_revision())
    except Exception as error:  # any failure to reach the database is "not ready"
        # The exception may name the server, the user or a file: the log has it,
        # an unauthenticated client only learns which check failed.
        log.warning("readyz: the database check failed: %s", error)
        checks["database"] = "unreachable"
    pool = state.pool
    checks["worker_pool"] = "ok" if pool is not None and pool.alive else "not running"
    ready = all(value == "ok" for value in checks.values())
    body = Ready(status="ready" if ready else "not-ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
    description="Prometheus text: requests by route, backups by status, bytes stored, the "
    "newest success per domain (`vmbackup_last_success_timestamp_seconds`, for RPO alerts) "
    "and hosts up. Needs the `read` scope when tokens are configured (Prometheus sends it "
    "with `authorization: {credentials: ...}`).",
    summary="Prometheus metrics",
)
async def metrics(_: ReadDep, state: StateDep, session: SessionDep) -> Response:
    figures = await snapshot(session, state.hosts)
    return Response(render(state.request_metrics, figures), media_type=CONTENT_TYPE_LATEST)
