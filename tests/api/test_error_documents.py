"""Errors: what the OpenAPI documents is what is sent, and no problem or health
answer carries a host path, a server address or an exception's text."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import libvirt
import pytest
from fastapi import FastAPI

from app.api.state import AppState
from app.db.session import Database
from app.libvirt.errors import map_libvirt_error
from app.redact import redact_paths
from tests.support.vms import TestVM

PROBLEM_JSON = "application/problem+json"
# A PostgreSQL that refuses: nothing listens on port 1 (loopback only).
DEAD_DATABASE = "postgresql+psycopg://vmb_user:s3cr3t-pw@127.0.0.1:1/vmbackup_secret_db"


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    return dict(response.json())


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    ]


def test_every_error_response_is_a_documented_problem(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for method, path, operation in _operations(spec):
        for status, response in operation["responses"].items():
            if int(status) < 400 or (path, status) == ("/readyz", "503"):
                continue
            assert list(response["content"]) == [PROBLEM_JSON], (method, path, status)
            schema = response["content"][PROBLEM_JSON]["schema"]
            assert schema["allOf"][0] == {"$ref": "#/components/schemas/Problem"}
            assert schema["allOf"][1]["properties"]["status"] == {"const": int(status)}


def test_shared_problems_are_documented_where_they_apply(spec: dict[str, Any]) -> None:
    for method, path, operation in _operations(spec):
        responses = operation["responses"]
        where = (method, path)
        for status in ("403", "413", "500"):
            assert status in responses, where
        if path not in ("/livez", "/readyz"):
            assert operation["security"] == [{"bearer": []}], where
            assert "unauthorized" in _codes(responses["401"]), where
        if operation.get("parameters") or operation.get("requestBody"):
            assert "invalid-request" in _codes(responses["422"]), where


def _codes(response: dict[str, Any]) -> list[str]:
    constraint = response["content"][PROBLEM_JSON]["schema"]["allOf"][1]
    return list(constraint["properties"]["code"]["enum"])


def test_route_codes_are_documented(spec: dict[str, Any]) -> None:
    create_host = spec["paths"]["/v1/hosts"]["post"]["responses"]
    assert _codes(create_host["422"]) == ["uri-not-allowed", "invalid-request"]
    start = spec["paths"]["/v1/hosts/{host}/domains/{domain}/backups"]["post"]["responses"]
    assert set(_codes(start["404"])) == {
        "host-not-found",
        "domain-not-found",
        "checkpoint-not-found",
    }
    assert _codes(start["502"]) == ["libvirt-error"]
    assert _codes(start["503"]) == ["host-unreachable", "service-unavailable"]


@pytest.mark.libvirt
async def test_a_5xx_problem_quotes_no_host_path(client: httpx.AsyncClient) -> None:
    # libvirt's reason names the CA certificate file it could not read.
    created = await client.post(
        "/v1/hosts", json={"name": "tls", "uri": "qemu+tls://127.0.0.1:1/system"}
    )
    assert created.status_code == 201
    response = await client.get("/v1/hosts/tls/domains")
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["code"] == "host-unreachable"
    assert "<path>" in problem["detail"]
    assert "/etc/" not in problem["detail"]


def test_redaction_keeps_uris_and_drops_paths() -> None:
    message = (
        "qemu+tcp://127.0.0.1/system: Cannot read '/etc/pki/CA/my cacert.pem': "
        "unable to open /var/lib/vmbackup/x.qcow2; path=/root/.ssh/id_rsa"
    )
    redacted = redact_paths(message)
    assert redacted == (
        "qemu+tcp://127.0.0.1/system: Cannot read '<path>': unable to open <path>; path=<path>"
    )


@pytest.fixture
async def dead_database(app: FastAPI, client: httpx.AsyncClient) -> AsyncIterator[None]:
    """The running app's database swapped for one that refuses connections."""
    state: AppState = app.state.vmbackup
    alive, state.database = state.database, Database(DEAD_DATABASE)
    try:
        yield
    finally:
        await state.database.dispose()
        state.database = alive


@pytest.mark.usefixtures("dead_database")
async def test_readyz_names_the_failed_check_not_the_exception(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == "unreachable"
    for secret in ("127.0.0.1", "s3cr3t", "vmb_user", "vmbackup_secret_db", "rror"):
        assert secret not in response.text


@pytest.mark.usefixtures("dead_database")
async def test_a_database_that_does_not_answer_is_503_service_unavailable(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/backups")
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["code"] == "service-unavailable"
    assert "127.0.0.1" not in response.text
    assert "s3cr3t" not in response.text


@pytest.mark.libvirt
def test_a_libvirt_error_keeps_its_code_and_logs_what_it_hides(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(libvirt.libvirtError) as raised:
        libvirt.open("qemu+tls://127.0.0.1:1/system")  # names the CA file it cannot read
    caplog.set_level(logging.INFO, logger="app.libvirt.errors")
    error = map_libvirt_error(raised.value, "h")
    assert error.status == 502
    assert error.extra["libvirt_code"] == raised.value.get_error_code()
    assert "<path>" in error.detail
    assert "/etc/" not in error.detail
    assert "/etc/" in caplog.text


@pytest.mark.libvirt
async def test_quiesce_without_a_guest_agent_is_409_not_a_server_error(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    response = await client.post(
        f"/v1/hosts/local/domains/{vm.name}/checkpoints", json={"name": "q", "quiesce": True}
    )
    assert response.status_code == 409
    problem = response.json()
    assert problem["code"] == "operation-unsupported"
    assert problem["libvirt_code"] == libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED
