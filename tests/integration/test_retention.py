"""Retention against a real libvirtd: a policy's backups beyond what it keeps
are pruned without breaking a kept chain (the oldest kept incremental is merged
forward, self-contained), also when a merge is cut off midway; every kept
backup still reads back the disk exactly as it was at its instant."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest
from fastapi import FastAPI

from app.api.state import AppState
from app.policies import retention
from tests.integration.test_backups import TERMINAL, wait_for
from tests.support.vms import MiB, TestVM, pause, read_image, resume, write_pattern

pytestmark = pytest.mark.libvirt


async def _backed_up_runs(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM, policy_id: str, n: int
) -> list[tuple[dict[str, Any], bytes]]:
    """`n` runs of the policy, the disk changed before each; each backup with the
    disk as it was at its instant (the domain is paused while it runs)."""
    made = []
    for step in range(n):
        write_pattern(libvirt_conn, vm, "vda", step * 3 * MiB, MiB, 0x20 + step)
        pause(libvirt_conn, vm)
        run = (await client.post(f"/v1/policies/{policy_id}/run")).json()["items"][0]
        backup = await wait_for(client, run["backup_id"], TERMINAL)
        assert backup["status"] == "succeeded", backup
        made.append((backup, read_image(vm.disks["vda"])))
        resume(libvirt_conn, vm)
    return made


async def _remaining(client: httpx.AsyncClient, vm: TestVM) -> list[dict[str, Any]]:
    listed = await client.get(f"/v1/backups?domain={vm.uuid}&status=succeeded")
    items: list[dict[str, Any]] = listed.json()["items"]
    return items


async def _restores_exactly(
    client: httpx.AsyncClient, backup: dict[str, Any], disk_then: bytes
) -> None:
    chain = await client.get(f"/v1/backups/{backup['id']}/chain")
    assert chain.status_code == 200, chain.text
    newest = chain.json()["disks"]["vda"][-1]["file"]
    assert read_image(newest, "qcow2") == disk_then


async def test_keep_last_three_of_eight_leaves_three_that_restore_exactly(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    created = await client.post(
        "/v1/policies",
        json={
            "name": "keep-3",
            "selector": {"domains": [vm.name]},
            "schedule": {"cron": "0 3 * * *"},
            "retention": {"last": 3},
        },
    )
    made = await _backed_up_runs(client, libvirt_conn, vm, created.json()["id"], 8)

    kept_ids = sorted(backup["id"] for backup, _ in made[-3:])
    for _ in range(300):  # the pool prunes right after each success
        remaining = await _remaining(client, vm)
        if sorted(b["id"] for b in remaining) == kept_ids:
            break
        await asyncio.sleep(0.1)
    assert sorted(b["id"] for b in remaining) == kept_ids
    for backup, disk_then in made[-3:]:
        await _restores_exactly(client, backup, disk_then)
    oldest_kept = (await client.get(f"/v1/backups/{made[-3][0]['id']}")).json()
    assert oldest_kept["kind"] == "full"  # merged forward: self-contained now
    for backup, _ in made[:-3]:
        assert (await client.get(f"/v1/backups/{backup['id']}")).status_code == 404
        assert not Path(backup["disks"][0]["target"]).exists()


async def test_a_merge_cut_off_midway_is_finished_and_no_chain_ever_opens_wrong(
    app: FastAPI,
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created = await client.post(
        "/v1/policies",
        json={
            "name": "later",
            "selector": {"domains": [vm.name]},
            "schedule": {"cron": "0 3 * * *"},
        },
    )
    policy = created.json()
    made = await _backed_up_runs(client, libvirt_conn, vm, policy["id"], 4)
    await client.patch(f"/v1/policies/{policy['id']}", json={"retention": {"last": 2}})

    class Died(Exception):
        """The process stopping right after a rebase, before it is recorded."""

    def die(step: str) -> None:
        if step == "merging":
            raise Died(step)

    state: AppState = app.state.vmbackup
    monkeypatch.setattr(retention, "crash_point", die)
    with pytest.raises(Died):
        await retention.apply(state.database, state.settings, uuid.UUID(policy["id"]), vm.uuid)
    # Cut off with the file rebased but not recorded: every chain still opens right.
    for backup, disk_then in made:
        await _restores_exactly(client, backup, disk_then)

    monkeypatch.undo()
    await retention.finish(state.database, state.settings)  # what the next start does
    remaining = await _remaining(client, vm)
    assert sorted(b["id"] for b in remaining) == sorted(b["id"] for b, _ in made[-2:])
    for backup, disk_then in made[-2:]:
        await _restores_exactly(client, backup, disk_then)


async def test_a_long_merge_does_not_hold_up_the_next_backup(
    client: httpx.AsyncClient, vm: TestVM, monkeypatch: pytest.MonkeyPatch
) -> None:
    merging, merged = asyncio.Event(), asyncio.Event()

    async def slow_merge(*_args: object) -> None:  # a rebase of a large file
        merging.set()
        await merged.wait()

    monkeypatch.setattr(retention, "apply", slow_merge)
    created = await client.post(
        "/v1/policies",
        json={
            "name": "slow",
            "selector": {"domains": [vm.name]},
            "schedule": {"cron": "0 3 * * *"},
            "retention": {"last": 1},
        },
    )
    run = (await client.post(f"/v1/policies/{created.json()['id']}/run")).json()["items"][0]
    assert (await wait_for(client, run["backup_id"], TERMINAL))["status"] == "succeeded"
    await asyncio.wait_for(merging.wait(), 30)

    # The retention pass is still merging: a backup asked for now runs to its end.
    second = await client.post(f"/v1/hosts/local/domains/{vm.name}/backups", json={"mode": "push"})
    assert second.status_code == 202, second.text
    assert (await wait_for(client, second.json()["id"], TERMINAL))["status"] == "succeeded"
    assert not merged.is_set()
    merged.set()
