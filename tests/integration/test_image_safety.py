"""A guest owns the bytes of its disk, never the host's files: every image the
service opens is opened as the format it recorded (issue 8, item 1)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.integration.test_lineage import backup_paused, restored
from tests.support.vms import MiB, TestVM, pause, read_image, resume, write_bytes_from

pytestmark = pytest.mark.libvirt


async def finished(client: httpx.AsyncClient, location: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while (restore := (await client.get(location)).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, restore
        await asyncio.sleep(0.1)
    return restore


def guest_made_qcow2_header(tmp_path: Path, backing: Path) -> Path:
    """What a hostile guest writes at the start of its disk: a whole (empty)
    qcow2 image whose backing file is a host file, padded to whole sectors."""
    header = tmp_path / "guest-header.qcow2"
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", "raw"]
    subprocess.run([*create, str(header), str(1 * MiB)], check=True)
    size = header.stat().st_size
    with header.open("ab") as f:
        f.write(b"\0" * (-size % (64 * 1024)))
    return header


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
async def test_a_raw_backup_holding_a_guest_written_qcow2_header_restores_the_guest_bytes_only(
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    tmp_path: Path,
    fmt: str,
) -> None:
    host_file = tmp_path / "host-secret.bin"
    host_file.write_bytes(b"HOST-SECRET-BYTES-" * (MiB // 18) + b"\0" * (MiB % 18))
    write_bytes_from(libvirt_conn, vm, "vda", 0, guest_made_qcow2_header(tmp_path, host_file))
    pause(libvirt_conn, vm)
    disk_then = read_image(vm.disks["vda"], "qcow2")
    backup = await start(client, vm, disks=[{"name": "vda", "driver": "raw"}])
    backup = await wait_for(client, backup["id"], TERMINAL)
    resume(libvirt_conn, vm)
    assert backup["status"] == "succeeded", backup["error"]
    assert backup["disks"][0]["format"] == "raw"
    assert Path(backup["disks"][0]["target"]).read_bytes()[:4] == b"QFI\xfb"  # the guest's bytes

    restore = await restored(client, backup["id"], fmt)
    image = read_image(restore["disks"][0]["file"], fmt)
    assert b"HOST-SECRET-BYTES-" not in image
    assert image == disk_then


async def test_a_recorded_file_naming_an_unrecorded_backing_file_is_not_restored_or_rebased_onto(
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    tmp_path: Path,
) -> None:
    """The header of a recorded file re-pointed behind the service's back (at a
    host file): the restore and the next incremental's rebase check each header
    against the record and refuse, and nothing reads the host file."""
    host_file = tmp_path / "host-secret.bin"
    host_file.write_bytes(b"HOST-SECRET-BYTES-" * (MiB // 18) + b"\0" * (MiB % 18))
    full, _ = await backup_paused(client, libvirt_conn, vm)
    full_file = full["disks"][0]["target"]
    subprocess.run(
        ["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", str(host_file), "-F", "raw", full_file],
        check=True,
    )

    response = await client.post(f"/v1/backups/{full['id']}/restores", json={"format": "raw"})
    assert response.status_code == 202, response.text
    restore = await finished(client, response.headers["location"])
    assert restore["status"] == "failed"
    assert restore["error"]["code"] == "chain-broken"
    assert "backing file" in restore["error"]["message"]
    assert str(host_file) not in restore["error"]["message"]
    assert not Path(restore["disks"][0]["file"]).exists()

    incremental = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
    assert incremental["kind"] == "incremental"
    assert incremental["status"] == "failed"
    assert incremental["error"]["code"] == "chain-broken"
    assert "backing file" in incremental["error"]["message"]
