"""Limits on backup requests: each is a setting; a request past one gets its
problem and changes nothing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from app.settings import Settings
from tests.integration.test_backups import start, wait_for
from tests.support.vms import TestVM, throwaway_vm

pytestmark = pytest.mark.libvirt
PER_DOMAIN, PER_HOST, MAX_TTL = 2, 3, 3600


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "max_queued_backups_per_domain": PER_DOMAIN,
            "max_queued_backups_per_host": PER_HOST,
            "default_pull_ttl_seconds": 600,
            "max_pull_ttl_seconds": MAX_TTL,
        }
    )


@pytest.fixture
def other_vm(libvirt_conn: libvirt.virConnect, tmp_path: Path) -> Iterator[TestVM]:
    with throwaway_vm(libvirt_conn, workdir=tmp_path / "other-vms") as test_vm:
        yield test_vm


async def _post(client: httpx.AsyncClient, vm: TestVM, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/hosts/local/domains/{vm.name}/backups", json=body)


async def _ids(client: httpx.AsyncClient, **params: str) -> set[str]:
    listed = (await client.get("/v1/backups", params={"limit": 500, **params})).json()
    return {backup["id"] for backup in listed["items"]}


def _limit_reached(response: httpx.Response) -> bool:
    if response.status_code != 429:
        return False
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    return bool(response.json()["code"] == "limit-reached")


async def _busy(client: httpx.AsyncClient, vm: TestVM) -> str:
    """A pull backup held `ready`: the domain's next backups wait `queued` behind it."""
    backup = await start(client, vm, mode="pull")
    await wait_for(client, backup["id"], {"ready"})
    return str(backup["id"])


async def _cancel_all(client: httpx.AsyncClient) -> None:
    for backup_id in await _ids(client):
        await client.post(f"/v1/backups/{backup_id}/cancel")


async def test_queued_backups_are_limited_per_domain_and_per_host(
    client: httpx.AsyncClient, vm: TestVM, other_vm: TestVM
) -> None:
    await _busy(client, vm)
    for _ in range(PER_DOMAIN):
        assert (await _post(client, vm, mode="pull")).status_code == 202
    before = await _ids(client)
    assert _limit_reached(await _post(client, vm, mode="pull"))
    assert await _ids(client) == before

    await _busy(client, other_vm)  # active, not queued: the host has room for one more
    assert (await _post(client, other_vm, mode="pull")).status_code == 202
    before = await _ids(client)
    refused = await _post(client, other_vm, mode="pull")  # its domain has room; the host not
    assert _limit_reached(refused)
    assert "VMBACKUP_MAX_QUEUED_BACKUPS_PER_HOST" in refused.json()["detail"]
    assert await _ids(client) == before
    await _cancel_all(client)


async def test_concurrent_requests_never_queue_past_the_limit(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    await _busy(client, vm)
    responses = await asyncio.gather(*(_post(client, vm, mode="pull") for _ in range(10)))
    assert Counter(r.status_code for r in responses) == {202: PER_DOMAIN, 429: 10 - PER_DOMAIN}
    assert all(_limit_reached(r) for r in responses if r.status_code != 202)
    assert len(await _ids(client, status="queued")) == PER_DOMAIN
    await _cancel_all(client)


async def test_a_pull_ttl_above_the_bound_is_422_and_the_bound_itself_is_taken(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    refused = await _post(client, vm, mode="pull", ttl_seconds=MAX_TTL + 1)
    assert (refused.status_code, refused.json()["code"]) == (422, "invalid-request")
    assert await _ids(client) == set()
    taken = await _post(client, vm, mode="pull", ttl_seconds=MAX_TTL)
    assert taken.status_code == 202, taken.text
    await _cancel_all(client)


@pytest.mark.parametrize(
    "name",
    ["127.0.0.1", "localhost", "192.0.2.10", "0.0.0.0", "::", "example.net", "127.0.0.1.nip.io"],
)
async def test_a_plain_tcp_export_is_422_and_changes_nothing(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM, name: str
) -> None:
    server = {"transport": "tcp", "name": name, "port": 10809}
    refused = await _post(client, vm, mode="pull", server=server)
    assert (refused.status_code, refused.json()["code"]) == (422, "invalid-request")
    assert "tls" in refused.json()["detail"]
    assert await _ids(client) == set()
    assert libvirt_conn.lookupByUUIDString(vm.uuid).listAllCheckpoints() == []
