"""Every route in the OpenAPI document, and the status page's data, against no
token, a wrong token and each scope: 401 without a valid token, 403 with a scope
below what the route needs, never either with enough. A route added without a
verdict here fails the test, so none is forgotten."""

from __future__ import annotations

import hashlib
import re
import uuid

import httpx
import pytest
from fastapi import FastAPI

from app.hosts.registry import HypervisorFactory
from app.main import create_app
from app.settings import Scope, Settings, TokenSetting

RANK: dict[Scope | None, int] = {None: -1, "read": 0, "operate": 1, "admin": 2}
PUBLIC = {"/livez", "/readyz"}
ADMIN_WRITES = ("/v1/hosts", "/v1/policies")
STATUS_PAGE_DATA = "/ui/fragments/overview"


def required_scope(method: str, path: str) -> Scope | None:
    """What API.md's Conventions say each route needs."""
    if path in PUBLIC:
        return None
    if method == "DELETE" or path.startswith("/v1/admin"):
        return "admin"
    if method == "GET":
        return "read"
    if method == "PATCH" or (method == "POST" and path in ADMIN_WRITES):
        return "admin"
    return "operate"


def _token(scope: str) -> str:
    return f"secret-{scope}"


@pytest.fixture
def app(settings: Settings, hypervisor_factory: HypervisorFactory | None) -> FastAPI:
    tokens = [
        TokenSetting(
            name=scope, sha256=hashlib.sha256(_token(scope).encode()).hexdigest(), scopes=[scope]
        )  # type: ignore[list-item]
        for scope in ("read", "operate", "admin")
    ]
    return create_app(settings.model_copy(update={"tokens": tokens}), hypervisor_factory)


def _concrete(path: str) -> str:
    values = {"host": "local", "domain": "no-such-domain", "name": "no-such-checkpoint"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), str(uuid.uuid4())), path)


async def _routes(client: httpx.AsyncClient) -> list[tuple[str, str]]:
    schema = (await client.get("/openapi.json", headers=_auth("read"))).json()
    found = [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops]
    return [*found, ("GET", STATUS_PAGE_DATA)]


def _auth(scope: str | None) -> dict[str, str]:
    return {} if scope is None else {"Authorization": f"Bearer {_token(scope)}"}


async def test_every_route_answers_401_403_or_serves_as_its_scope_says(
    client: httpx.AsyncClient,
) -> None:
    routes = await _routes(client)
    assert len(routes) > 30  # the whole API, not an empty schema
    wrong = {"Authorization": "Bearer not-a-token"}
    # A stream is refused before it starts by a malformed resume id, once auth passed.
    stream = {"Last-Event-ID": "junk"}
    for method, template in routes:
        path, needed = _concrete(template), required_scope(method, template)
        send = {"json": {}} if method in ("POST", "PATCH") else {}
        for label, headers in [("none", {}), ("wrong", wrong)]:
            answer = await client.request(method, path, headers={**headers, **stream}, **send)
            expected = 200 if needed is None else 401
            assert answer.status_code == expected or (
                needed is None and answer.status_code == 503
            ), (
                method,
                template,
                label,
                answer.status_code,
                answer.text,
            )
        for scope in ("read", "operate", "admin"):
            answer = await client.request(method, path, headers={**_auth(scope), **stream}, **send)
            if RANK[scope] < RANK[needed]:
                assert answer.status_code == 403, (method, template, scope, answer.text)
                assert answer.json()["code"] == "forbidden"
            else:
                assert answer.status_code not in (401, 403), (method, template, scope, answer.text)
