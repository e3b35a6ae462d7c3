"""`Idempotency-Key` reserves the key before the work: concurrent duplicates
make one backup and one checkpoint, each answering with the first's response
(or 409 while it is in progress). Keys are per token, by digest, not by name."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime, timedelta
from typing import Any

import httpx
import libvirt
import pytest
from fastapi import FastAPI

from app.api import idempotency
from app.checkpoints.schemas import CheckpointCreate
from app.db.base import utcnow
from app.db.models import IdempotencyKey
from app.settings import Settings, TokenSetting
from tests.support.vms import TestVM

pytestmark = pytest.mark.libvirt
# Two tokens with one name: names need not be unique, so keys are kept per digest.
TOKENS = {"first": "idempotency-token-one", "second": "idempotency-token-two"}
CONCURRENT = 20


@pytest.fixture
def settings(settings: Settings) -> Settings:
    tokens = [
        TokenSetting(name="ops", sha256=hashlib.sha256(t.encode()).hexdigest(), scopes=["admin"])
        for t in TOKENS.values()
    ]
    return settings.model_copy(update={"tokens": tokens})


def _as(token: str, key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[token]}", "Idempotency-Key": key}


def _backups(vm: TestVM) -> str:
    return f"/v1/hosts/local/domains/{vm.name}/backups"


def _checkpoints(vm: TestVM) -> str:
    return f"/v1/hosts/local/domains/{vm.name}/checkpoints"


async def _all_at_once(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], key: str
) -> list[httpx.Response]:
    return list(
        await asyncio.gather(
            *(client.post(url, json=body, headers=_as("first", key)) for _ in range(CONCURRENT))
        )
    )


def _one_answer(responses: list[httpx.Response], status: int, field: str) -> str:
    """Every response is the first one's, or 409 `idempotency-in-progress`."""
    answered = [r for r in responses if r.status_code != 409]
    for waiting in (r for r in responses if r.status_code == 409):
        assert waiting.json()["code"] == "idempotency-in-progress", waiting.text
        assert int(waiting.headers["retry-after"]) > 0
    assert answered, "no request got the answer"
    assert {r.status_code for r in answered} == {status}, [r.text for r in answered]
    assert len({r.json()[field] for r in answered}) == 1
    assert len({r.headers["location"] for r in answered}) == 1
    return str(answered[0].json()[field])


async def test_concurrent_duplicates_make_one_backup(client: httpx.AsyncClient, vm: TestVM) -> None:
    responses = await _all_at_once(client, _backups(vm), {"mode": "pull"}, "one-backup")
    backup_id = _one_answer(responses, 202, "id")
    listed = await client.get("/v1/backups", headers={"Authorization": f"Bearer {TOKENS['first']}"})
    assert [b["id"] for b in listed.json()["items"]] == [backup_id]
    await client.post(f"/v1/backups/{backup_id}/cancel", headers=_as("first", "cancel"))


async def test_concurrent_duplicates_make_one_checkpoint(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    # No name given: each request that did the work would make a checkpoint of its own.
    responses = await _all_at_once(client, _checkpoints(vm), {"description": "once"}, "one-cp")
    name = _one_answer(responses, 201, "name")
    live = libvirt_conn.lookupByUUIDString(vm.uuid).listAllCheckpoints()
    assert [cp.getName() for cp in live] == [name]


async def test_keys_are_per_token_not_per_name(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    first = await client.post(_checkpoints(vm), json={"name": "a"}, headers=_as("first", "k"))
    second = await client.post(_checkpoints(vm), json={"name": "b"}, headers=_as("second", "k"))
    assert (first.status_code, second.status_code) == (201, 201), second.text
    live = libvirt_conn.lookupByUUIDString(vm.uuid).listAllCheckpoints()
    assert sorted(cp.getName() for cp in live) == ["a", "b"]
    replayed = await client.post(_checkpoints(vm), json={"name": "b"}, headers=_as("second", "k"))
    assert replayed.json() == second.json()


async def test_a_request_that_fails_frees_its_key(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    body = {"disks": [{"name": "vdz", "checkpoint": "bitmap"}]}
    failed = await client.post(_checkpoints(vm), json=body, headers=_as("first", "retry-me"))
    assert (failed.status_code, failed.json()["code"]) == (422, "unknown-disk")
    # Not remembered: the key is free for another body.
    created = await client.post(
        _checkpoints(vm), json={"name": "after"}, headers=_as("first", "retry-me")
    )
    assert created.status_code == 201, created.text
    live = libvirt_conn.lookupByUUIDString(vm.uuid).listAllCheckpoints()
    assert [cp.getName() for cp in live] == ["after"]


async def _reserved_by_another(
    app: FastAPI, vm: TestVM, body: dict[str, Any], at: datetime
) -> None:
    """The row a request holding key `held` for this body would have left."""
    request_hash = idempotency.fingerprint("POST", _checkpoints(vm), CheckpointCreate(**body))
    digest = hashlib.sha256(TOKENS["first"].encode()).hexdigest()
    async with app.state.vmbackup.database.session_scope() as session:
        session.add(
            IdempotencyKey(principal=digest, key="held", request_hash=request_hash, created_at=at)
        )


async def test_a_duplicate_of_a_request_still_in_progress_gets_409(
    app: FastAPI,
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.5)  # rather than half a minute
    await _reserved_by_another(app, vm, {"name": "x"}, utcnow())
    waiting = await client.post(_checkpoints(vm), json={"name": "x"}, headers=_as("first", "held"))
    assert (waiting.status_code, waiting.json()["code"]) == (409, "idempotency-in-progress")
    assert int(waiting.headers["retry-after"]) > 0
    assert libvirt_conn.lookupByUUIDString(vm.uuid).listAllCheckpoints() == []


async def test_a_key_left_reserved_by_a_dead_request_is_taken_over(
    app: FastAPI, client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    long_ago = utcnow() - idempotency.ABANDONED_AFTER - timedelta(seconds=1)
    await _reserved_by_another(app, vm, {"name": "x"}, long_ago)
    created = await client.post(_checkpoints(vm), json={"name": "x"}, headers=_as("first", "held"))
    assert created.status_code == 201, created.text
    again = await client.post(_checkpoints(vm), json={"name": "x"}, headers=_as("first", "held"))
    assert again.json() == created.json()
    live = libvirt_conn.lookupByUUIDString(vm.uuid).listAllCheckpoints()
    assert [cp.getName() for cp in live] == ["x"]
