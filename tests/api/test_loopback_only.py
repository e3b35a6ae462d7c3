"""With no tokens configured, only loopback clients are served: checked against
each request's socket peer, not against the address the settings name."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request

from app.api.auth import authenticate
from app.errors import Forbidden
from app.main import create_app
from app.settings import Settings, TokenSetting

ROUTES = [
    "/v1/hosts",
    "/livez",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/redoc",
    "/docs/assets/swagger-ui-bundle.js",
    "/v1/nothing",
]


async def _client(app: FastAPI, peer: tuple[str, int]) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=peer)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client


@pytest.fixture
async def remote(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(app, ("192.0.2.10", 40000)):
        yield client


@pytest.mark.parametrize("path", ROUTES)
async def test_a_client_off_loopback_is_refused_on_every_route(
    remote: httpx.AsyncClient, path: str
) -> None:
    response = await remote.get(path)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "forbidden"


async def test_a_client_off_loopback_cannot_register_a_host(remote: httpx.AsyncClient) -> None:
    body = {"name": "h2", "uri": "qemu+tcp://127.0.0.1/system"}
    assert (await remote.post("/v1/hosts", json=body)).status_code == 403


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
async def test_loopback_clients_are_served(app: FastAPI, address: str) -> None:
    async for client in _client(app, (address, 40000)):
        assert (await client.get("/v1/hosts")).status_code == 200


@pytest.mark.parametrize("address", ["::ffff:192.0.2.10", "10.0.0.1", "testclient", ""])
async def test_other_peers_are_refused(app: FastAPI, address: str) -> None:
    async for client in _client(app, (address, 40000)):
        assert (await client.get("/livez")).status_code == 403


async def test_with_tokens_a_client_off_loopback_is_served_by_its_token(
    settings: Settings,
) -> None:
    digest = hashlib.sha256(b"secret").hexdigest()
    tokens = [TokenSetting(name="ops", sha256=digest, scopes=["read"])]
    app = create_app(settings.model_copy(update={"tokens": tokens}))
    async for client in _client(app, ("192.0.2.10", 40000)):
        assert (await client.get("/v1/hosts")).status_code == 401
        ok = await client.get("/v1/hosts", headers={"Authorization": "Bearer secret"})
        assert ok.status_code == 200


def test_authentication_itself_refuses_a_remote_client_without_tokens(
    settings: Settings,
) -> None:
    # Behind the middleware, the route's own check: a second line, not the first.
    remote = Request({"type": "http", "client": ("192.0.2.10", 1), "headers": []})
    with pytest.raises(Forbidden):
        authenticate(remote, settings)
    local = Request({"type": "http", "client": ("127.0.0.1", 1), "headers": []})
    assert authenticate(local, settings).name == "anonymous"
