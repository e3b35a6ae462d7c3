"""The database URLs people write, through `vmbackup migrate | serve` as subprocesses:
plain `sqlite:///` and `postgresql://` work on both databases; a scheme the service
cannot use, or a database that does not answer, stops the command with one line."""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from app.db.migrate import head_revision
from tests.conftest import PG_ADMIN_DSN, _pg_admin
from tests.support.service import ServiceProcess, free_port


def _vmbackup(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def pg_database() -> Iterator[str]:
    """An empty PostgreSQL database, dropped afterwards; yields its name."""
    name = f"vmbt_url_{secrets.token_hex(4)}"
    _pg_admin(f"CREATE DATABASE {name}")
    yield name
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _plain_pg_url(scheme: str, database: str) -> str:
    # The admin DSN as people write it (postgresql://user@host:port/db), another database.
    return scheme + "://" + PG_ADMIN_DSN.split("://", 1)[1].rsplit("/", 1)[0] + f"/{database}"


def _pg_revision(url: str) -> str | None:
    with psycopg.connect(url.replace("postgres://", "postgresql://", 1)) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def _sqlite_revision(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def test_migrate_takes_a_plain_sqlite_url_with_an_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "vmbackup.db"
    result = _vmbackup("migrate", VMBACKUP_DATABASE_URL=f"sqlite:///{path}")
    assert result.returncode == 0, result.stderr
    assert "sqlite+aiosqlite" in result.stdout
    assert _sqlite_revision(path) == head_revision()


def test_migrate_takes_a_plain_sqlite_url_with_a_relative_path(tmp_path: Path) -> None:
    result = _vmbackup("migrate", cwd=tmp_path, VMBACKUP_DATABASE_URL="sqlite:///rel.db")
    assert result.returncode == 0, result.stderr
    assert _sqlite_revision(tmp_path / "rel.db") == head_revision()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_migrate_takes_a_plain_postgresql_url(scheme: str, pg_database: str) -> None:
    url = _plain_pg_url(scheme, pg_database)
    result = _vmbackup("migrate", VMBACKUP_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert "postgresql+psycopg" in result.stdout
    assert _pg_revision(url) == head_revision()


def test_serve_runs_on_a_plain_postgresql_url(pg_database: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    env.update(
        VMBACKUP_DATABASE_URL=_plain_pg_url("postgresql", pg_database),
        VMBACKUP_DATA_DIR=str(tmp_path / "data"),
        VMBACKUP_SOCKET_ROOT=str(tmp_path / "run"),
    )
    with ServiceProcess(env, log=tmp_path / "serve.log") as service:
        service.start()
        service.wait_ready()
        assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200
        hosts = httpx.get(f"{service.url}/v1/hosts", timeout=10).json()["items"]
        assert [host["name"] for host in hosts] == ["local"]
        service.stop()
    assert _pg_revision(env["VMBACKUP_DATABASE_URL"]) == head_revision()


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["serve", "--no-migrate"]])
@pytest.mark.parametrize("url", ["mysql://root@127.0.0.1/vmbackup", "sqlite://", "/var/x.db"])
def test_an_unusable_url_stops_with_one_line(command: list[str], url: str) -> None:
    line = _one_line(_vmbackup(*command, VMBACKUP_DATABASE_URL=url))
    assert line.startswith("vmbackup: invalid settings: VMBACKUP_DATABASE_URL:")
    assert "postgresql://" in line  # says what would work


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["serve", "--no-migrate"]])
def test_an_unreachable_postgresql_stops_with_one_line(command: list[str]) -> None:
    port = free_port()  # bound once and released: nothing listens there now
    url = f"postgresql://vmbackup:s3cret@127.0.0.1:{port}/vmbackup"
    line = _one_line(_vmbackup(*command, VMBACKUP_DATABASE_URL=url))
    assert line.startswith("vmbackup: cannot reach the database postgresql+psycopg://")
    assert f"127.0.0.1:{port}" in line
    assert "refused" in line.lower()
    assert "s3cret" not in line


def test_a_missing_postgresql_database_stops_with_one_line() -> None:
    url = _plain_pg_url("postgresql", f"vmbt_absent_{secrets.token_hex(4)}")
    line = _one_line(_vmbackup("migrate", VMBACKUP_DATABASE_URL=url))
    assert line.startswith("vmbackup: cannot reach the database")
    assert "does not exist" in line


def test_an_sqlite_path_that_cannot_be_made_stops_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    line = _one_line(_vmbackup("migrate", VMBACKUP_DATABASE_URL=f"sqlite:///{blocker}/x.db"))
    assert line.startswith("vmbackup: cannot reach the database sqlite+aiosqlite:///")
