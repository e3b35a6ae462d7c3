"""Replicas started together on a new PostgreSQL database each migrate it
(`vmbackup serve` migrates first): one at a time, and every one succeeds."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from app.db.migrate import head_revision
from app.worker.notify import libpq_conninfo
from tests.conftest import _pg_admin, _pg_url

REPLICAS = 3


@pytest.fixture
def empty_pg_database() -> Iterator[str]:
    name = f"vmbt_empty_{secrets.token_hex(4)}"
    _pg_admin(f"CREATE DATABASE {name}")
    yield _pg_url(name)
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_replicas_migrating_a_new_database_at_once_all_succeed(empty_pg_database: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    env["VMBACKUP_DATABASE_URL"] = empty_pg_database
    migrations = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(REPLICAS)
    ]
    outputs = [m.communicate(timeout=120)[0].decode(errors="replace") for m in migrations]
    assert [m.returncode for m in migrations] == [0] * REPLICAS, "\n".join(outputs)
    with psycopg.connect(libpq_conninfo(empty_pg_database)) as conn:
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert versions == [(head_revision(),)]
