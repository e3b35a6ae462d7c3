"""A client's `Last-Event-ID` and `cursor` are its own input: anything this
service did not send is 422 problem+json, checked before a stream starts."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest

from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.support.vms import TestVM

MALFORMED_EVENT_IDS = [
    b"\xb2",  # Latin-1 for '²': str.isdigit() is true, int() refuses it
    "\u0661".encode(),  # an Arabic-Indic digit one, as UTF-8
    b"9223372036854775808",  # 2**63: past the signed 64-bit ids
    b"99999999999999999999",
    b"-1",
    b"+1",
    b"1.0",
    b"0x10",
    b"1e3",
    b"",
    b"yesterday",
]
MAX_EVENT_ID = str(2**63 - 1)


def _cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


SOME_ID = str(uuid.uuid4())
MALFORMED_CURSORS = [
    _cursor(["2026-01-01T00:00:00", SOME_ID]),  # a naive time
    _cursor(["2026-01-01T00:00:00+00:00", 5]),
    _cursor([1, 2]),
    _cursor({"created_at": "2026-01-01T00:00:00+00:00", "id": SOME_ID}),
    _cursor({"2026-01-01T00:00:00+00:00": 1, SOME_ID: 2}),  # two keys: unpacked by mistake
    _cursor("2026-01-01T00:00:00+00:00"),
    _cursor(None),
    _cursor([]),
    _cursor(["2026-01-01T00:00:00+00:00", SOME_ID, 3]),
    _cursor([["2026-01-01T00:00:00+00:00"], SOME_ID]),
    _cursor(["2026-13-01T00:00:00+00:00", SOME_ID]),
    _cursor(["2026-01-01T00:00:00+00:00", "not-a-uuid"]),
    _cursor("[" * 300),
    base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),  # not UTF-8
    base64.urlsafe_b64encode(b"[" * 380).decode(),  # deeply nested
    "garbage!",
    "a",
]


def _assert_invalid(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "invalid-request"


@pytest.mark.parametrize("last_event_id", MALFORMED_EVENT_IDS, ids=repr)
async def test_a_malformed_last_event_id_on_the_feed_is_422(
    client: httpx.AsyncClient, last_event_id: bytes
) -> None:
    _assert_invalid(await client.get("/v1/events", headers={"Last-Event-ID": last_event_id}))


@pytest.mark.libvirt
async def test_a_malformed_last_event_id_on_a_backup_stream_is_422(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    backup = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
    url = f"/v1/backups/{backup['id']}/events"
    for last_event_id in MALFORMED_EVENT_IDS:
        _assert_invalid(await client.get(url, headers={"Last-Event-ID": last_event_id}))
    # The largest id is well-formed: nothing comes after it, and the stream of an
    # ended backup ends rather than waiting for events that cannot come.
    after_all = await client.get(url, headers={"Last-Event-ID": MAX_EVENT_ID})
    assert (after_all.status_code, after_all.text) == (200, "")
    replayed = await client.get(url, headers={"Last-Event-ID": "0"})
    assert replayed.text.count("event: status") == 4


@pytest.mark.parametrize("cursor", MALFORMED_CURSORS)
async def test_a_malformed_cursor_is_422(client: httpx.AsyncClient, cursor: str) -> None:
    _assert_invalid(await client.get("/v1/backups", params={"cursor": cursor}))


async def test_a_well_formed_cursor_past_every_backup_is_an_empty_page(
    client: httpx.AsyncClient,
) -> None:
    cursor = _cursor(["1970-01-01T00:00:00+00:00", SOME_ID])
    response = await client.get("/v1/backups", params={"cursor": cursor})
    assert response.json() == {"items": [], "next_cursor": None}
