"""Event streams over a real uvicorn on loopback: a client that goes away
leaves nothing behind, and each token holds a bounded number of streams."""

from __future__ import annotations

import asyncio
import gc
import hashlib
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
from app.settings import Settings, TokenSetting
from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.support.vms import TestVM

# Two tokens with one name: limits count per token (its digest), not per name.
TOKENS = {"first": "token-one-secret", "second": "token-two-secret"}
STREAMS_PER_TOKEN = 2


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[token]}"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    tokens = [
        TokenSetting(
            name="dashboard", sha256=hashlib.sha256(t.encode()).hexdigest(), scopes=["admin"]
        )
        for t in TOKENS.values()
    ]
    return settings.model_copy(
        update={"tokens": tokens, "max_streams_per_token": STREAMS_PER_TOKEN}
    )


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
            headers = {"Last-Event-ID": "0", **_auth("first")}
            async with client.stream("GET", "/v1/events", headers=headers):
                await asyncio.wait_for(in_read.wait(), 30)
        await served.until(lambda: not served.server.server_state.connections, "disconnected")
        client_gone.set()
        await served.until_idle()
        gc.collect()
        await asyncio.sleep(0)
    finally:
        event.remove(engine, "before_cursor_execute", hold_the_read)
    assert _leaks(caplog.records) == []


def _limit_reached(response: httpx.Response) -> bool:
    if response.status_code != 429:
        return False
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    return bool(response.json()["code"] == "limit-reached")


async def _open(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.send(
        client.build_request("GET", "/v1/events", headers=_auth(token)), stream=True
    )


async def test_a_token_holds_a_bounded_number_of_streams(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        held = [await _open(client, "first") for _ in range(STREAMS_PER_TOKEN)]
        assert [r.status_code for r in held] == [200] * STREAMS_PER_TOKEN
        assert _limit_reached(await client.get("/v1/events", headers=_auth("first")))
        other = await _open(client, "second")  # the other token of that name has its own
        assert other.status_code == 200
        await other.aclose()

        await held.pop().aclose()  # the client goes away: its slot is freed
        deadline = time.monotonic() + 30
        while not (again := await _open(client, "first")).status_code == 200:
            assert _limit_reached(again)
            await again.aclose()
            assert time.monotonic() < deadline, "the slot of a closed stream was not freed"
            await asyncio.sleep(0.05)
        for response in (again, *held):
            await response.aclose()
    await served.until_idle()
    assert served.state.streams.open(hashlib.sha256(TOKENS["first"].encode()).hexdigest()) == 0


@pytest.mark.libvirt
async def test_a_stream_that_ends_frees_its_slot(served: Served, vm: TestVM) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=60, headers=_auth("first")) as client:
        backup = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
        for _ in range(STREAMS_PER_TOKEN + 2):  # each ends after the terminal event
            response = await client.get(f"/v1/backups/{backup['id']}/events")
            assert response.status_code == 200, response.text
            assert "event: status" in response.text
