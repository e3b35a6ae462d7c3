"""Policies through the API: validation, CRUD, and the schedule kept in step."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

BODY: dict[str, Any] = {"name": "nightly", "schedule": {"cron": "0 2 * * *", "timezone": "UTC"}}


async def _create(client: httpx.AsyncClient, **changes: Any) -> dict[str, Any]:
    response = await client.post("/v1/policies", json={**BODY, **changes})
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/v1/policies/{response.json()['id']}"
    return response.json()


async def test_a_created_policy_reads_back_with_its_next_slot(client: httpx.AsyncClient) -> None:
    created = await _create(client, retention={"last": 7}, full_every={"days": 7})
    assert created["selector"] == {"host": "local", "domains": None, "exclude": []}
    assert created["backup"]["mode"] == "push"
    assert created["retention"] == {"last": 7, "daily": None, "weekly": None, "monthly": None}
    slot = datetime.fromisoformat(created["next_run_at"].replace("Z", "+00:00"))
    assert (slot.hour, slot.minute, slot.second) == (2, 0, 0)
    assert slot > datetime.now(UTC)
    assert (await client.get(f"/v1/policies/{created['id']}")).json() == created
    assert [p["id"] for p in (await client.get("/v1/policies")).json()["items"]] == [created["id"]]


async def test_a_schedule_is_read_in_the_policy_time_zone(client: httpx.AsyncClient) -> None:
    created = await _create(client, schedule={"cron": "0 2 * * *", "timezone": "Asia/Kolkata"})
    slot = datetime.fromisoformat(created["next_run_at"].replace("Z", "+00:00"))
    assert (slot.hour, slot.minute) == (20, 30)  # 02:00 in UTC+05:30


async def test_patch_replaces_only_what_it_gives_and_pausing_clears_the_next_run(
    client: httpx.AsyncClient,
) -> None:
    created = await _create(client)
    paused = await client.patch(f"/v1/policies/{created['id']}", json={"enabled": False})
    assert paused.status_code == 200, paused.text
    assert paused.json()["enabled"] is False
    assert paused.json()["next_run_at"] is None
    assert paused.json()["schedule"] == created["schedule"]
    resumed = await client.patch(
        f"/v1/policies/{created['id']}",
        json={"enabled": True, "schedule": {"cron": "30 4 * * 0"}},
    )
    slot = datetime.fromisoformat(resumed.json()["next_run_at"].replace("Z", "+00:00"))
    assert (slot.weekday(), slot.hour, slot.minute) == (6, 4, 30)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"schedule": {"cron": "every night"}}, "schedule.cron"),
        ({"schedule": {"cron": "0 2 * * *", "timezone": "Mars/Olympus"}}, "schedule.timezone"),
        ({"name": "../etc"}, "name"),
        ({"full_every": {"incrementals": 3, "days": 2}}, "full_every"),
        ({"retention": {"last": 0}}, "retention.last"),
        ({"backup": {"mode": "push", "ttl_seconds": 60}}, "backup"),
        ({"selector": {"domains": []}}, "selector.domains"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_an_invalid_policy_is_422_and_nothing_is_stored(
    client: httpx.AsyncClient, changes: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/policies", json={**BODY, **changes})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid-request"
    assert any(e["field"].startswith(f"body.{field}") for e in response.json()["errors"])
    assert (await client.get("/v1/policies")).json()["items"] == []


async def test_a_taken_name_is_409_and_an_unknown_host_404(client: httpx.AsyncClient) -> None:
    await _create(client)
    taken = await client.post("/v1/policies", json=BODY)
    assert taken.status_code == 409
    assert taken.json()["code"] == "invalid-state"
    elsewhere = await client.post(
        "/v1/policies", json={**BODY, "name": "other", "selector": {"host": "nowhere"}}
    )
    assert elsewhere.status_code == 404
    assert elsewhere.json()["code"] == "host-not-found"


async def test_a_deleted_policy_is_gone_with_its_runs(client: httpx.AsyncClient) -> None:
    created = await _create(client)
    assert (await client.delete(f"/v1/policies/{created['id']}")).status_code == 204
    for path in (f"/v1/policies/{created['id']}", f"/v1/policies/{created['id']}/runs"):
        gone = await client.get(path)
        assert gone.status_code == 404
        assert gone.json()["code"] == "policy-not-found"


async def test_a_retried_create_with_its_idempotency_key_makes_one_policy(
    client: httpx.AsyncClient,
) -> None:
    headers = {"Idempotency-Key": "nightly-1"}
    first = await client.post("/v1/policies", json=BODY, headers=headers)
    again = await client.post("/v1/policies", json=BODY, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert len((await client.get("/v1/policies")).json()["items"]) == 1
    other = await client.post("/v1/policies", json={**BODY, "name": "x"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency-conflict"
