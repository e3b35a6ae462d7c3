"""Domains are read live from a real libvirtd."""

from __future__ import annotations

import httpx
import pytest

from tests.support.vms import MiB, TestVM

pytestmark = pytest.mark.libvirt


def _find(items: list[dict[str, object]], name: str) -> dict[str, object]:
    return next(item for item in items if item["name"] == name)


async def test_a_running_domain_is_listed_with_its_disks(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    response = await client.get("/v1/hosts/local/domains")
    assert response.status_code == 200
    domain = _find(response.json()["items"], vm.name)
    assert domain == {
        "name": vm.name,
        "uuid": vm.uuid,
        "state": "running",
        "disks": [
            {
                "name": "vda",
                "device": "disk",
                "type": "file",
                "format": "qcow2",
                "source": str(vm.disks["vda"]),
                "capacity_bytes": 64 * MiB,
                "checkpoint_capable": True,
            }
        ],
        "last_backup": None,
    }


@pytest.mark.parametrize("by", ["name", "uuid"])
async def test_one_domain_by_name_or_uuid(client: httpx.AsyncClient, vm: TestVM, by: str) -> None:
    ref = vm.name if by == "name" else vm.uuid
    response = await client.get(f"/v1/hosts/local/domains/{ref}")
    assert response.status_code == 200
    assert response.json()["uuid"] == vm.uuid


async def test_the_same_domain_through_a_remote_host(client: httpx.AsyncClient, vm: TestVM) -> None:
    created = await client.post(
        "/v1/hosts", json={"name": "loopback", "uri": "qemu+tcp://127.0.0.1/system"}
    )
    assert created.status_code == 201
    response = await client.get(f"/v1/hosts/loopback/domains/{vm.name}")
    assert response.status_code == 200
    assert response.json()["disks"][0]["capacity_bytes"] == 64 * MiB


async def test_an_unknown_domain_is_404(client: httpx.AsyncClient) -> None:
    for ref in ("no-such-domain", "00000000-0000-0000-0000-000000000000"):
        response = await client.get(f"/v1/hosts/local/domains/{ref}")
        assert response.status_code == 404
        assert response.json()["code"] == "domain-not-found"
        assert ref in response.json()["detail"]


async def test_an_unknown_host_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/hosts/nowhere/domains")
    assert response.status_code == 404
    assert response.json()["code"] == "host-not-found"
