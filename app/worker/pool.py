"""The worker pool: the only writer of a backup's status after `queued`.

One pool per process. It registers itself in `workers` and heartbeats, so
that /readyz and other replicas can tell it is alive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, update

from app.db.models import Worker
from app.db.session import Database
from app.hosts.registry import HostRegistry
from app.settings import Settings

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, settings: Settings, database: Database, hosts: HostRegistry) -> None:
        self.settings = settings
        self.database = database
        self.hosts = hosts
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._tasks: list[asyncio.Task[None]] = []
        self._last_heartbeat: datetime | None = None

    @property
    def alive(self) -> bool:
        if not self._tasks or any(task.done() for task in self._tasks):
            return False
        if self._last_heartbeat is None:
            return False
        stale = timedelta(seconds=self.settings.lease_seconds)
        return datetime.now(UTC) - self._last_heartbeat < stale

    async def start(self) -> None:
        await self._heartbeat_once()
        self._tasks = [asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            async with self.database.session_scope() as session:
                await session.execute(delete(Worker).where(Worker.holder == self.holder))

    async def _heartbeat_once(self) -> None:
        now = datetime.now(UTC)
        async with self.database.session_scope() as session:
            updated = await session.execute(
                update(Worker).where(Worker.holder == self.holder).values(heartbeat_at=now)
            )
            if updated.rowcount == 0:  # type: ignore[attr-defined]
                session.add(Worker(holder=self.holder, started_at=now, heartbeat_at=now))
        self._last_heartbeat = now

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat_once()
            except Exception:  # the database may be briefly away; try again
                log.exception("worker heartbeat failed")
