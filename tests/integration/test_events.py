"""Server-sent events: a backup's stream in order and resumable, and the live
dashboard feed over a real HTTP server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.support.vms import TestVM

pytestmark = pytest.mark.libvirt


def parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append(
                {"id": int(fields["id"]), "event": fields["event"], **json.loads(fields["data"])}
            )
    return events


async def test_a_backup_stream_replays_every_change_and_ends(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    backup = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
    assert backup["status"] == "succeeded"
    response = await client.get(f"/v1/backups/{backup['id']}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    statuses = [e["status"] for e in events if e["event"] == "status"]
    assert statuses == ["queued", "starting", "running", "succeeded"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert {e["backup_id"] for e in events} == {backup["id"]}
    assert events[-1]["previous_status"] == "running"

    starting = next(e for e in events if e["status"] == "starting")
    resumed = await client.get(
        f"/v1/backups/{backup['id']}/events", headers={"Last-Event-ID": str(starting["id"])}
    )
    assert [e["id"] for e in parse_sse(resumed.text)] == [
        e["id"] for e in events if e["id"] > starting["id"]
    ]


async def test_a_stream_of_an_unknown_backup_is_404_and_a_bad_resume_422(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    missing = await client.get("/v1/backups/00000000-0000-0000-0000-000000000000/events")
    assert (missing.status_code, missing.json()["code"]) == (404, "backup-not-found")
    backup = await start(client, vm, mode="pull")
    bad = await client.get(
        f"/v1/backups/{backup['id']}/events", headers={"Last-Event-ID": "yesterday"}
    )
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid-request")
    await client.post(f"/v1/backups/{backup['id']}/cancel")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The app behind a real uvicorn on loopback (it runs the lifespan itself)."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def _next_status(lines: AsyncIterator[str], wanted: str) -> dict[str, Any]:
    block: list[str] = []
    async for line in lines:
        if line:
            block.append(line)
            continue
        for event in parse_sse("\n".join(block)):
            if event["status"] == wanted and event["event"] == "status":
                return event
        block = []
    raise AssertionError(f"stream ended before {wanted}")


async def test_the_dashboard_feed_delivers_changes_live(served: str, vm: TestVM) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as client:
        async with client.stream("GET", "/v1/events", params={"domain": vm.name}) as feed:
            assert feed.headers["content-type"].startswith("text/event-stream")
            lines = feed.aiter_lines()
            backup = await start(client, vm, mode="pull")
            ready = await asyncio.wait_for(_next_status(lines, "ready"), 30)
            assert ready["backup_id"] == backup["id"]
            assert ready["domain"] == {"name": vm.name, "uuid": vm.uuid}
            await client.post(f"/v1/backups/{backup['id']}/finish")
            done = await asyncio.wait_for(_next_status(lines, "succeeded"), 30)
            assert done["id"] > ready["id"]
