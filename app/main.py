"""`create_app()`: the FastAPI factory. The lifespan opens the database, the
hosts and the worker pool, and closes them in reverse order."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.api import (
    backups,
    checkpoints,
    docs,
    domains,
    events,
    health,
    hosts,
    openapi,
    policies,
    problems,
    restores,
)
from app.api.admin import router as admin_router
from app.api.middleware import BodyLimit, BrowserGuard, LoopbackOnly
from app.api.request_context import RequestContext
from app.api.state import AppState
from app.db.session import Database
from app.hosts.registry import HostRegistry, HypervisorFactory
from app.hosts.service import load_hosts
from app.metrics import RequestMetrics
from app.settings import Settings
from app.statuspage.router import router as status_page
from app.worker.pool import WorkerPool

log = logging.getLogger("vmbackup")

DESCRIPTION = """\
Full and incremental backups of libvirt virtual machines, push and pull mode,
with the lineage of checkpoints and backups kept in a database.

Errors are RFC 9457 `application/problem+json` with a stable `code`.
Authentication: `Authorization: Bearer <token>`; scopes are ordered, `admin`
includes `operate`, which includes `read`. With no token configured the service
serves loopback clients only (403 for any other) and lets their requests through.
Request bodies are capped (413 `payload-too-large`) and must be
`application/json` (415 `unsupported-media-type`). A request that changes
something and comes from another origin (`Origin`, or `Sec-Fetch-Site:
cross-site`) is 403 `forbidden`; with no token configured, a `Host` that is not a
loopback name or one of `VMBACKUP_ALLOWED_HOSTS` is 421 `misdirected-request`.
"""


def libvirt_factory(settings: Settings) -> HypervisorFactory:
    from app.libvirt.host import LibvirtHost  # the one door to libvirt

    def make(name: str, uri: str) -> LibvirtHost:
        return LibvirtHost(name, uri, max_workers=settings.workers_per_host + 2)

    return make


def _lifespan(
    settings: Settings, factory: HypervisorFactory | None, request_metrics: CollectorRegistry
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.tokens:
            log.warning(
                "no VMBACKUP_TOKENS configured: every request on %s is allowed (loopback only)",
                settings.host,
            )
        database = Database(settings.effective_database_url)
        registry = HostRegistry(factory or libvirt_factory(settings))
        state = AppState(
            settings=settings, database=database, hosts=registry, request_metrics=request_metrics
        )
        app.state.vmbackup = state
        try:
            async with database.session_scope() as session:
                await load_hosts(session, registry, settings.libvirt_uri)
            state.pool = WorkerPool(settings, database, registry)
            await state.pool.start()
            yield
        finally:
            if state.pool is not None:
                await state.pool.stop()
            await registry.close()
            await database.dispose()

    return lifespan


def create_app(
    settings: Settings | None = None, hypervisor_factory: HypervisorFactory | None = None
) -> FastAPI:
    settings = settings or Settings()
    request_metrics = CollectorRegistry()
    app = FastAPI(
        title="vmbackup",
        version="1.0.0",
        description=DESCRIPTION,
        docs_url=None,  # `docs.install` serves them, with their files
        redoc_url=None,
        lifespan=_lifespan(settings, hypervisor_factory, request_metrics),
    )
    # Outermost last: metrics count every answer, refusals included; a client off
    # loopback, and what a web page could send, are refused before a body is read;
    # every answer has a request id.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BrowserGuard, settings=settings)
    app.add_middleware(LoopbackOnly, settings=settings)
    app.add_middleware(RequestMetrics, registry=request_metrics)
    app.add_middleware(RequestContext)
    problems.install(app)
    app.include_router(health.router)
    app.include_router(hosts.router)
    app.include_router(domains.router)
    app.include_router(backups.router)
    app.include_router(events.router)
    app.include_router(checkpoints.router)
    app.include_router(restores.router)
    app.include_router(policies.router)
    app.include_router(admin_router)
    app.include_router(status_page)
    openapi.install(app)
    docs.install(app)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app`: built on first access, so importing this module
    # (tests, the CLI) does not read the environment.
    if name == "app":
        return create_app()
    raise AttributeError(name)
