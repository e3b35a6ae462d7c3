from __future__ import annotations

import hashlib

import httpx
import pytest
from fastapi import FastAPI

from app.hosts.registry import HypervisorFactory
from app.main import create_app
from app.settings import Settings, TokenSetting

REMOTE_URI = "qemu+tcp://127.0.0.1/system"
TOKENS = {"reader": ["read"], "operator": ["operate"], "boss": ["admin"]}


def _token(name: str) -> str:
    return f"secret-{name}"


@pytest.fixture
def app(settings: Settings, hypervisor_factory: HypervisorFactory | None) -> FastAPI:
    tokens = [
        TokenSetting(
            name=name, sha256=hashlib.sha256(_token(name).encode()).hexdigest(), scopes=scopes
        )  # type: ignore[arg-type]
        for name, scopes in TOKENS.items()
    ]
    return create_app(settings.model_copy(update={"tokens": tokens}), hypervisor_factory)


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(name)}"}


async def test_no_token_is_401_with_a_bearer_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/hosts")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "unauthorized"


async def test_a_wrong_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/hosts", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


async def test_read_scope_lists_but_cannot_administer(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/hosts", headers=_auth("reader"))).status_code == 200
    response = await client.post(
        "/v1/hosts", json={"name": "h2", "uri": REMOTE_URI}, headers=_auth("reader")
    )
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert (await client.get("/v1/hosts/h2", headers=_auth("reader"))).status_code == 404


async def test_operate_scope_cannot_delete_a_host(client: httpx.AsyncClient) -> None:
    response = await client.delete("/v1/hosts/local", headers=_auth("operator"))
    assert response.status_code == 403


async def test_admin_scope_includes_read_and_admin(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/hosts", headers=_auth("boss"))).status_code == 200
    response = await client.post(
        "/v1/hosts", json={"name": "h2", "uri": REMOTE_URI}, headers=_auth("boss")
    )
    assert response.status_code == 201


async def test_health_needs_no_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/livez")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
