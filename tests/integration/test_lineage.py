"""Chains that really open and restores that equal the disk, backup by backup."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.support.vms import (
    MiB,
    TestVM,
    domain,
    drop_bitmap,
    lose_checkpoint_metadata,
    pause,
    read_image,
    resume,
    write_pattern,
)

pytestmark = pytest.mark.libvirt


async def restored(client: httpx.AsyncClient, backup_id: str, fmt: str = "raw") -> dict[str, Any]:
    response = await client.post(f"/v1/backups/{backup_id}/restores", json={"format": fmt})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/restores/{response.json()['id']}"
    deadline = time.monotonic() + 60
    while (restore := (await client.get(response.headers["location"])).json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, restore
        await asyncio.sleep(0.1)
    assert restore["status"] == "succeeded", restore
    return restore


async def backup_paused(
    client: httpx.AsyncClient, conn: libvirt.virConnect, vm: TestVM
) -> tuple[dict[str, Any], bytes]:
    """A push backup of the paused domain, and what its disk held at that instant."""
    pause(conn, vm)
    disk_then = read_image(vm.disks["vda"])
    backup = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
    resume(conn, vm)
    assert backup["status"] == "succeeded", backup["error"]
    return backup, disk_then


async def test_a_full_and_four_incrementals_each_restore_their_instant(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    taken: list[tuple[dict[str, Any], bytes]] = []
    for step in range(5):
        write_pattern(libvirt_conn, vm, "vda", step * 8 * MiB, 2 * MiB, 0x10 + step)
        taken.append(await backup_paused(client, libvirt_conn, vm))
    assert [b["kind"] for b, _ in taken] == ["full"] + ["incremental"] * 4

    for position, (backup, disk_then) in enumerate(taken):
        chain = (await client.get(f"/v1/backups/{backup['id']}/chain")).json()["disks"]["vda"]
        assert [link["backup_id"] for link in chain] == [b["id"] for b, _ in taken[: position + 1]]
        assert [link["kind"] for link in chain] == ["full"] + ["incremental"] * position
        assert chain[-1]["file"] == backup["disks"][0]["target"]
        assert read_image(chain[-1]["file"]) == disk_then  # the newest file opens alone
        restore = await restored(client, backup["id"])
        assert restore["disks"][0]["format"] == "raw"
        assert Path(restore["disks"][0]["file"]).read_bytes() == disk_then


async def test_a_qcow2_restore_is_standalone(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    await backup_paused(client, libvirt_conn, vm)
    write_pattern(libvirt_conn, vm, "vda", 0, 1 * MiB, 0x77)
    backup, disk_then = await backup_paused(client, libvirt_conn, vm)
    restore = await restored(client, backup["id"], "qcow2")
    image = restore["disks"][0]["file"]
    info = await asyncio.create_subprocess_exec(
        "qemu-img", "info", "--output=json", image, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await info.communicate()
    assert b'"backing-filename"' not in out
    assert read_image(image) == disk_then


async def test_deleting_a_needed_backup_is_409_and_cascade_removes_the_chain(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    full, _ = await backup_paused(client, libvirt_conn, vm)
    incremental, _ = await backup_paused(client, libvirt_conn, vm)
    refused = await client.delete(f"/v1/backups/{full['id']}")
    assert (refused.status_code, refused.json()["code"]) == (409, "invalid-state")
    assert incremental["id"] in refused.json()["detail"]
    assert Path(full["disks"][0]["target"]).exists()

    assert (await client.delete(f"/v1/backups/{full['id']}?cascade=true")).status_code == 204
    for gone in (full, incremental):
        assert (await client.get(f"/v1/backups/{gone['id']}")).status_code == 404
        assert not Path(gone["disks"][0]["target"]).exists()
    # Their checkpoints no longer serve as a base: the data behind them is gone.
    after = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
    assert after["kind"] == "full"
    assert after["fallback_reason"].startswith("no checkpoint")


async def test_a_file_deleted_behind_our_back_breaks_the_chain_by_name(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    full, _ = await backup_paused(client, libvirt_conn, vm)
    incremental, _ = await backup_paused(client, libvirt_conn, vm)
    lost = full["disks"][0]["target"]
    Path(lost).unlink()

    chain = await client.get(f"/v1/backups/{incremental['id']}/chain")
    assert (chain.status_code, chain.json()["code"]) == (409, "chain-broken")
    assert lost in chain.json()["detail"]
    restore = await client.post(f"/v1/backups/{incremental['id']}/restores", json={})
    assert (restore.status_code, restore.json()["code"]) == (409, "chain-broken")

    explicit = await client.post(
        f"/v1/hosts/local/domains/{vm.name}/backups",
        json={"incremental": incremental["checkpoint"]},
    )
    assert (explicit.status_code, explicit.json()["code"]) == (409, "chain-broken")
    auto = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
    assert auto["kind"] == "full"
    assert lost in auto["fallback_reason"]


async def test_restore_refuses_pull_backups_and_unknown_disks(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    pull = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    await client.post(f"/v1/backups/{pull['id']}/finish")
    await wait_for(client, pull["id"], TERMINAL)
    refused = await client.post(f"/v1/backups/{pull['id']}/restores", json={})
    assert (refused.status_code, refused.json()["code"]) == (409, "invalid-state")

    push, _ = await backup_paused(client, libvirt_conn, vm)
    unknown = await client.post(f"/v1/backups/{push['id']}/restores", json={"disks": ["vdz"]})
    assert (unknown.status_code, unknown.json()["code"]) == (422, "unknown-disk")
    missing = await client.get("/v1/restores/00000000-0000-0000-0000-000000000000")
    assert (missing.status_code, missing.json()["code"]) == (404, "restore-not-found")


async def test_after_redefining_the_domain_the_next_auto_backup_is_incremental(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    full, _ = await backup_paused(client, libvirt_conn, vm)
    lose_checkpoint_metadata(libvirt_conn, vm)  # as after `virsh undefine` + `define`
    write_pattern(libvirt_conn, vm, "vda", 24 * MiB, 1 * MiB, 0x5A)
    incremental, disk_then = await backup_paused(client, libvirt_conn, vm)
    assert (incremental["kind"], incremental["incremental"]) == ("incremental", full["checkpoint"])
    assert read_image(incremental["disks"][0]["target"]) == disk_then
    assert incremental["disks"][0]["bytes"] < 4 * MiB  # only what changed since the full


async def test_a_checkpoint_deleted_behind_our_back_makes_the_next_auto_backup_full(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    full, _ = await backup_paused(client, libvirt_conn, vm)
    domain(libvirt_conn, vm).checkpointLookupByName(full["checkpoint"]).delete()  # and its bitmap

    explicit = await client.post(
        f"/v1/hosts/local/domains/{vm.name}/backups", json={"incremental": full["checkpoint"]}
    )
    assert (explicit.status_code, explicit.json()["code"]) == (409, "checkpoint-not-found")
    after, disk_then = await backup_paused(client, libvirt_conn, vm)
    assert after["kind"] == "full"
    assert full["checkpoint"] in after["fallback_reason"]
    assert read_image(after["disks"][0]["target"]) == disk_then


async def test_an_explicit_incremental_from_a_checkpoint_with_a_lost_bitmap_is_409(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    full, _ = await backup_paused(client, libvirt_conn, vm)
    drop_bitmap(domain(libvirt_conn, vm), full["checkpoint"])  # libvirt still lists it
    response = await client.post(
        f"/v1/hosts/local/domains/{vm.name}/backups", json={"incremental": full["checkpoint"]}
    )
    assert (response.status_code, response.json()["code"]) == (409, "chain-broken")
    assert "bitmap" in response.json()["detail"]
    assert [b["id"] for b in (await client.get("/v1/backups")).json()["items"]] == [full["id"]]
