"""Many backups of one domain asked for at once: every request is accepted and
queued, they run one at a time, and each `auto` backup builds on the one that
ran before it (its base is chosen as it starts)."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import libvirt
import pytest

from tests.integration.test_backups import TERMINAL, wait_for
from tests.support.vms import MiB, TestVM, pause, qemu_img_compare, resume, write_pattern

pytestmark = pytest.mark.libvirt


async def test_ten_auto_backups_posted_at_once_each_build_on_the_one_before(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    write_pattern(libvirt_conn, vm, "vda", 3 * MiB, 2 * MiB, 0xC3)
    pause(libvirt_conn, vm)  # every backup then holds exactly this disk
    url = f"/v1/hosts/local/domains/{vm.name}/backups"
    at_once = await asyncio.gather(*(client.post(url, json={}) for _ in range(6)))
    # ... and more in a tight loop while the first ones start.
    in_a_loop = [await client.post(url, json={"kind": "auto"}) for _ in range(4)]
    assert [r.status_code for r in (*at_once, *in_a_loop)] == [202] * 10, [
        r.text for r in (*at_once, *in_a_loop) if r.status_code != 202
    ]

    ids = [r.json()["id"] for r in (*at_once, *in_a_loop)]
    done = [await wait_for(client, backup_id, TERMINAL, timeout=120) for backup_id in ids]
    resume(libvirt_conn, vm)

    assert [b["status"] for b in done] == ["succeeded"] * 10
    ran = sorted(done, key=lambda b: b["started_at"])
    assert ran[0]["kind"] == "full"
    for before, after in itertools.pairwise(ran):
        assert after["kind"] == "incremental", after
        assert after["incremental"] == before["checkpoint"]
        assert after["started_at"] >= before["finished_at"]  # one at a time
    for backup in done:
        assert qemu_img_compare(vm.disks["vda"], backup["disks"][0]["target"])
    # The completed job's statistics are the final progress. (libvirt reports no
    # counters for an incremental with nothing dirty, as these are: paused.)
    assert ran[0]["progress"]["bytes_total"] == 64 * MiB
    assert ran[0]["progress"]["bytes_processed"] == 64 * MiB
