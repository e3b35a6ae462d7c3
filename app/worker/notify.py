"""Wakes every replica's dispatch as soon as work is queued (PostgreSQL only).

A transaction that queues work (a backup or a restore created) or frees a
domain (a backup ended) runs `NOTIFY vmbackup_work`; PostgreSQL delivers it to
every listening session when, and only if, that transaction commits. Each
worker pool LISTENs on a connection of its own, apart from the engine's pool,
and wakes its dispatch on every notification. The listener reconnects with
backoff when the database drops, and wakes the dispatch once it listens again:
what was queued meanwhile was announced to nobody. Polling stays as the net.

SQLite has one process per database: its pool wakes itself in process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app.db.session import RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS, Database

log = logging.getLogger(__name__)
CHANNEL = "vmbackup_work"
# A connection dropped without a word (a cut network) shows only when used.
LIVENESS_SECONDS = 30.0


def notify_on_commit(session: AsyncSession) -> None:
    """Announce, at commit, the work this transaction queues."""
    if session.get_bind().dialect.name == "postgresql":
        event.listen(session.sync_session, "before_commit", _notify, once=True)


def _notify(session: Session) -> None:
    # Runs inside the transaction: delivered at its commit, dropped on rollback.
    session.execute(text(f"NOTIFY {CHANNEL}"))


async def announce(database: Database) -> None:
    """Announce work already committed (a backup that ended frees its domain)."""
    if database.is_postgresql:
        async with database.session_scope() as session:
            await session.execute(text(f"NOTIFY {CHANNEL}"))


def libpq_conninfo(url: str) -> str:
    """The SQLAlchemy URL (`postgresql+psycopg://...`) as libpq takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(url: str, on_work: Callable[[], None]) -> None:
    """Call `on_work` on every notification, and each time listening (re)starts.
    Runs until cancelled; a lost database is waited out."""
    conninfo = libpq_conninfo(url)
    delay = RETRY_FIRST_SECONDS
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                delay = RETRY_FIRST_SECONDS
                on_work()
                while True:
                    async for _notification in conn.notifies(timeout=LIVENESS_SECONDS):
                        on_work()
                    await conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as error:
            log.warning("work listener: database unavailable, retrying: %s", error)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_SECONDS)
