"""Sessions: the transaction rules and the change pulse that wakes event streams."""

from __future__ import annotations

from sqlalchemy import select, update

from app.db.models import Host
from app.db.session import Database


async def test_only_a_transaction_that_writes_wakes_change_waiters(database_url: str) -> None:
    database = Database(database_url)
    try:
        before = database.committed.current()
        async with database.session_scope() as session:
            await session.execute(select(Host))
        assert not before.is_set()  # a read must not wake the readers (they loop)
        async with database.session_scope() as session:
            session.add(Host(name="h1", uri="test:///default"))
        assert before.is_set()
        after_add = database.committed.current()
        async with database.session_scope() as session:
            await session.execute(update(Host).values(uri="test:///other"))
        assert after_add.is_set()
    finally:
        await database.dispose()
