"""The change feed of backups: `backup_events`, read in id order. Its ids are
monotonic and become visible in order (the commit-order lock in app/db/session.py),
so they serve as SSE ids and `Last-Event-ID` resumes exactly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import anyio
from sqlalchemy import func, select

from app.backups.service import BackupFilters
from app.db.models import TERMINAL_STATUSES, Backup, BackupEvent, BackupStatus
from app.db.session import Database
from app.errors import LimitReached

PAGE = 200
RECHECK_SECONDS = 1.0  # commits by other replicas are only seen by looking
KEEPALIVE_SECONDS = 15.0
STREAM_RETRY_AFTER_SECONDS = 10


class StreamSlots:
    """The open streams of each token in this process. Each stream polls the
    database, so a token may hold only so many; a stream frees its slot when it
    ends or its client goes away."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def open(self, holder: str) -> int:
        return self._open[holder]

    def take(self, holder: str, limit: int) -> Callable[[], None]:
        """A slot for `holder`, or LimitReached; call the result (once or more) to free it."""
        if self._open[holder] >= limit:
            raise LimitReached(
                f"this token has {limit} event streams open "
                "(VMBACKUP_MAX_STREAMS_PER_TOKEN): close one first",
                retry_after=STREAM_RETRY_AFTER_SECONDS,
            )
        self._open[holder] += 1
        freed = False

        def free() -> None:
            nonlocal freed
            if not freed:
                freed = True
                self._open[holder] -= 1
                if self._open[holder] <= 0:
                    del self._open[holder]

        return free


@dataclass(frozen=True)
class FeedFilter:
    backup_id: uuid.UUID | None = None
    backups: BackupFilters = field(default_factory=BackupFilters)


def _event_json(event: BackupEvent, backup: Backup) -> str:
    return json.dumps(
        {
            "id": event.id,
            "backup_id": str(event.backup_id),
            "host": backup.host,
            "domain": {"name": backup.domain_name, "uuid": backup.domain_uuid},
            "status": event.status,
            "previous_status": event.previous_status,
            "progress": event.progress,
            "message": event.message,
            "at": event.at.isoformat(),
        }
    )


def sse(event: BackupEvent, backup: Backup) -> str:
    kind = "progress" if event.progress is not None else "status"
    return f"id: {event.id}\nevent: {kind}\ndata: {_event_json(event, backup)}\n\n"


async def latest_id(database: Database) -> int:
    async with database.session_scope() as session:
        return int(await session.scalar(select(func.coalesce(func.max(BackupEvent.id), 0))) or 0)


async def _page(
    database: Database, feed: FeedFilter, after: int
) -> list[tuple[BackupEvent, Backup]]:
    query = (
        select(BackupEvent, Backup)
        .join(Backup, Backup.id == BackupEvent.backup_id)
        .where(BackupEvent.id > after)
        .order_by(BackupEvent.id)
        .limit(PAGE)
    )
    if feed.backup_id is not None:
        query = query.where(BackupEvent.backup_id == feed.backup_id)
    query = feed.backups.apply(query)
    # A client that disconnects cancels the stream (Starlette cancels its scope, and
    # keeps cancelling every await after). Inside a query that would cancel the
    # session's own rollback and close too, leaving the pooled connection to the
    # garbage collector ("Task was destroyed but it is pending" from aiosqlite): so
    # a read runs to its end and the cancellation lands at the next yield or wait.
    with anyio.CancelScope(shield=True):
        async with database.session_scope() as session:
            rows = [(row.BackupEvent, row.Backup) for row in await session.execute(query)]
    return rows


async def _ended(database: Database, backup_id: uuid.UUID) -> bool:
    with anyio.CancelScope(shield=True):  # as in _page
        async with database.session_scope() as session:
            status = await session.scalar(select(Backup.status).where(Backup.id == backup_id))
    return status is None or BackupStatus(status) in TERMINAL_STATUSES


def _ends(event: BackupEvent, feed: FeedFilter) -> bool:
    return feed.backup_id is not None and BackupStatus(event.status) in TERMINAL_STATUSES


async def _nothing_more(database: Database, feed: FeedFilter, after: int) -> bool:
    """A single backup's stream resumed after its terminal event (or the backup
    deleted) has nothing to wait for. The status is read before the events: the
    terminal event is committed with the status, so a second look finds it."""
    if feed.backup_id is None or not await _ended(database, feed.backup_id):
        return False
    return not await _page(database, feed, after)


async def stream(database: Database, feed: FeedFilter, after: int) -> AsyncGenerator[str, None]:
    """SSE text: every event after `after`, then new ones as they are committed;
    a single backup's stream ends after its terminal event."""
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while True:
        changed = database.committed.current()
        rows = await _page(database, feed, after)
        for event, backup in rows:
            yield sse(event, backup)
            after = event.id
            if _ends(event, feed):
                return
            # Reads are shielded and sends do not wait: this is where a disconnected
            # client's cancellation lands while a backlog is replayed.
            await asyncio.sleep(0)
        if rows:
            quiet_since = loop.time()
            continue
        if await _nothing_more(database, feed, after):
            return
        if loop.time() - quiet_since >= KEEPALIVE_SECONDS:
            yield ": keepalive\n\n"
            quiet_since = loop.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), RECHECK_SECONDS)
