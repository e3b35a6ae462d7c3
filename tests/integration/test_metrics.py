from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.support.vms import TestVM

pytestmark = pytest.mark.libvirt


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_report_backups_bytes_rpo_hosts_and_requests(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    backup = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
    assert backup["status"] == "succeeded"
    queued = await start(client, vm, mode="pull")
    await client.post(f"/v1/backups/{queued['id']}/cancel")

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    domain = frozenset({("host", "local"), ("domain", vm.name)})
    assert found[("vmbackup_backups", frozenset({("status", "succeeded")}))] == 1
    assert found[("vmbackup_backups", frozenset({("status", "failed")}))] == 0
    stored = found[("vmbackup_backup_bytes", domain)]
    assert stored == sum(disk["bytes"] for disk in backup["disks"] if disk["bytes"]) > 0
    finished = datetime.fromisoformat(backup["finished_at"]).timestamp()
    assert found[("vmbackup_last_success_timestamp_seconds", domain)] == pytest.approx(finished)
    assert found[("vmbackup_last_backup_duration_seconds", domain)] > 0
    assert found[("vmbackup_host_up", frozenset({("host", "local")}))] == 1
    gets = frozenset({("method", "GET"), ("route", "/v1/backups/{backup_id}"), ("status", "200")})
    assert found[("vmbackup_http_requests_total", gets)] >= 1
