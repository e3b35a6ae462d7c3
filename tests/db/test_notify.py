"""LISTEN/NOTIFY on PostgreSQL: a transaction that queues work announces it at
its commit (never on rollback), and a listener wakes on it and listens again
after its connection is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import pytest

from app.db.models import Host
from app.db.session import Database
from app.worker import notify

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
SENTINEL = "sentinel"


class Boom(Exception):
    pass


async def _queue_then_fail(database: Database) -> None:
    async with database.session_scope() as session:
        session.add(Host(name="rolled-back", uri="test:///default"))
        notify.notify_on_commit(session)
        raise Boom


async def _received_until_sentinel(conn: psycopg.AsyncConnection[object]) -> list[str]:
    payloads: list[str] = []
    async for notification in conn.notifies(timeout=30):
        if notification.payload == SENTINEL:
            return payloads
        payloads.append(notification.payload)
    raise AssertionError(f"no sentinel within 30 s; got {payloads}")


async def test_a_notify_is_sent_when_the_work_commits_and_never_on_rollback(
    database_url: str,
) -> None:
    database = Database(database_url)
    conninfo = notify.libpq_conninfo(database_url)
    try:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            await conn.execute(f"LISTEN {notify.CHANNEL}")
            with pytest.raises(Boom):
                await _queue_then_fail(database)
            async with database.session_scope() as session:
                session.add(Host(name="committed", uri="test:///default"))
                notify.notify_on_commit(session)
            # Notifications arrive in commit order: the sentinel comes after all.
            await conn.execute(f"NOTIFY {notify.CHANNEL}, '{SENTINEL}'")
            assert await _received_until_sentinel(conn) == [""]
    finally:
        await database.dispose()


async def _until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def _listener_pids(admin: psycopg.AsyncConnection[object]) -> list[int]:
    rows = await admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND query = %s AND pid <> pg_backend_pid()",
        (f"LISTEN {notify.CHANNEL}",),
    )
    return [row[0] for row in await rows.fetchall()]  # type: ignore[index]


async def test_the_listener_wakes_on_every_notify_and_listens_again_after_a_drop(
    database_url: str,
) -> None:
    database = Database(database_url)
    wakes = 0

    def woken() -> None:
        nonlocal wakes
        wakes += 1

    listener = asyncio.create_task(notify.listen(database_url, woken))
    try:
        async with await psycopg.AsyncConnection.connect(
            notify.libpq_conninfo(database_url), autocommit=True
        ) as admin:
            await _until(lambda: wakes == 1, "listening (the first wake)")
            await notify.announce(database)
            await _until(lambda: wakes == 2, "woken by a notify")
            [pid] = await _listener_pids(admin)
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            # Listening again wakes it once: work queued meanwhile went unannounced.
            await _until(lambda: wakes == 3, "listening again after the drop")
            assert (await _listener_pids(admin)) not in ([], [pid])
            await notify.announce(database)
            await _until(lambda: wakes == 4, "woken by a notify on the new connection")
    finally:
        listener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listener
        await database.dispose()
