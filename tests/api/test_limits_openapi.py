"""What the served OpenAPI promises about limits and idempotency is what is sent."""

from __future__ import annotations

from typing import Any

import httpx


async def _operations(client: httpx.AsyncClient) -> dict[str, Any]:
    paths: dict[str, Any] = (await client.get("/openapi.json")).json()["paths"]
    return paths


async def test_limited_routes_document_429_as_a_problem(client: httpx.AsyncClient) -> None:
    paths = await _operations(client)
    for path, method in [
        ("/v1/hosts/{host}/domains/{domain}/backups", "post"),
        ("/v1/events", "get"),
        ("/v1/backups/{backup_id}/events", "get"),
    ]:
        documented = paths[path][method]["responses"]["429"]["content"]
        assert list(documented) == ["application/problem+json"], path


async def test_the_idempotency_key_documents_the_concurrent_behaviour(
    client: httpx.AsyncClient,
) -> None:
    paths = await _operations(client)
    for path in [
        "/v1/hosts/{host}/domains/{domain}/backups",
        "/v1/hosts/{host}/domains/{domain}/checkpoints",
        "/v1/backups/{backup_id}/restores",
    ]:
        operation = paths[path]["post"]
        header = next(p for p in operation["parameters"] if p["name"] == "Idempotency-Key")
        assert "idempotency-in-progress" in header["description"]
        assert "409" in operation["responses"]


async def test_last_event_id_is_documented_as_ascii_digits(client: httpx.AsyncClient) -> None:
    paths = await _operations(client)
    for path in ["/v1/events", "/v1/backups/{backup_id}/events"]:
        header = next(p for p in paths[path]["get"]["parameters"] if p["name"] == "Last-Event-ID")
        assert header["schema"]["anyOf"][0]["pattern"] == "^[0-9]{1,19}$"
