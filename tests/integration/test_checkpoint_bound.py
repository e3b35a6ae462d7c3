"""Checkpoints stay bounded: after each success the service keeps the newest
`CHECKPOINTS_PER_DOMAIN` it made and deletes the older ones in libvirt and in
the lineage; chains (which are chains of backups) still open, and checkpoints
made outside the service are left alone."""

from __future__ import annotations

import httpx
import libvirt
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.support.vms import MiB, TestVM, pause, qemu_img_compare, resume, write_pattern

pytestmark = pytest.mark.libvirt


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings.model_copy(update={"checkpoints_per_domain": 2}))


async def test_only_the_newest_checkpoints_remain_and_every_chain_still_opens(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    dom = libvirt_conn.lookupByUUIDString(vm.uuid)
    mine = dom.checkpointCreateXML(
        "<domaincheckpoint><name>made-by-hand</name></domaincheckpoint>", 0
    ).getName()
    backups = []
    for step in range(5):
        write_pattern(libvirt_conn, vm, "vda", step * 4 * MiB, MiB, 0x10 + step)
        pause(libvirt_conn, vm)
        done = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
        assert done["status"] == "succeeded", done
        assert qemu_img_compare(vm.disks["vda"], done["disks"][0]["target"])
        resume(libvirt_conn, vm)
        backups.append(done)

    newest = [b["checkpoint"] for b in backups[-2:]]
    assert sorted(cp.getName() for cp in dom.listAllCheckpoints()) == sorted([mine, *newest])
    listed = (await client.get(f"/v1/hosts/local/domains/{vm.name}/checkpoints")).json()
    assert sorted(cp["name"] for cp in listed["items"]) == sorted([mine, *newest])
    assert backups[-1]["kind"] == "incremental"
    assert backups[-1]["incremental"] == backups[-2]["checkpoint"]
    chain = (await client.get(f"/v1/backups/{backups[-1]['id']}/chain")).json()
    assert [link["backup_id"] for link in chain["disks"]["vda"]] == [b["id"] for b in backups]
