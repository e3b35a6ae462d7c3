"""Event streams over a real uvicorn on loopback: a client that goes away
leaves nothing behind, and each token holds a bounded number of streams."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.util import await_

from app.api.state import AppState


class Served:
    def __init__(self, app: FastAPI, server: uvicorn.Server, port: int) -> None:
        self.app = app
        self.server = server
        self.url = f"http://127.0.0.1:{port}"

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.vmbackup
        return state

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"not {what} after {timeout} s"
            await asyncio.sleep(0.01)

    async def until_idle(self) -> None:
        """Every connection closed and every request task ended."""
        state = self.server.server_state
        await self.until(lambda: not state.connections and not state.tasks, "idle")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def served(app: FastAPI) -> AsyncIterator[Served]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    yield Served(app, server, port)
    server.should_exit = True
    await task


def _leaks(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.ERROR]


async def test_a_client_leaving_during_a_read_leaves_no_pending_task(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """The client disconnects while the stream's database read is in progress
    (held there until the server has seen the disconnect): the read still ends
    cleanly, with no task or pooled connection left to the garbage collector."""
    in_read, client_gone = asyncio.Event(), asyncio.Event()

    def hold_the_read(*args: Any) -> None:
        statement = args[2]
        if "FROM backup_events" not in statement or client_gone.is_set():
            return
        in_read.set()
        await_(client_gone.wait())
        for _ in range(20):  # the loop turns: a cancellation now lands in this read
            await_(asyncio.sleep(0))

    engine = served.state.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", hold_the_read)
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            async with client.stream("GET", "/v1/events", headers={"Last-Event-ID": "0"}):
                await asyncio.wait_for(in_read.wait(), 30)
        await served.until(lambda: not served.server.server_state.connections, "disconnected")
        client_gone.set()
        await served.until_idle()
        gc.collect()
        await asyncio.sleep(0)
    finally:
        event.remove(engine, "before_cursor_execute", hold_the_read)
    assert _leaks(caplog.records) == []
