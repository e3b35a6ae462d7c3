"""Helpers for tests that run several `vmbackup serve` replicas on one database:
waiting through the API, and reading who holds a backup or a restore (the
lease is not part of the API, so it is read from the database itself)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg

from app.worker.notify import libpq_conninfo
from tests.support.service import ServiceProcess

TERMINAL = {"succeeded", "failed", "cancelled"}


def wait_status(
    client: httpx.Client, path: str, statuses: set[str], timeout: float = 60
) -> dict[str, Any]:
    """GET `path` (a backup or a restore) until its status is one of `statuses`;
    a terminal status that is not wanted fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, Any] = client.get(path).json()
        if found.get("status") in statuses:
            return found
        assert found.get("status") not in TERMINAL, found
        assert time.monotonic() < deadline, f"{path}: still {found.get('status')}: {found}"
        time.sleep(0.1)


def status_events(client: httpx.Client, backup_id: str) -> list[str]:
    """The statuses a backup went through, from its event stream (which replays
    every change and ends after the terminal one)."""
    statuses = []
    with client.stream("GET", f"/v1/backups/{backup_id}/events") as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind == "status":
                statuses.append(json.loads(line.removeprefix("data: "))["status"])
    return statuses


def lease(database_url: str, table: str, row_id: str) -> tuple[int | None, int]:
    """(pid of the holding process, lease epoch) of a backup or a restore."""
    assert table in ("backups", "restores")
    with psycopg.connect(libpq_conninfo(database_url)) as conn:
        row = conn.execute(
            f"SELECT lease_holder, lease_epoch FROM {table} WHERE id = %s",  # type: ignore[arg-type]
            (row_id,),
        ).fetchone()
    assert row is not None, f"{table} {row_id}: no such row"
    holder, epoch = row
    # The holder is `hostname:pid:nonce` (app/worker/pool.py).
    return (int(holder.split(":")[-2]) if holder else None), int(epoch)


def pid(service: ServiceProcess) -> int:
    assert service.process is not None
    return service.process.pid


@contextmanager
def looking_away(service: ServiceProcess) -> Iterator[None]:
    """SIGSTOP the replica for the block (as a long pause would), then SIGCONT:
    while it is stopped, only the other replicas claim work."""
    os.kill(pid(service), signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid(service), signal.SIGCONT)
