"""Shared fixtures. Every database is built by `alembic upgrade head`, never
`create_all`, and the suite runs on SQLite and PostgreSQL alike."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import libvirt
import psycopg
import pytest
from fastapi import FastAPI

from app.db.migrate import upgrade_to_head
from app.hosts.registry import HypervisorFactory
from app.libvirt.events import ensure_event_loop
from app.main import create_app
from app.settings import Settings
from tests.support.libvirtd import LiveConnection, ensure_libvirtd
from tests.support.vms import TestVM, create_vm, destroy_vm

PG_ADMIN_DSN = os.environ.get("VMBACKUP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]


def _pg_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{database}"


def _pg_admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "vmbackup.db"
    upgrade_to_head(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = f"vmbt_template_{secrets.token_hex(4)}"
    _pg_admin(f"CREATE DATABASE {name}")
    upgrade_to_head(_pg_url(name))
    yield name
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """A fresh migrated database per test, copied from a migrated template."""
    if request.param == "sqlite":
        path = tmp_path / "vmbackup.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    template = request.getfixturevalue("pg_template")
    name = f"vmbt_{secrets.token_hex(6)}"
    _pg_admin(f"CREATE DATABASE {name} TEMPLATE {template}")
    yield _pg_url(name)
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        libvirt_uri=os.environ.get("VMBACKUP_TEST_LIBVIRT_URI", "qemu:///system"),
        socket_root=tmp_path / "run",
        tokens=[],
        allow_tcp_hosts=True,  # tests register qemu+tcp://127.0.0.1/system
        lease_seconds=6,
        poll_seconds=0.2,
    )


@pytest.fixture
def hypervisor_factory() -> HypervisorFactory | None:
    """None: the real libvirt adapter. Tests of pure logic override it with a fake."""
    return None


@pytest.fixture
def app(settings: Settings, hypervisor_factory: HypervisorFactory | None) -> FastAPI:
    return create_app(settings, hypervisor_factory)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client


@pytest.fixture(scope="session")
def libvirt_live() -> Iterator[LiveConnection]:
    ensure_event_loop()  # the app's own: one libvirt event loop per process
    live = LiveConnection()
    yield live
    live.close()


@pytest.fixture
def libvirt_conn(libvirt_live: LiveConnection) -> libvirt.virConnect:
    """The session's connection; opened again when a test restarted libvirtd."""
    return libvirt_live.conn


@pytest.fixture
def vm(libvirt_live: LiveConnection, tmp_path: Path) -> Iterator[TestVM]:
    """A running throw-away domain with one 64 MiB qcow2 disk, `vda`."""
    ensure_libvirtd()  # one fault test that left it down must not fail all the rest
    test_vm = create_vm(libvirt_live.conn, workdir=tmp_path / "vms")
    try:
        yield test_vm
    finally:
        destroy_vm(libvirt_live.conn, test_vm)  # libvirtd may have restarted meanwhile
