"""A backup writes and deletes only its own files (issue 8, item 4): a pre-made
target of another backup is refused, delete removes only what the service made,
and a link or a file that appears between the request and the worker is refused
by the worker, which writes nothing outside the root."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest
from fastapi import FastAPI

from app.db.models import Backup, BackupDisk, BackupStatus
from app.db.session import Database
from app.settings import Settings
from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.integration.test_lineage import backup_paused, restored
from tests.support.vms import TestVM, read_image, throwaway_vm

pytestmark = pytest.mark.libvirt


@pytest.fixture
def other_vm(libvirt_conn: libvirt.virConnect, tmp_path: Path) -> Iterator[TestVM]:
    with throwaway_vm(libvirt_conn, workdir=tmp_path / "other") as test_vm:
        yield test_vm


@pytest.fixture
def database(app: FastAPI, client: httpx.AsyncClient) -> Database:
    """The running app's database (after `client` has started it)."""
    found: Database = app.state.vmbackup.database
    return found


async def post(client: httpx.AsyncClient, vm: TestVM, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/hosts/local/domains/{vm.name}/backups", json=body)


async def queued_behind_a_pull(
    client: httpx.AsyncClient, vm: TestVM, **body: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A push backup planned now but started only when the domain's pull ends."""
    pull = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    push = await start(client, vm, **body)
    assert push["status"] == "queued"
    return pull, push


async def run_after(
    client: httpx.AsyncClient, pull: dict[str, Any], push_id: str
) -> dict[str, Any]:
    assert (await client.post(f"/v1/backups/{pull['id']}/finish")).status_code == 202
    assert (await wait_for(client, pull["id"], TERMINAL))["status"] == "succeeded"
    return await wait_for(client, push_id, TERMINAL)


async def test_another_domains_backup_file_cannot_be_a_target(
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    other_vm: TestVM,
) -> None:
    theirs, disk_then = await backup_paused(client, libvirt_conn, other_vm)
    their_file = theirs["disks"][0]["target"]
    their_dir = str(Path(their_file).parent)
    for body in (
        {"reuse_external": True, "disks": [{"name": "vda", "target": {"file": their_file}}]},
        {"disks": [{"name": "vda", "target": {"file": their_file}}]},
        {"disks": [{"name": "vda", "target": {"file": f"{their_dir}/mine.qcow2"}}]},
        {"disks": [{"name": "vda", "target": {"file": f"{their_dir}/sub/mine.qcow2"}}]},
    ):
        refused = await post(client, vm, **body)
        assert (refused.status_code, refused.json()["code"]) == (409, "invalid-state"), body
        assert theirs["id"] in refused.json()["detail"]
    assert [b["id"] for b in (await client.get("/v1/backups")).json()["items"]] == [theirs["id"]]
    assert read_image(their_file) == disk_then


async def test_an_existing_file_is_not_a_target_without_reuse_external(
    client: httpx.AsyncClient, vm: TestVM, settings: Settings
) -> None:
    settings.backups_dir.mkdir(parents=True)
    existing = settings.backups_dir / "made-by-hand.qcow2"
    existing.write_bytes(b"an operator's file")
    refused = await post(client, vm, disks=[{"name": "vda", "target": {"file": str(existing)}}])
    assert (refused.status_code, refused.json()["code"]) == (422, "path-not-allowed")
    assert existing.read_bytes() == b"an operator's file"


async def test_a_file_that_appears_before_the_worker_starts_fails_the_backup_and_survives_delete(
    client: httpx.AsyncClient, vm: TestVM, settings: Settings
) -> None:
    target = settings.backups_dir / "given" / "vda.qcow2"
    pull, push = await queued_behind_a_pull(
        client, vm, disks=[{"name": "vda", "target": {"file": str(target)}}]
    )
    target.parent.mkdir(parents=True)
    target.write_bytes(b"appeared meanwhile")
    failed = await run_after(client, pull, push["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "path-not-allowed"
    assert "exists already" in failed["error"]["message"]
    assert (await client.delete(f"/v1/backups/{push['id']}")).status_code == 204
    assert target.read_bytes() == b"appeared meanwhile"


async def test_a_link_swapped_in_before_the_worker_starts_is_refused_and_nothing_outside_changes(
    client: httpx.AsyncClient, vm: TestVM, settings: Settings, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"not the service's")
    pull, push = await queued_behind_a_pull(client, vm)  # generated: <root>/<uuid>/<id>/vda.qcow2
    assert push["disks"][0]["target"].startswith(f"{settings.backups_dir}/{vm.uuid}/")
    (outside / push["id"]).mkdir()  # so that following the link would find the directory
    settings.backups_dir.mkdir(parents=True, exist_ok=True)
    (settings.backups_dir / vm.uuid).symlink_to(outside)

    failed = await run_after(client, pull, push["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "path-not-allowed"
    assert "symbolic link" in failed["error"]["message"]
    assert (await client.delete(f"/v1/backups/{push['id']}")).status_code == 204
    assert sorted(p.name for p in outside.rglob("*")) == sorted(["keep", push["id"]])
    assert list((outside / push["id"]).iterdir()) == []
    assert (outside / "keep").read_bytes() == b"not the service's"


async def test_deleting_a_failed_backup_that_names_another_backups_file_leaves_that_file(
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    other_vm: TestVM,
    database: Database,
) -> None:
    """A row as an older version wrote it (or as libvirt reported it): a failed
    backup whose target is another backup's file. It never made that file."""
    theirs, disk_then = await backup_paused(client, libvirt_conn, other_vm)
    their_file = theirs["disks"][0]["target"]
    failed_id = uuid.uuid4()
    async with database.session_scope() as session:
        session.add(
            Backup(
                id=failed_id,
                host="local",
                domain_uuid=vm.uuid,
                domain_name=vm.name,
                mode="push",
                kind="full",
                status=BackupStatus.FAILED,
                disks=[BackupDisk(name="vda", position=0, format="qcow2", target=their_file)],
            )
        )
    assert (await client.delete(f"/v1/backups/{failed_id}")).status_code == 204
    assert read_image(their_file) == disk_then
    restore = await restored(client, theirs["id"])
    assert Path(restore["disks"][0]["file"]).read_bytes() == disk_then


async def test_delete_removes_the_files_the_backup_made_and_its_directory(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM, settings: Settings
) -> None:
    backup, _ = await backup_paused(client, libvirt_conn, vm)
    target = Path(backup["disks"][0]["target"])
    assert target.is_file()
    assert (await client.delete(f"/v1/backups/{backup['id']}")).status_code == 204
    assert not target.exists()
    assert not target.parent.exists()
