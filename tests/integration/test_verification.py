"""Verification: a push backup made with `verify` records its content digests;
`POST /v1/backups/{id}/verify` re-reads the chain. One byte flipped in a backup
file on the storage is found, the backup is marked corrupt, counted in
/metrics, refused as a restore source, and never used as a base again."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.support.vms import MiB, TestVM, pause, resume, write_pattern

pytestmark = pytest.mark.libvirt


async def _verified(client: httpx.AsyncClient, backup_id: str) -> dict[str, Any]:
    response = await client.post(f"/v1/backups/{backup_id}/verify")
    assert response.status_code == 202, response.text
    assert response.json()["verification"]["status"] == "running"
    deadline = time.monotonic() + 60
    while True:
        backup: dict[str, Any] = (await client.get(f"/v1/backups/{backup_id}")).json()
        if backup["verification"]["status"] != "running":
            return backup
        assert time.monotonic() < deadline, backup
        await asyncio.sleep(0.1)


def _flip_a_data_byte(image: str) -> None:
    """Change one byte of guest data inside the qcow2 file, as rot on storage would."""
    extents = json.loads(
        subprocess.run(
            ["qemu-img", "map", "-f", "qcow2", "--output=json", image],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    offset = next(e["offset"] for e in extents if e["data"] and "offset" in e)
    with Path(image).open("r+b") as f:
        f.seek(offset + 100)
        byte = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([byte[0] ^ 0xFF]))


async def test_a_flipped_byte_is_found_and_the_backup_is_never_a_base_again(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    write_pattern(libvirt_conn, vm, "vda", 0, 4 * MiB, 0xAB)
    pause(libvirt_conn, vm)
    full = await wait_for(client, (await start(client, vm, verify=True))["id"], TERMINAL)
    resume(libvirt_conn, vm)
    assert full["status"] == "succeeded", full
    assert full["verification"]["status"] == "ok"
    assert full["verification"]["checked_at"] is not None
    assert (await _verified(client, full["id"]))["verification"]["status"] == "ok"

    target = full["disks"][0]["target"]
    _flip_a_data_byte(target)
    corrupt = await _verified(client, full["id"])
    assert corrupt["verification"]["status"] == "corrupt"
    assert "vda" in corrupt["verification"]["detail"]
    assert "vmbackup_backups_corrupt 1.0" in (await client.get("/metrics")).text

    refused = await client.post(f"/v1/backups/{full['id']}/restores", json={"format": "raw"})
    assert refused.status_code == 409
    assert refused.json()["code"] == "chain-broken"
    following = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
    assert following["status"] == "succeeded"
    assert following["kind"] == "full"
    assert "corrupt" in following["fallback_reason"]


async def test_verify_is_for_succeeded_push_backups_and_push_requests(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    pull = await start(client, vm, mode="pull")
    refused = await client.post(f"/v1/backups/{pull['id']}/verify")
    assert refused.status_code == 409
    assert refused.json()["code"] == "invalid-state"
    await client.post(f"/v1/backups/{pull['id']}/cancel")
    await wait_for(client, pull["id"], TERMINAL)
    invalid = await client.post(
        f"/v1/hosts/local/domains/{vm.name}/backups", json={"mode": "pull", "verify": True}
    )
    assert invalid.status_code == 422
