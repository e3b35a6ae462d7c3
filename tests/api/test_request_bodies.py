"""Request bodies: capped while they stream in, read only after authentication,
and anything that is not UTF-8 JSON is a 422 problem, never a bare 400."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import requests
from fastapi import FastAPI

from app.hosts.registry import HypervisorFactory
from app.main import create_app
from app.settings import Settings, TokenSetting
from tests.support.fuzz import TOKEN as FUZZ_TOKEN
from tests.support.fuzz import served_app

CAP = 64 * 1024
TOKENS = {"reader": "read", "boss": "admin"}
HOST = {"name": "h2", "uri": "qemu+tcp://127.0.0.1/system"}


@pytest.fixture
def app(settings: Settings, hypervisor_factory: HypervisorFactory | None) -> FastAPI:
    tokens = [
        TokenSetting(name=name, sha256=hashlib.sha256(name.encode()).hexdigest(), scopes=[scope])
        for name, scope in TOKENS.items()
    ]
    update = {"tokens": tokens, "max_body_bytes": CAP}
    return create_app(settings.model_copy(update=update), hypervisor_factory)


JSON = {"Content-Type": "application/json"}


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}", **JSON}


def _assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


async def _hosts(client: httpx.AsyncClient) -> list[str]:
    listed = (await client.get("/v1/hosts", headers=_auth("boss"))).json()
    return [host["name"] for host in listed["items"]]


async def test_a_declared_length_over_the_cap_is_413_before_anything(
    client: httpx.AsyncClient,
) -> None:
    body = json.dumps({**HOST, "pad": "x" * CAP}).encode()
    response = await client.post("/v1/hosts", content=body, headers=_auth("boss"))
    _assert_problem(response, 413, "payload-too-large")
    assert await _hosts(client) == ["local"]


async def test_a_streamed_body_is_cut_off_once_it_passes_the_cap(
    client: httpx.AsyncClient,
) -> None:
    chunk = b" " * 4096
    total_chunks = 8192  # 32 MiB, far past the cap
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield json.dumps(HOST).encode()[:-1] + b","  # no Content-Length: chunked
        for _ in range(total_chunks):
            sent += 1
            yield chunk

    response = await client.post("/v1/hosts", content=chunks(), headers=_auth("boss"))
    _assert_problem(response, 413, "payload-too-large")
    assert sent <= CAP // len(chunk) + 1  # stopped reading, did not drain 32 MiB
    assert await _hosts(client) == ["local"]


async def test_a_body_under_the_cap_is_served(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/hosts", json=HOST, headers=_auth("boss"))
    assert response.status_code == 201


async def test_malformed_json_without_a_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/hosts", content=b"{not json", headers=JSON)
    _assert_problem(response, 401, "unauthorized")


async def test_malformed_json_without_the_scope_is_403(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/hosts", content=b"{not json", headers=_auth("reader"))
    _assert_problem(response, 403, "forbidden")


async def test_every_route_with_a_body_authenticates_before_it_parses(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    with_body = [
        (method, path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    ]
    assert len(with_body) >= 4
    for method, template in with_body:
        path = template.format(
            host="local", domain="d", backup_id=f"{0:032x}", policy_id=f"{0:032x}", name="n"
        )
        response = await client.request(method, path, content=b"\xff{", headers=JSON)
        _assert_problem(response, 401, "unauthorized")


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"name": "h2", "uri": "\xff\xfe"}',
        '{"name": "h2"}'.encode("utf-16"),
        b"[" * 20_000 + b"]" * 20_000,
        b'{"name": "h2", "uri": NaN}',
    ],
)
async def test_a_body_that_is_not_utf8_json_is_a_422_problem(
    client: httpx.AsyncClient, body: bytes
) -> None:
    headers = {**_auth("boss"), "Content-Type": "application/json"}
    response = await client.post("/v1/hosts", content=body, headers=headers)
    _assert_problem(response, 422, "invalid-request")
    assert response.json()["errors"][0]["field"].startswith("body")


@pytest.mark.libvirt
def test_a_real_server_cuts_a_chunked_upload_off_at_the_cap(tmp_path: Path) -> None:
    # Through uvicorn, whose receive() hands the body over as it arrives, with no
    # Content-Length to refuse it by. (A synchronous client sends all it has before
    # it reads the answer, so what it sent says nothing here.)
    def chunks() -> Iterator[bytes]:
        for _ in range(32 * 1024):  # 32 MiB in 1 KiB chunks, far past the 1 MiB default
            yield b" " * 1024

    with served_app(tmp_path) as base_url:
        url = f"{base_url}/v1/hosts"
        headers = {"Authorization": f"Bearer {FUZZ_TOKEN}", "Content-Type": "application/json"}
        try:
            response = requests.post(url, data=chunks(), headers=headers, timeout=30)
        except requests.ConnectionError:
            pytest.fail("the server closed the connection without an answer")
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "payload-too-large"
