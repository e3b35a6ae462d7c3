"""Engine and sessions. The request owns the transaction; workers use
`session_scope()`. Services and repositories flush, never commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session

from app.db.models import BackupEvent

# What a database that is down, restarting or unreachable raises (the server
# refused or dropped the connection; SQLite: locked past the busy timeout).
# Callers wait and retry; the API answers 503.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
RETRY_FIRST_SECONDS = 0.25
RETRY_MAX_SECONDS = 5.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed while the worker writes; the busy timeout makes
    # writers wait for each other instead of failing with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


class Pulse:
    """Wakes every waiter each time it fires: an edge, not a level. Take `current()`
    before looking for changes, then wait on it, so a fire in between is not missed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event


class _Session(Session):
    """Remembers whether its transaction wrote: only writes wake change waiters
    (a reader that woke them would wake itself, forever)."""


@event.listens_for(_Session, "after_flush")
def _flushed(session: Session, _context: object) -> None:
    session.info["wrote"] = True


# Event ids are SSE ids, and a reader resumes after the last one it saw, so events
# must become visible in id order. PostgreSQL hands out ids at insert and
# transactions commit in any order: a reader could see 11 while 10 is uncommitted
# and never look back. Taken before its events are inserted and held to the
# commit, this lock has event writers take ids and commit one at a time. SQLite's
# single writer already does.
EVENT_ORDER_LOCK = 0x766D6265  # "vmbe"


@event.listens_for(_Session, "before_flush")
def _events_in_commit_order(session: Session, _context: object, _instances: object) -> None:
    if session.get_bind().dialect.name != "postgresql":
        return
    if any(isinstance(row, BackupEvent) for row in session.new):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": EVENT_ORDER_LOCK})


@event.listens_for(_Session, "do_orm_execute")
def _executed(state: ORMExecuteState) -> None:
    if not state.is_select:
        state.session.info["wrote"] = True


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=_Session
        )
        # Fired after every commit that wrote; other replicas' commits are found by
        # polling, so a waiter must also time out.
        self.committed = Pulse()

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def session_scope(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block ends, rolled back on error."""
        async with self.sessionmaker() as session:
            async with session.begin():
                yield session
            if session.info.pop("wrote", False):
                self.committed.fire()

    async def ping(self) -> None:
        async with self.sessionmaker() as session:
            await session.execute(text("SELECT 1"))

    async def wait_until_available(self) -> None:
        """Return once the database answers again, retrying with backoff."""
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                await self.ping()
                return
            except DATABASE_UNAVAILABLE:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def dispose(self) -> None:
        await self.engine.dispose()
