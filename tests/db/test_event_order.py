"""The change feed never passes an event that commits late: a transaction that took
an event id and is still open holds back every later event writer, so a reader
sees ids in order, on PostgreSQL (a lock) as on SQLite (its one writer)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from app.backups import events
from app.db.models import BackupEvent
from app.db.session import Database
from tests.db.conftest import queued_backup

HELD_SECONDS = 1.5  # longer than the feed's recheck: it looks while the first is open


async def _event(database: Database, backup_id: uuid.UUID, message: str) -> None:
    async with database.session_scope() as session:
        session.add(BackupEvent(backup_id=backup_id, status="queued", message=message))


async def _read(database: Database, after: int, seen: list[str]) -> None:
    async for text in events.stream(database, events.FeedFilter(), after):
        if '"message": "' in text:
            seen.append(text.split('"message": "')[1].split('"')[0])


async def test_an_event_committed_late_is_not_passed_by_the_feed(database: Database) -> None:
    backup_id = await queued_backup(database)
    after = await events.latest_id(database)
    seen: list[str] = []
    reader = asyncio.create_task(_read(database, after, seen))
    try:
        async with database.session_scope() as first:
            first.add(BackupEvent(backup_id=backup_id, status="queued", message="first"))
            await first.flush()  # its id is taken; the transaction stays open
            second = asyncio.create_task(_event(database, backup_id, "second"))
            await asyncio.sleep(HELD_SECONDS)
            assert seen == []  # nothing can be read past "first" while it is open
        await asyncio.wait_for(second, 30)
        for _ in range(100):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.05)
        assert seen == ["first", "second"]
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
