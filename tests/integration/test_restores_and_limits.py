"""Nothing is left behind and nothing runs unbounded (issue 8, items 6 and 11):
restores can be deleted with their files, a backup takes its restores' files
with it, files no row names are listed for an operator, and the restore cap and
free space are checked before anything is queued (and again by the worker)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.db.base import utcnow
from app.db.models import Restore, RestoreStatus
from app.settings import Settings
from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.integration.test_lineage import backup_paused, restored
from tests.support.vms import TestVM

pytestmark = pytest.mark.libvirt
HUGE = 2**62


async def running_restore(app: FastAPI, backup_id: str) -> uuid.UUID:
    """A restore another live worker is running (held by this app's pool, so it
    is never taken over during the test)."""
    state = app.state.vmbackup
    restore_id = uuid.uuid4()
    async with state.database.session_scope() as session:
        session.add(
            Restore(
                id=restore_id,
                backup_id=uuid.UUID(backup_id),
                status=RestoreStatus.RUNNING,
                format="raw",
                disks=[],
                lease_holder=state.pool.holder,
                lease_epoch=1,
                lease_expires_at=utcnow() + timedelta(hours=1),
            )
        )
    return restore_id


async def restore_count(app: FastAPI) -> int:
    async with app.state.vmbackup.database.session_scope() as session:
        return int(await session.scalar(select(func.count()).select_from(Restore)) or 0)


async def test_deleting_a_restore_removes_its_files_and_an_unfinished_one_is_409(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM, app: FastAPI
) -> None:
    backup, _ = await backup_paused(client, libvirt_conn, vm)
    restore = await restored(client, backup["id"], "qcow2")
    image = Path(restore["disks"][0]["file"])
    assert image.is_file()
    assert (await client.delete(f"/v1/restores/{restore['id']}")).status_code == 204
    assert not image.exists()
    assert not image.parent.exists()
    assert (await client.get(f"/v1/restores/{restore['id']}")).status_code == 404
    assert (await client.delete(f"/v1/restores/{restore['id']}")).status_code == 404

    busy = await running_restore(app, backup["id"])
    refused = await client.delete(f"/v1/restores/{busy}")
    assert (refused.status_code, refused.json()["code"]) == (409, "invalid-state")
    assert (await client.get(f"/v1/restores/{busy}")).json()["status"] == "running"


async def test_deleting_a_backup_takes_its_restores_files_and_waits_for_running_ones(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM, app: FastAPI
) -> None:
    backup, _ = await backup_paused(client, libvirt_conn, vm)
    images = [
        Path((await restored(client, backup["id"], f))["disks"][0]["file"])
        for f in ("raw", "qcow2")
    ]
    busy = await running_restore(app, backup["id"])
    refused = await client.delete(f"/v1/backups/{backup['id']}")
    assert (refused.status_code, refused.json()["code"]) == (409, "invalid-state")
    assert str(busy) in refused.json()["detail"]
    assert all(image.is_file() for image in images)

    async with app.state.vmbackup.database.session_scope() as session:
        held = await session.get(Restore, busy)
        assert held is not None
        held.status = RestoreStatus.FAILED
    assert (await client.delete(f"/v1/backups/{backup['id']}")).status_code == 204
    assert not any(image.exists() for image in images)
    assert not any(image.parent.exists() for image in images)
    assert await restore_count(app) == 0


async def test_restores_past_the_cap_are_429_and_change_nothing(
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    app: FastAPI,
    settings: Settings,
) -> None:
    backup, _ = await backup_paused(client, libvirt_conn, vm)
    settings.max_active_restores = 1
    await running_restore(app, backup["id"])
    refused = await client.post(f"/v1/backups/{backup['id']}/restores", json={})
    assert (refused.status_code, refused.json()["code"]) == (429, "limit-reached")
    assert refused.headers["content-type"] == "application/problem+json"
    assert await restore_count(app) == 1
    assert not settings.restores_dir.exists() or not any(settings.restores_dir.iterdir())


async def test_too_little_free_space_is_507_and_changes_nothing(
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    app: FastAPI,
    settings: Settings,
) -> None:
    backup, _ = await backup_paused(client, libvirt_conn, vm)
    checkpoints = libvirt_conn.lookupByUUIDString(vm.uuid).listAllCheckpoints()
    settings.free_space_reserve_bytes = HUGE
    for body in ({}, {"kind": "full"}, {"mode": "pull"}):
        refused = await client.post(f"/v1/hosts/local/domains/{vm.name}/backups", json=body)
        assert (refused.status_code, refused.json()["code"]) == (507, "insufficient-storage")
        assert str(settings.data_dir) not in refused.json()["detail"]  # a 5xx names no host path
    restore = await client.post(f"/v1/backups/{backup['id']}/restores", json={})
    assert (restore.status_code, restore.json()["code"]) == (507, "insufficient-storage")
    assert [b["id"] for b in (await client.get("/v1/backups")).json()["items"]] == [backup["id"]]
    assert len(libvirt_conn.lookupByUUIDString(vm.uuid).listAllCheckpoints()) == len(checkpoints)
    assert await restore_count(app) == 0


async def test_the_worker_checks_free_space_again_before_it_starts(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM, settings: Settings
) -> None:
    pull = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    push = await start(client, vm, kind="full")
    assert push["disks"][0]["target"] is not None
    settings.free_space_reserve_bytes = HUGE  # the root filled up meanwhile
    await client.post(f"/v1/backups/{pull['id']}/finish")
    failed = await wait_for(client, push["id"], TERMINAL)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "insufficient-storage"
    assert not Path(push["disks"][0]["target"]).exists()
    names = {cp.getName() for cp in libvirt_conn.lookupByUUIDString(vm.uuid).listAllCheckpoints()}
    assert push["checkpoint"] not in names


def _vmbackup(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    env = {
        **clean,
        "VMBACKUP_DATA_DIR": str(settings.data_dir),
        "VMBACKUP_DATABASE_URL": settings.effective_database_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def _listed(answer: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(o["root"], o["path"], o["type"]) for o in answer["items"]}


async def test_files_no_row_names_are_listed_and_removed_on_request(
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    settings: Settings,
    tmp_path: Path,
) -> None:
    backup, _ = await backup_paused(client, libvirt_conn, vm)
    restore = await restored(client, backup["id"])
    owned = [Path(backup["disks"][0]["target"]), Path(restore["disks"][0]["file"])]
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not under a root")
    stray = settings.backups_dir / "stray.qcow2"
    stray.write_bytes(b"left by hand")
    empty = settings.backups_dir / vm.uuid / "empty"
    empty.mkdir()
    left = settings.restores_dir / str(uuid.uuid4()) / "vda.raw"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"a restore whose row is gone")
    settings.scratch_dir.mkdir(parents=True, exist_ok=True)
    link = settings.scratch_dir / "link"
    link.symlink_to(outside)

    answer = (await client.get("/v1/admin/orphans")).json()
    assert _listed(answer) == {
        ("backup", str(stray), "file"),
        ("backup", str(empty), "directory"),
        ("restore", str(left), "file"),
        ("scratch", str(link), "symlink"),
    }
    assert answer["bytes"] == sum(o["bytes"] for o in answer["items"]) > 0

    listed = await asyncio.to_thread(_vmbackup, settings, "orphans")
    assert str(stray) in listed.stdout
    assert stray.exists()
    removed = await asyncio.to_thread(_vmbackup, settings, "orphans", "--delete", "--min-age", "0")
    assert "4 orphans" in removed.stdout.splitlines()[-1]
    assert not any(p.exists() or p.is_symlink() for p in (stray, empty, left, link))
    assert outside.read_bytes() == b"not under a root"
    assert all(p.is_file() for p in owned)
    after = (await client.get("/v1/admin/orphans")).json()
    assert _listed(after) == {("restore", str(left.parent), "directory")}
