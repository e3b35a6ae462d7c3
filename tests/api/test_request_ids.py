"""X-Request-ID: kept when a client sends a plain one, else made; returned on every
answer, refusals included, and named on the request's log lines with the ids of
its path."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app import logs

pytestmark = pytest.mark.libvirt


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure("info", stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(stream: io.StringIO, request_id: str) -> list[dict[str, object]]:
    found = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in found if line.get("request_id") == request_id]


async def test_a_client_request_id_is_kept_and_names_the_lines(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    backup_id = str(uuid.uuid4())
    response = await client.get(f"/v1/backups/{backup_id}", headers={"X-Request-ID": "ci-42.a"})
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "ci-42.a"
    (access,) = _lines(log_stream, "ci-42.a")
    assert access["logger"] == "app.access"
    assert access["backup_id"] == backup_id
    assert (access["method"], access["status"]) == ("GET", 404)
    assert access["path"] == f"/v1/backups/{backup_id}"


async def test_lines_inside_a_request_name_its_host_and_domain(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    response = await client.get("/v1/hosts/local/domains/vmbt-no-such-domain")
    assert response.status_code == 404
    request_id = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # made: none was sent
    lines = _lines(log_stream, request_id)
    # libvirt's refusal, logged while the request ran, then the access line.
    assert [line["logger"] for line in lines] == ["app.libvirt.errors", "app.access"]
    for line in lines:
        assert (line["host"], line["domain"]) == ("local", "vmbt-no-such-domain")


@pytest.mark.parametrize("given", ["", "a b", "x" * 129, "é", "id\x00"])
async def test_an_unusable_request_id_is_replaced(client: httpx.AsyncClient, given: str) -> None:
    response = await client.get("/livez", headers=[("X-Request-ID", given.encode("latin-1"))])
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


async def test_every_answer_has_one_even_a_refusal(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/hosts", content=b"x" * (2 * 1024 * 1024), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
