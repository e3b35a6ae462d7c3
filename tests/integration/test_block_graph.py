"""QEMU 7.2 aborts a guest asked about its block nodes while a backup begins
(app/libvirt/block_graph.py): backups through the service while clients keep
reading the domain (its disks' capacity comes from those nodes) leave the guest
running and every backup succeeds. Without the turn-taking this test lost the
guest in 2 of 6 runs (with it, 0 of 8), and bare libvirt calls lost it in 6 of 20
rounds of 100 backups (bench/block_graph.py)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import httpx
import libvirt
import pytest

from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.support.vms import TestVM, domain

pytestmark = pytest.mark.libvirt
BACKUPS = 30
READERS = 2


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "vmbackup.db"  # one database: QEMU is what is under test
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


async def test_reading_a_domain_while_its_backups_begin_keeps_the_guest_running(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    reads = 0

    async def read_the_domain() -> None:
        nonlocal reads
        while True:
            response = await client.get(f"/v1/hosts/local/domains/{vm.name}")
            assert response.status_code == 200, response.text
            reads += 1

    readers = [asyncio.create_task(read_the_domain()) for _ in range(READERS)]
    try:
        for _ in range(BACKUPS):
            backup = await start(client, vm, mode="push", kind="full")
            ended = await wait_for(client, backup["id"], TERMINAL)
            assert ended["status"] == "succeeded", ended
            assert not any(reader.done() for reader in readers)
    finally:
        for reader in readers:
            reader.cancel()
        for reader in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    assert domain(libvirt_conn, vm).isActive()
    assert reads > BACKUPS  # the reads did overlap the backups
