"""What a web page in the operator's browser can make of the API (API.md,
"Requests from browsers"): a page that re-resolved its name to 127.0.0.1 (DNS
rebinding), a form posted from another site, a text body sent without a
preflight. Each is refused before a route runs, and nothing changes."""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings, TokenSetting
from tests.support.service import served

HOST = {"name": "h2", "uri": "qemu+tcp://127.0.0.1/system"}
RECONCILE = "/v1/hosts/local/domains/x/checkpoints/reconcile"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
EVIL = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}


def _assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


async def _host_names(client: httpx.AsyncClient) -> list[str]:
    listed = (await client.get("/v1/hosts")).json()
    return [host["name"] for host in listed["items"]]


@pytest.mark.parametrize("host", ["rebind.example", "rebind.example:8080", "10.0.0.1"])
async def test_a_foreign_host_name_is_421_without_tokens(
    client: httpx.AsyncClient, host: str
) -> None:
    read = await client.get("/v1/hosts", headers={"Host": host})
    _assert_problem(read, 421, "misdirected-request")
    write = await client.post("/v1/hosts", json=HOST, headers={"Host": host})
    _assert_problem(write, 421, "misdirected-request")
    assert await _host_names(client) == ["local"]


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:8080", "127.0.0.1:9", "127.8.9.10", "[::1]:8080", "[::1]"]
)
async def test_loopback_names_are_served(client: httpx.AsyncClient, host: str) -> None:
    response = await client.get("/v1/hosts", headers={"Host": host})
    assert response.status_code == 200, response.text


async def test_a_name_in_allowed_hosts_is_served(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"allowed_hosts": ["vmbackup.internal"]}))
    async with _client(app) as client:
        allowed = await client.get("/v1/hosts", headers={"Host": "vmbackup.internal:8080"})
        assert allowed.status_code == 200, allowed.text
        other = await client.get("/v1/hosts", headers={"Host": "rebind.example"})
        _assert_problem(other, 421, "misdirected-request")


def test_allowed_hosts_reads_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMBACKUP_ALLOWED_HOSTS", "Proxy.example, vmbackup.internal")
    assert Settings().allowed_hosts == ["proxy.example", "vmbackup.internal"]


async def test_a_form_post_from_another_site_is_403(client: httpx.AsyncClient) -> None:
    reconcile = await client.post(RECONCILE, content=b"dry_run=false", headers={**FORM, **EVIL})
    _assert_problem(reconcile, 403, "forbidden")
    register = await client.post("/v1/hosts", content=json.dumps(HOST), headers={**FORM, **EVIL})
    _assert_problem(register, 403, "forbidden")
    assert await _host_names(client) == ["local"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Origin": "http://localhost:9999"},  # another port is another origin
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_a_json_write_from_another_origin_is_403(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.post("/v1/hosts", json=HOST, headers=headers)
    _assert_problem(response, 403, "forbidden")
    deleted = await client.delete("/v1/hosts/local", headers=headers)
    _assert_problem(deleted, 403, "forbidden")
    assert await _host_names(client) == ["local"]


async def test_a_write_from_the_service_s_own_origin_is_served(client: httpx.AsyncClient) -> None:
    own = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    response = await client.post("/v1/hosts", json=HOST, headers=own)
    assert response.status_code == 201, response.text
    assert sorted(await _host_names(client)) == ["h2", "local"]


async def test_a_read_from_another_origin_is_served(client: httpx.AsyncClient) -> None:
    # The browser keeps the answer from the page (no CORS headers); reading changes nothing.
    response = await client.get("/v1/hosts", headers=EVIL)
    assert response.status_code == 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "text/plain; charset=utf-8", "multipart/form-data; boundary=x"]
)
async def test_a_body_that_is_not_json_is_415(client: httpx.AsyncClient, content_type: str) -> None:
    response = await client.post(
        "/v1/hosts", content=json.dumps(HOST), headers={"Content-Type": content_type}
    )
    _assert_problem(response, 415, "unsupported-media-type")
    assert await _host_names(client) == ["local"]


async def test_a_body_without_a_content_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/hosts", content=json.dumps(HOST))
    _assert_problem(response, 415, "unsupported-media-type")
    assert await _host_names(client) == ["local"]


async def test_a_bodiless_post_refuses_a_form_content_type(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{RECONCILE}?dry_run=true", headers=FORM)
    _assert_problem(response, 415, "unsupported-media-type")


async def test_a_json_suffix_type_is_json(client: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "application/merge-patch+json"}
    response = await client.post("/v1/hosts", content=json.dumps(HOST), headers=headers)
    assert response.status_code == 201, response.text


async def test_with_tokens_any_host_is_served_but_foreign_writes_are_not(
    settings: Settings,
) -> None:
    token = TokenSetting(name="ops", sha256=hashlib.sha256(b"ops").hexdigest(), scopes=["admin"])
    app = create_app(settings.model_copy(update={"tokens": [token]}))
    auth = {"Authorization": "Bearer ops"}
    async with _client(app) as client:
        named = await client.get("/v1/hosts", headers={**auth, "Host": "vmbackup.example.net"})
        assert named.status_code == 200, named.text
        forged = await client.post("/v1/hosts", json=HOST, headers={**auth, **EVIL})
        _assert_problem(forged, 403, "forbidden")
        listed = (await client.get("/v1/hosts", headers=auth)).json()
        assert [host["name"] for host in listed["items"]] == ["local"]


async def test_the_openapi_names_the_browser_refusals(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    register = spec["paths"]["/v1/hosts"]["post"]["responses"]
    assert "`unsupported-media-type`" in register["415"]["description"]
    assert "`misdirected-request`" in register["421"]["description"]
    assert "415" not in spec["paths"]["/v1/hosts"]["get"]["responses"]


@pytest.mark.libvirt
def test_a_real_server_refuses_what_a_web_page_sends(settings: Settings, tmp_path: Path) -> None:
    # Raw requests on the wire, as a browser would send them to `vmbackup serve`.
    with served(settings, tmp_path / "serve.log") as service:
        rebound = _raw(service.port, "GET", "/v1/hosts", {"Host": "rebind.example"})
        assert (rebound.status, _code(rebound)) == (421, "misdirected-request")
        form = _raw(
            service.port,
            "POST",
            RECONCILE,
            {**FORM, **EVIL, "Host": f"127.0.0.1:{service.port}"},
            b"dry_run=false",
        )
        assert (form.status, _code(form)) == (403, "forbidden")
        text = _raw(
            service.port,
            "POST",
            "/v1/hosts",
            {"Content-Type": "text/plain", "Host": f"localhost:{service.port}"},
            json.dumps(HOST).encode(),
        )
        assert (text.status, _code(text)) == (415, "unsupported-media-type")
        hosts = _raw(service.port, "GET", "/v1/hosts", {"Host": f"127.0.0.1:{service.port}"})
        assert [host["name"] for host in json.loads(hosts.body)["items"]] == ["local"]


class _Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


def _raw(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> _Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return _Answer(response.status, response.read())
    finally:
        connection.close()


def _code(answer: _Answer) -> str:
    return str(json.loads(answer.body)["code"])


@asynccontextmanager
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An ASGI client inside the lifespan of an app built with other settings."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client
