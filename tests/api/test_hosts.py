"""Hosts against the real libvirtd: `local` and a second host by remote URI."""

from __future__ import annotations

import httpx
import pytest

REMOTE_URI = "qemu+tcp://127.0.0.1/system"
pytestmark = pytest.mark.libvirt


async def test_local_is_connected_with_versions(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/hosts/local")
    assert response.status_code == 200
    host = response.json()
    assert host["name"] == "local"
    assert host["uri"] == "qemu:///system"
    assert host["state"] == "connected"
    assert host["error"] is None
    assert host["libvirt_version"].count(".") == 2
    assert host["hypervisor_version"].count(".") == 2
    assert host["checked_at"] is not None


async def test_a_remote_host_is_registered_listed_and_removed(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/hosts", json={"name": "loopback", "uri": REMOTE_URI})
    assert created.status_code == 201
    assert created.headers["location"] == "/v1/hosts/loopback"
    assert created.json()["state"] == "connected"
    names = [h["name"] for h in (await client.get("/v1/hosts")).json()["items"]]
    assert names == ["local", "loopback"]
    assert (await client.delete("/v1/hosts/loopback")).status_code == 204
    missing = await client.get("/v1/hosts/loopback")
    assert missing.status_code == 404
    assert missing.json()["code"] == "host-not-found"


async def test_an_unreachable_host_is_recorded_disconnected_with_the_reason(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/hosts", json={"name": "gone", "uri": "qemu+tcp://127.0.0.1:1/system"}
    )
    assert response.status_code == 201
    host = response.json()
    assert host["state"] == "disconnected"
    assert "127.0.0.1" in host["error"] or "onnection refused" in host["error"]
    domains = await client.get("/v1/hosts/gone/domains")
    assert domains.status_code == 503
    assert domains.json()["code"] == "host-unreachable"


async def test_a_taken_name_is_409_and_changes_nothing(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/hosts", json={"name": "local", "uri": REMOTE_URI})
    assert response.status_code == 409
    assert response.json()["code"] == "invalid-state"
    assert (await client.get("/v1/hosts/local")).json()["uri"] == "qemu:///system"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "bad name", "uri": REMOTE_URI}, "body.name"),
        ({"name": "h"}, "body.uri"),
        ({"name": "h", "uri": REMOTE_URI, "extra": 1}, "body.extra"),
    ],
)
async def test_a_malformed_host_is_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await client.post("/v1/hosts", json=body)
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "invalid-request"
    assert field in [error["field"] for error in problem["errors"]]
    assert [h["name"] for h in (await client.get("/v1/hosts")).json()["items"]] == ["local"]


async def test_local_cannot_be_deleted(client: httpx.AsyncClient) -> None:
    response = await client.delete("/v1/hosts/local")
    assert response.status_code == 409
    assert response.json()["code"] == "invalid-state"


async def test_unknown_routes_and_methods_are_problems(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/nothing")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    wrong_method = await client.put("/v1/hosts")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method-not-allowed"
