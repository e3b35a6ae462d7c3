"""A process that stops leaves its libvirt jobs running; the next one takes
them over by lease and follows them to the end, without a second job."""

from __future__ import annotations

import httpx
import libvirt
import pytest

from app.main import create_app
from app.settings import Settings
from tests.integration.test_backups import TERMINAL, wait_for
from tests.support.vms import TestVM

pytestmark = pytest.mark.libvirt


async def test_a_restarted_service_takes_over_a_ready_pull_and_finishes_it(
    settings: Settings, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    first = create_app(settings)
    async with first.router.lifespan_context(first):
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            started = await client.post(
                f"/v1/hosts/local/domains/{vm.name}/backups", json={"mode": "pull"}
            )
            backup = await wait_for(client, started.json()["id"], {"ready"})
    dom = libvirt_conn.lookupByUUIDString(vm.uuid)
    assert dom.jobStats()["type"] != libvirt.VIR_DOMAIN_JOB_NONE  # the job outlived us

    second = create_app(settings)
    async with second.router.lifespan_context(second):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            assert (await client.post(f"/v1/backups/{backup['id']}/finish")).status_code == 202
            done = await wait_for(client, backup["id"], TERMINAL, timeout=30)
    assert done["status"] == "succeeded"
    assert [cp.getName() for cp in dom.listAllCheckpoints()] == [backup["checkpoint"]]
    assert dom.jobStats().get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE
