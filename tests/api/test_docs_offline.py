"""/docs and /redoc load every file from the service (hypervisor networks are
offline), and the served OpenAPI gives every operation a summary, the codes of its
problems and, where it takes a body, examples that the service accepts."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from jsonschema import Draft202012Validator
from lxml import html

from app.hosts.registry import HypervisorFactory, ManagedHypervisor
from tests.support.fake_hypervisor import FakeHypervisor

DOC_PAGES = ["/docs", "/redoc"]
PROBLEM_JSON = "application/problem+json"
# What each file a page loads must be served as.
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}
ABSOLUTE_URL = re.compile(r"""(?:https?:)?//[^\s"'<>]+""")
# The one domain of the fake host `local`, and its one disk, `vda`.
DOMAIN = "/v1/hosts/local/domains/fake"


@pytest.fixture
def hypervisor_factory() -> HypervisorFactory:
    """A fake host `local` with one domain, `fake`: nothing here needs libvirtd."""

    def make(name: str, uri: str) -> ManagedHypervisor:
        return FakeHypervisor(name=name, uri=uri)

    return make


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    return dict((await client.get("/openapi.json")).json())


def _xpath(page: str, query: str) -> list[str]:
    found = html.fromstring(page).xpath(query)
    assert isinstance(found, list)
    return [str(item) for item in found]


def _loaded_by(page: str) -> list[str]:
    """Every URL the page makes the browser fetch: its elements' and the spec's."""
    urls = _xpath(page, "//@src | //@href | //redoc/@spec-url")
    urls += re.findall(r"url: '([^']*)'", page)  # Swagger UI's spec, in its inline script
    return urls


@pytest.mark.parametrize("path", DOC_PAGES)
async def test_a_docs_page_loads_every_file_from_the_service(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    page = response.text
    assert ABSOLUTE_URL.findall(page) == []
    urls = _loaded_by(page)
    assert "/openapi.json" in urls
    assert len(urls) >= 3  # the spec, the favicon, the script (and Swagger UI's style sheet)
    for url in urls:
        assert urlsplit(url).netloc == "", url  # "//cdn…" has one
        assert url.startswith("/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        suffix = url[url.rindex(".") :]
        assert asset.headers["content-type"].startswith(CONTENT_TYPES[suffix]), url
        assert len(asset.content) > 4096, url


@pytest.mark.parametrize("path", DOC_PAGES)
async def test_a_docs_page_lets_the_browser_fetch_from_the_service_only(
    client: httpx.AsyncClient, path: str
) -> None:
    # ReDoc's bundle asks cdn.redoc.ly for a logo: only the policy stops it.
    response = await client.get(path)
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    for name in ("default-src", "script-src", "img-src", "connect-src", "font-src"):
        sources = directives[name].split()
        assert sources[0] == "'self'", name
        assert all(s.startswith("'sha256-") or s == "data:" for s in sources[1:]), name
    inline_scripts = _xpath(response.text, "//script[not(@src)]")
    hashes = [s for s in directives["script-src"].split() if s.startswith("'sha256-")]
    assert len(hashes) == len(inline_scripts)


async def test_the_docs_and_their_files_are_outside_the_openapi(spec: dict[str, Any]) -> None:
    assert not [path for path in spec["paths"] if path.startswith(("/docs", "/redoc"))]


def _operations(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    ]


def test_every_operation_declares_a_summary(app: FastAPI, spec: dict[str, Any]) -> None:
    # FastAPI would make one from the function's name ("Livez"): each route says its own.
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.include_in_schema:
            assert route.summary, context.path_format
    for where, operation in _operations(spec):
        assert operation["summary"].strip(), where


def test_every_problem_response_names_its_codes(spec: dict[str, Any]) -> None:
    for where, operation in _operations(spec):
        for status, response in operation["responses"].items():
            if int(status) < 400 or PROBLEM_JSON not in response.get("content", {}):
                continue  # /readyz's 503 is its own report, not a problem
            constraint = response["content"][PROBLEM_JSON]["schema"]["allOf"][1]
            codes = constraint["properties"].get("code", {}).get("enum", [])
            assert codes, (where, status)
            assert all(f"`{code}`" in response["description"] for code in codes), (where, status)


def _examples(spec: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    body = operation["requestBody"]["content"]["application/json"]
    return dict(body.get("examples", {}))


def test_every_request_body_has_examples_valid_against_its_schema(spec: dict[str, Any]) -> None:
    with_body = [(w, op) for w, op in _operations(spec) if "requestBody" in op]
    assert len(with_body) >= 6
    for where, operation in with_body:
        examples = _examples(spec, operation)
        assert examples, where
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        validator = _validator(spec, schema)
        for name, example in examples.items():
            assert example["summary"], (where, name)
            errors = [e.message for e in validator.iter_errors(example["value"])]
            assert errors == [], (where, name)


def _validator(spec: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator({**schema, "components": spec["components"]})


def _answer(spec: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    content = spec["paths"][path][method]["responses"][str(status)]["content"]
    return dict(content["application/json"])


def test_the_example_answers_are_valid_against_their_schemas(spec: dict[str, Any]) -> None:
    answers = [
        (where, response["content"]["application/json"])
        for where, operation in _operations(spec)
        for status, response in operation["responses"].items()
        if int(status) < 300
        and "example" in response.get("content", {}).get("application/json", {})
    ]
    assert len(answers) >= 4
    for where, answer in answers:
        errors = [
            e.message for e in _validator(spec, answer["schema"]).iter_errors(answer["example"])
        ]
        assert errors == [], where


async def _send_examples(
    client: httpx.AsyncClient, spec: dict[str, Any], method: str, path: str, url: str
) -> list[httpx.Response]:
    examples = _examples(spec, spec["paths"][path][method])
    assert examples, path
    return [
        await client.request(method, url, json=example["value"]) for example in examples.values()
    ]


@pytest.mark.parametrize(
    ("method", "path", "url", "status"),
    [
        ("post", "/v1/hosts", "/v1/hosts", 201),
        ("post", "/v1/hosts/{host}/domains/{domain}/backups", f"{DOMAIN}/backups", 202),
        ("post", "/v1/hosts/{host}/domains/{domain}/checkpoints", f"{DOMAIN}/checkpoints", 201),
        ("post", "/v1/policies", "/v1/policies", 201),
    ],
)
async def test_the_service_accepts_the_example_requests(
    client: httpx.AsyncClient,
    spec: dict[str, Any],
    method: str,
    path: str,
    url: str,
    status: int,
) -> None:
    answer = _answer(spec, method, path, status)["example"]
    for response in await _send_examples(client, spec, method, path, url):
        assert response.status_code == status, response.text
        assert sorted(response.json()) == sorted(answer)  # the example shows every field


async def test_the_service_accepts_the_example_policy_changes(
    client: httpx.AsyncClient, spec: dict[str, Any]
) -> None:
    policy = {"name": "weekly", "schedule": {"cron": "0 1 * * 0"}}
    created = await client.post("/v1/policies", json=policy)
    url = f"/v1/policies/{created.json()['id']}"
    for response in await _send_examples(client, spec, "patch", "/v1/policies/{policy_id}", url):
        assert response.status_code == 200, response.text
