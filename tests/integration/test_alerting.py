"""Alerting: the Prometheus rules checked and unit-tested by promtool, the
metrics they read, and a real Prometheus scraping a running service that fires
the failed-backup alert when a backup really fails."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.integration.test_metrics import samples
from tests.support.prometheus import PROMTOOL, PrometheusProcess
from tests.support.service import ServiceProcess, served
from tests.support.vms import TestVM, domain

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "vmbackup-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "vmbackup-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "vmbackup.json"
# What Grafana puts in for the dashboard's variables, so Prometheus can run each query.
GRAFANA_VARIABLES = {"$host": ".*", "$domain": ".*", "$__rate_interval": "1m"}


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True)


def test_the_rule_file_passes_promtool_check() -> None:
    result = _promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    result = _promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _one(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


@pytest.mark.libvirt
async def test_metrics_for_alerts_export_expiry_queue_and_failure(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    pull = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    queued = await start(client, vm)  # waits behind the export: one backup per domain
    found = samples((await client.get("/metrics")).text)
    expiry = datetime.fromisoformat(pull["expires_at"]).timestamp()
    labels = {"host": "local", "domain": vm.name, "backup_id": pull["id"]}
    assert _one(found, "vmbackup_pull_export_expiry_timestamp_seconds", **labels) == pytest.approx(
        expiry
    )
    assert _one(found, "vmbackup_queued_backups", host="local") == 1
    oldest = _one(found, "vmbackup_oldest_queued_timestamp_seconds", host="local")
    assert oldest == pytest.approx(datetime.fromisoformat(queued["created_at"]).timestamp())

    assert (await client.post(f"/v1/backups/{queued['id']}/cancel")).status_code == 202
    domain(libvirt_conn, vm).destroy()  # the export goes with its domain
    failed = await wait_for(client, pull["id"], TERMINAL)
    assert failed["status"] == "failed", failed
    found = samples((await client.get("/metrics")).text)
    ended = datetime.fromisoformat(failed["finished_at"]).timestamp()
    failure = _one(found, "vmbackup_last_failure_timestamp_seconds", host="local", domain=vm.name)
    assert failure == pytest.approx(ended)
    assert _one(found, "vmbackup_queued_backups", host="local") == 0
    assert not [key for key in found if key[0] == "vmbackup_pull_export_expiry_timestamp_seconds"]


# -- a real Prometheus ----------------------------------------------------------------


@pytest.fixture
def service(settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    with served(settings, tmp_path / "service.log") as running:
        yield running


def _firing(alerts: list[dict[str, Any]], name: str, **labels: str) -> list[dict[str, Any]]:
    return [
        alert
        for alert in alerts
        if alert["labels"]["alertname"] == name
        and alert["state"] == "firing"
        and labels.items() <= alert["labels"].items()
    ]


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable, value in GRAFANA_VARIABLES.items():
        queries = [query.replace(variable, value) for query in queries]
    return queries


@pytest.mark.libvirt
def test_prometheus_fires_the_failed_backup_alert_for_a_real_failure(
    service: ServiceProcess, libvirt_conn: libvirt.virConnect, vm: TestVM, tmp_path: Path
) -> None:
    with (
        PrometheusProcess(tmp_path / "prometheus", target=service.url, rules=[RULES]) as prom,
        service.client() as api,
    ):
        response = api.post(f"/v1/hosts/local/domains/{vm.name}/backups", json={"mode": "pull"})
        assert response.status_code == 202, response.text
        backup_id = response.json()["id"]
        exported = f'vmbackup_pull_export_expiry_timestamp_seconds{{backup_id="{backup_id}"}}'
        prom.wait_until(lambda: prom.query(exported), "Prometheus scrapes the ready export")
        assert not _firing(prom.alerts(), "VmbackupBackupFailed", domain=vm.name)

        domain(libvirt_conn, vm).destroy()  # the export goes with its domain: a real failure
        prom.wait_until(
            lambda: api.get(f"/v1/backups/{backup_id}").json()["status"] in TERMINAL,
            "the backup ends",
        )
        assert api.get(f"/v1/backups/{backup_id}").json()["status"] == "failed"
        (alert,) = prom.wait_until(
            lambda: _firing(prom.alerts(), "VmbackupBackupFailed", host="local", domain=vm.name),
            "VmbackupBackupFailed fires",
        )
        assert alert["labels"]["severity"] == "warning"
        assert vm.name in alert["annotations"]["summary"]

        # The dashboard's queries run as they are on the same Prometheus, and between
        # them they show every figure the service exports.
        for query in _dashboard_queries():
            prom.query(query)  # raises unless Prometheus accepts it
        families = {
            family.name
            for family in text_string_to_metric_families(api.get("/metrics").text)
            # `*_created`: when prometheus_client made a counter; not a figure to show
            if family.name.startswith("vmbackup_") and not family.name.endswith("_created")
        }
        shown = " ".join(_dashboard_queries())
        missing = {
            name for name in families if not re.search(rf"\b{name}(_bucket|_total)?\b", shown)
        }
        assert not missing, missing
