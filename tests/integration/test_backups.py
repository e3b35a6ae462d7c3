"""Backups through the API against a real libvirtd: the data is checked.

The domain is paused while a backup starts, so the backup's point in time is
exactly what the test wrote; writes after that must not show up in it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from app.settings import Settings
from tests.support.vms import (
    MiB,
    TestVM,
    dirty_ranges,
    nbd_copy,
    nbd_map,
    pause,
    qemu_img_compare,
    read_image,
    resume,
    write_pattern,
)

pytestmark = pytest.mark.libvirt
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # test_pull_over_tcp_is_read_by_nbdcopy exports over plain TCP on loopback.
    return settings.model_copy(update={"allow_plain_tcp_exports": True})


async def wait_for(
    client: httpx.AsyncClient, backup_id: str, statuses: set[str], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        backup = (await client.get(f"/v1/backups/{backup_id}")).json()
        if backup["status"] in statuses:
            return backup
        assert backup["status"] not in TERMINAL, backup
        assert time.monotonic() < deadline, f"still {backup['status']}: {backup}"
        await asyncio.sleep(0.1)


async def start(
    client: httpx.AsyncClient, vm: TestVM, host: str = "local", **body: Any
) -> dict[str, Any]:
    response = await client.post(f"/v1/hosts/{host}/domains/{vm.name}/backups", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/backups/{response.json()['id']}"
    return response.json()


async def test_push_full_then_incremental_hold_the_disk_at_each_point(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM, tmp_path: Path
) -> None:
    write_pattern(libvirt_conn, vm, "vda", 0, 4 * MiB, 0xAB)
    pause(libvirt_conn, vm)
    full = await start(client, vm)
    assert full["status"] == "queued"
    full = await wait_for(client, full["id"], TERMINAL)
    assert full["status"] == "succeeded", full
    assert (full["kind"], full["incremental"]) == ("full", None)
    assert full["fallback_reason"].startswith("no checkpoint")
    full_file = full["disks"][0]["target"]
    assert full_file.endswith(f"{vm.uuid}/{full['id']}/vda.qcow2")
    assert qemu_img_compare(vm.disks["vda"], full_file)

    resume(libvirt_conn, vm)
    write_pattern(libvirt_conn, vm, "vda", 32 * MiB, 2 * MiB, 0xCD)
    pause(libvirt_conn, vm)
    disk_at_incremental = read_image(vm.disks["vda"])
    incremental = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
    resume(libvirt_conn, vm)
    write_pattern(libvirt_conn, vm, "vda", 40 * MiB, 1 * MiB, 0xEF)  # after: must not appear

    assert incremental["status"] == "succeeded", incremental
    assert incremental["kind"] == "incremental"
    assert incremental["incremental"] == full["checkpoint"]
    inc_file = incremental["disks"][0]["target"]
    assert read_image(inc_file) == disk_at_incremental  # opens alone, through its chain
    assert read_image(full_file) != disk_at_incremental
    # Only the changed clusters were copied: 2 MiB, not the 36 MiB written in all.
    assert incremental["disks"][0]["bytes"] < 4 * MiB
    assert full["disks"][0]["bytes"] > 4 * MiB
    # The completed jobs' own counters are the final progress: the whole disk,
    # then the dirty 2 MiB.
    assert full["progress"]["bytes_processed"] == full["progress"]["bytes_total"] == 64 * MiB
    assert incremental["progress"]["bytes_processed"] == 2 * MiB


async def test_pull_full_export_reads_the_point_in_time_and_finish_succeeds(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM, tmp_path: Path
) -> None:
    write_pattern(libvirt_conn, vm, "vda", 8 * MiB, 2 * MiB, 0x11)
    pause(libvirt_conn, vm)
    disk_then = read_image(vm.disks["vda"])
    backup = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    resume(libvirt_conn, vm)
    write_pattern(libvirt_conn, vm, "vda", 8 * MiB, 2 * MiB, 0x22)  # the guest keeps writing
    disk = backup["disks"][0]
    assert disk["export"] == "vda"
    assert disk["nbd_uri"] == f"nbd+unix:///vda?socket={backup['server']['socket']}"
    assert backup["expires_at"] is not None
    assert "<domainbackup mode='pull'" in backup["libvirt_xml"]
    assert nbd_copy(disk["nbd_uri"], tmp_path / "export.raw") == disk_then

    finish = await client.post(f"/v1/backups/{backup['id']}/finish")
    assert finish.status_code == 202
    done = await wait_for(client, backup["id"], TERMINAL)
    assert done["status"] == "succeeded"
    assert (await client.post(f"/v1/backups/{backup['id']}/finish")).status_code == 409


async def test_pull_incremental_dirty_map_covers_exactly_the_changes(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    first = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    await client.post(f"/v1/backups/{first['id']}/finish")
    assert (await wait_for(client, first["id"], TERMINAL))["status"] == "succeeded"

    write_pattern(libvirt_conn, vm, "vda", 16 * MiB, 1 * MiB, 0x33)
    second = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    assert (second["kind"], second["incremental"]) == ("incremental", first["checkpoint"])
    disk = second["disks"][0]
    assert disk["export_bitmap"] == "backup-vda"
    extents = nbd_map(disk["nbd_uri"], f"qemu:dirty-bitmap:{disk['export_bitmap']}")
    assert dirty_ranges(extents) == [(16 * MiB, 1 * MiB)]
    await client.post(f"/v1/backups/{second['id']}/finish")
    assert (await wait_for(client, second["id"], TERMINAL))["status"] == "succeeded"


async def test_pull_over_tcp_is_read_by_nbdcopy(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM, tmp_path: Path
) -> None:
    write_pattern(libvirt_conn, vm, "vda", 0, 1 * MiB, 0x44)
    pause(libvirt_conn, vm)
    disk_then = read_image(vm.disks["vda"])
    port = 10809 + (hash(vm.name) % 50)
    server = {"transport": "tcp", "name": "127.0.0.1", "port": port}
    backup = await wait_for(
        client, (await start(client, vm, mode="pull", server=server))["id"], {"ready"}
    )
    assert backup["disks"][0]["nbd_uri"] == f"nbd://127.0.0.1:{port}/vda"
    assert nbd_copy(backup["disks"][0]["nbd_uri"], tmp_path / "tcp.raw") == disk_then
    await client.post(f"/v1/backups/{backup['id']}/finish")
    assert (await wait_for(client, backup["id"], TERMINAL))["status"] == "succeeded"


async def test_a_backup_on_a_second_host_by_remote_uri(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    created = await client.post(
        "/v1/hosts", json={"name": "loopback", "uri": "qemu+tcp://127.0.0.1/system"}
    )
    assert created.status_code == 201
    write_pattern(libvirt_conn, vm, "vda", 0, 1 * MiB, 0x55)
    pause(libvirt_conn, vm)
    backup = await wait_for(client, (await start(client, vm, host="loopback"))["id"], TERMINAL)
    assert backup["status"] == "succeeded", backup["error"]
    assert backup["host"] == "loopback"
    assert qemu_img_compare(vm.disks["vda"], backup["disks"][0]["target"])


async def test_cancel_an_active_pull_deletes_its_checkpoint(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    backup = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    assert libvirt_conn.lookupByUUIDString(vm.uuid).listAllCheckpoints() != []
    assert (await client.post(f"/v1/backups/{backup['id']}/cancel")).status_code == 202
    done = await wait_for(client, backup["id"], TERMINAL)
    assert done["status"] == "cancelled"
    assert libvirt_conn.lookupByUUIDString(vm.uuid).listAllCheckpoints() == []
    again = await client.post(f"/v1/backups/{backup['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["code"] == "invalid-state"


async def test_a_pull_past_its_ttl_is_cancelled_with_the_reason(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    backup = await start(client, vm, mode="pull", ttl_seconds=1)
    done = await wait_for(client, backup["id"], TERMINAL)
    assert done["status"] == "cancelled"
    assert done["error"]["code"] == "ttl-expired"
    dom = libvirt_conn.lookupByUUIDString(vm.uuid)
    assert dom.listAllCheckpoints() == []
    assert dom.jobStats().get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE


async def test_a_destroyed_domain_fails_its_backup(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    backup = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    libvirt_conn.lookupByUUIDString(vm.uuid).destroy()
    done = await wait_for(client, backup["id"], TERMINAL)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "domain-not-running"


async def test_a_second_backup_of_a_domain_waits_queued_and_can_be_cancelled(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    first = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    second = await start(client, vm, mode="pull")
    third = await start(client, vm)
    await asyncio.sleep(0.5)
    assert (await client.get(f"/v1/backups/{second['id']}")).json()["status"] == "queued"
    cancelled = await client.post(f"/v1/backups/{third['id']}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    await client.post(f"/v1/backups/{first['id']}/finish")
    assert (await wait_for(client, first["id"], TERMINAL))["status"] == "succeeded"
    started = await wait_for(client, second["id"], {"ready"})
    # `auto` picks its base as it starts: the backup it waited for.
    assert started["kind"] == "incremental"
    assert started["incremental"] == first["checkpoint"]
    assert started["fallback_reason"] is None
    await client.post(f"/v1/backups/{second['id']}/finish")
    assert (await wait_for(client, second["id"], TERMINAL))["status"] == "succeeded"
    assert (await client.get(f"/v1/backups/{third['id']}")).json()["status"] == "cancelled"


async def test_backups_of_different_domains_run_at_once(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, tmp_path: Path, vm: TestVM
) -> None:
    from tests.support.vms import throwaway_vm

    with throwaway_vm(libvirt_conn, workdir=tmp_path / "more") as other:
        a = await start(client, vm, mode="pull")
        b = await start(client, other, mode="pull")
        ready = [await wait_for(client, x["id"], {"ready"}) for x in (a, b)]
        assert {r["status"] for r in ready} == {"ready"}
        for r in ready:
            await client.post(f"/v1/backups/{r['id']}/finish")
        for r in ready:
            assert (await wait_for(client, r["id"], TERMINAL))["status"] == "succeeded"
