"""A PostgreSQL server of the test's own, to stop and start at will (the shared
one on 5432 serves other tests at the same time and is never stopped).

    with OwnPostgres.create() as server:          # initdb + start, on a free port
        url = server.create_database("vmbackup")  # postgresql+psycopg://...
        server.stop()                             # pg_ctl stop -m fast: clients dropped
        server.start()

The cluster lives in a temporary directory owned by `postgres` (the server
refuses to run as root), with its unix socket beside it; it listens on
loopback TCP only, with trust authentication, and is deleted at exit.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import psycopg
import pytest

from tests.support.service import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
TIMEOUT_SECONDS = 60


def _as_postgres(*args: str) -> None:
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}")


class OwnPostgres:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"
        self.log = root / "server.log"

    @classmethod
    def create(cls) -> OwnPostgres:
        root = Path(tempfile.mkdtemp(prefix="vmbt-pg-"))
        shutil.chown(root, "postgres", "postgres")
        server = cls(root, free_port())
        try:
            initdb = str(PG_BIN / "initdb")
            _as_postgres(initdb, "-D", str(server.data), "-A", "trust", "-U", "postgres", "-N")
            server.start()
        except BaseException:
            server.remove()
            raise
        return server

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        # fsync off: a test cluster, thrown away after the test.
        options = f"-k {self.root} -p {self.port} -h 127.0.0.1 -c fsync=off"
        _as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", options, "-w", "-t", str(TIMEOUT_SECONDS), "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`fast` rolls back open transactions and drops every client."""
        _as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode,
            "-w", "-t", str(TIMEOUT_SECONDS), "stop",
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        """An empty database; its SQLAlchemy URL."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass  # not running after all: remove it anyway
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> OwnPostgres:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.remove()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A PostgreSQL server of the test's own (import this fixture into a test module)."""
    with OwnPostgres.create() as server:
        yield server
