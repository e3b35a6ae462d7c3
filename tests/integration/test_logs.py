"""A real `vmbackup serve` logs JSON lines, and every line about a backup or a
restore names it with its host and domain: a push backup and a restore of it on
a real domain, then every line of the service's output parsed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests.support.service import ServiceProcess, served
from tests.support.vms import TestVM

pytestmark = pytest.mark.libvirt
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'vmbackup.db'}"  # what is under test is the output


@pytest.fixture
def service(settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    with served(settings, tmp_path / "service.log") as running:
        yield running


def _until_terminal(api: httpx.Client, path: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found: dict[str, Any] = api.get(path).json()
        if found["status"] in TERMINAL:
            return found
        time.sleep(0.2)
    raise TimeoutError(path)


def _log_lines(service: ServiceProcess) -> list[dict[str, Any]]:
    text = service.log.read_text()
    return [json.loads(line) for line in text.splitlines()]  # any other line fails here


def test_backup_and_restore_lines_name_their_ids_host_and_domain(
    service: ServiceProcess, vm: TestVM
) -> None:
    with service.client() as api:
        started = api.post(
            f"/v1/hosts/local/domains/{vm.name}/backups",
            json={"mode": "push", "kind": "full"},
            headers={"X-Request-ID": "logs-test-start"},
        )
        assert started.status_code == 202, started.text
        assert started.headers["X-Request-ID"] == "logs-test-start"
        backup_id = started.json()["id"]
        assert _until_terminal(api, f"/v1/backups/{backup_id}")["status"] == "succeeded"
        restore = api.post(f"/v1/backups/{backup_id}/restores", json={}).json()
        assert _until_terminal(api, f"/v1/restores/{restore['id']}")["status"] == "succeeded"
    service.stop()  # every line written

    lines = _log_lines(service)
    for line in lines:
        assert {"timestamp", "level", "logger", "event"} <= line.keys(), line
    request = [line for line in lines if line.get("request_id") == "logs-test-start"]
    assert [line["logger"] for line in request][-1] == "app.access"
    assert all(line["domain"] == vm.name and line["host"] == "local" for line in request)

    about_backup = [line for line in lines if line.get("backup_id") == backup_id]
    worker_lines = [line for line in about_backup if not line["logger"].startswith("app.access")]
    events = [line["event"] for line in worker_lines]
    assert any("starting -> running" in event for event in events), events
    assert any("running -> succeeded" in event for event in events), events
    for line in worker_lines:
        assert line["host"] == "local", line
        # The claim names the domain by UUID (its name is read after); every later line by both.
        assert line.get("domain") == vm.name or line.get("domain_uuid") == vm.uuid, line

    about_restore = [line for line in lines if line.get("restore_id") == restore["id"]]
    restored = [line for line in about_restore if "running -> succeeded" in line["event"]]
    assert len(restored) == 1, about_restore
    assert restored[0]["backup_id"] == backup_id
    assert (restored[0]["host"], restored[0]["domain"]) == ("local", vm.name)
