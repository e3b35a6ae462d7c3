"""Bad requests are refused before anything is queued, and change nothing:
no row, no file, no checkpoint. Idempotency-Key replays the first answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from app.settings import Settings
from tests.integration.test_backups import wait_for
from tests.support.vms import TestVM

pytestmark = pytest.mark.libvirt


async def _post(client: httpx.AsyncClient, vm: TestVM, body: Any, **headers: str) -> httpx.Response:
    return await client.post(
        f"/v1/hosts/local/domains/{vm.name}/backups", json=body, headers=headers
    )


async def _nothing_changed(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM, settings: Settings
) -> None:
    assert (await client.get("/v1/backups")).json()["items"] == []
    assert libvirt_conn.lookupByUUIDString(vm.uuid).listAllCheckpoints() == []
    assert not settings.backups_dir.exists() or not any(settings.backups_dir.iterdir())


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"disks": [{"name": "vdz"}]}, 422, "unknown-disk"),
        ({"incremental": "no-such-checkpoint"}, 409, "checkpoint-not-found"),
        ({"kind": "incremental"}, 409, "checkpoint-not-found"),
        ({"disks": [{"name": "vda", "target": {"file": "/etc/passwd"}}]}, 422, "path-not-allowed"),
        (
            {"mode": "pull", "disks": [{"name": "vda", "scratch": {"file": "/tmp/x"}}]},
            422,
            "path-not-allowed",
        ),
        ({"mode": "sideways"}, 422, "invalid-request"),
        (
            {"kind": "full", "disks": [{"name": "vda", "backupmode": "incremental"}]},
            422,
            "invalid-request",
        ),
        ({"mode": "push", "ttl_seconds": 5}, 422, "invalid-request"),
        ({"checkpoint": {"name": "bad name!"}}, 422, "invalid-request"),
        ({"disks": [{"name": "vda", "target": {"file": "a", "dev": "b"}}]}, 422, "invalid-request"),
        (
            {"mode": "pull", "server": {"transport": "tcp", "name": "127.0.0.1"}},
            422,
            "invalid-request",
        ),
        ({"description": "x" * 1025}, 422, "invalid-request"),
    ],
)
async def test_a_bad_request_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    settings: Settings,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    response = await _post(client, vm, body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    await _nothing_changed(client, libvirt_conn, vm, settings)


async def test_a_target_through_a_symlink_is_refused(
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    settings: Settings,
    tmp_path: Path,
) -> None:
    settings.backups_dir.mkdir(parents=True)
    (settings.backups_dir / "link").symlink_to(tmp_path)
    target = str(settings.backups_dir / "link" / "vda.qcow2")
    response = await _post(client, vm, {"disks": [{"name": "vda", "target": {"file": target}}]})
    assert response.status_code == 422
    assert response.json()["code"] == "path-not-allowed"
    assert (await client.get("/v1/backups")).json()["items"] == []


async def test_a_stopped_domain_is_409(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM, settings: Settings
) -> None:
    libvirt_conn.lookupByUUIDString(vm.uuid).destroy()
    response = await _post(client, vm, {})
    assert response.status_code == 409
    assert response.json()["code"] == "domain-not-running"
    await _nothing_changed(client, libvirt_conn, vm, settings)


async def test_unknown_domain_host_and_backup_are_404(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    domain = await client.post("/v1/hosts/local/domains/nope/backups", json={})
    assert (domain.status_code, domain.json()["code"]) == (404, "domain-not-found")
    host = await client.post(f"/v1/hosts/nowhere/domains/{vm.name}/backups", json={})
    assert (host.status_code, host.json()["code"]) == (404, "host-not-found")
    backup = await client.get("/v1/backups/00000000-0000-0000-0000-000000000000")
    assert (backup.status_code, backup.json()["code"]) == (404, "backup-not-found")
    malformed = await client.get("/v1/backups/not-a-uuid")
    assert (malformed.status_code, malformed.json()["code"]) == (422, "invalid-request")


async def test_the_same_idempotency_key_replays_and_another_body_conflicts(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    body = {"mode": "pull", "description": "nightly"}
    first = await _post(client, vm, body, **{"Idempotency-Key": "k-1"})
    again = await _post(client, vm, body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    other = await _post(client, vm, {"mode": "push"}, **{"Idempotency-Key": "k-1"})
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency-conflict"
    assert len((await client.get("/v1/backups")).json()["items"]) == 1
    await client.post(f"/v1/backups/{first.json()['id']}/cancel")


async def test_listing_pages_newest_first_with_filters(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    ids = [(await _post(client, vm, {"mode": "pull"})).json()["id"]]
    await wait_for(client, ids[0], {"ready"})  # the next two then wait queued behind it
    for _ in range(2):
        ids.append((await _post(client, vm, {"mode": "pull"})).json()["id"])
    for backup_id in ids[1:]:
        await client.post(f"/v1/backups/{backup_id}/cancel")
    page1 = (await client.get("/v1/backups", params={"limit": 2})).json()
    page2 = (
        await client.get("/v1/backups", params={"limit": 2, "cursor": page1["next_cursor"]})
    ).json()
    assert [b["id"] for b in page1["items"] + page2["items"]] == ids[::-1]
    assert page2["next_cursor"] is None
    cancelled = (await client.get("/v1/backups", params={"status": "cancelled"})).json()
    assert {b["id"] for b in cancelled["items"]} == set(ids[1:])
    by_domain = (await client.get("/v1/backups", params={"domain": vm.uuid})).json()
    assert len(by_domain["items"]) == 3
    bad = await client.get("/v1/backups", params={"cursor": "garbage!"})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid-request")
    await client.post(f"/v1/backups/{ids[0]}/cancel")


async def test_a_checkpoint_name_in_use_is_409_and_the_checkpoint_survives(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    dom = libvirt_conn.lookupByUUIDString(vm.uuid)
    dom.checkpointCreateXML("<domaincheckpoint><name>taken</name></domaincheckpoint>")
    response = await _post(client, vm, {"checkpoint": {"name": "taken"}})
    assert (response.status_code, response.json()["code"]) == (409, "invalid-state")
    assert [cp.getName() for cp in dom.listAllCheckpoints()] == ["taken"]
    assert (await client.get("/v1/backups")).json()["items"] == []
