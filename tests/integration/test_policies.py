"""Policies against a real libvirtd: each due slot runs once per domain (also
with two schedulers racing, and after a service was down for several slots),
through the same path as a POSTed backup; a domain that cannot be backed up is
a skipped run with the reason. The scheduler's clock is the test's."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest
from fastapi import FastAPI

from app.api.state import AppState
from app.db.session import Database
from app.policies import scheduler
from tests.integration.test_backups import TERMINAL, wait_for
from tests.support.vms import TestVM, qemu_img_compare, throwaway_vm

pytestmark = pytest.mark.libvirt
HOURLY = {"cron": "0 * * * *", "timezone": "UTC"}


def _state(app: FastAPI) -> AppState:
    state: AppState = app.state.vmbackup
    return state


async def _policy(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/policies", json={"schedule": HOURLY, **body})
    assert response.status_code == 201, response.text
    return response.json()


async def _runs(client: httpx.AsyncClient, policy_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/policies/{policy_id}/runs")
    assert response.status_code == 200, response.text
    runs: list[dict[str, Any]] = response.json()["items"]
    return runs


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_each_slot_runs_once_per_domain_and_missed_slots_run_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    tmp_path: Path,
    vm: TestVM,
) -> None:
    state = _state(app)
    with throwaway_vm(libvirt_conn, workdir=tmp_path / "second") as other:
        policy = await _policy(
            client, name="hourly", selector={"host": "local", "domains": [vm.name, other.uuid]}
        )
        first_slot = _at(policy["next_run_at"])
        assert first_slot.minute == 0
        assert first_slot.second == 0

        assert await scheduler.run_due(state.database, state.hosts, state.settings, first_slot) == 1
        # The same slot seen again (by this replica or another) runs nothing more.
        assert await scheduler.run_due(state.database, state.hosts, state.settings, first_slot) == 0
        runs = await _runs(client, policy["id"])
        assert sorted(r["domain"]["name"] for r in runs) == sorted([vm.name, other.name])
        backups = [await wait_for(client, r["backup_id"], TERMINAL) for r in runs]
        assert [b["status"] for b in backups] == ["succeeded", "succeeded"]
        assert {b["policy_id"] for b in backups} == {policy["id"]}
        for backup in backups:
            disk = vm.disks["vda"] if backup["domain"]["name"] == vm.name else other.disks["vda"]
            assert qemu_img_compare(disk, backup["disks"][0]["target"])

        second_slot = _at((await client.get(f"/v1/policies/{policy['id']}")).json()["next_run_at"])
        assert second_slot == first_slot + timedelta(hours=1)
        # Down across three slots: one run when it is back, not three.
        back = second_slot + timedelta(hours=3, minutes=10)
        assert await scheduler.run_due(state.database, state.hosts, state.settings, back) == 1
        assert await scheduler.run_due(state.database, state.hosts, state.settings, back) == 0
        runs = await _runs(client, policy["id"])
        assert len(runs) == 4
        assert {_at(r["scheduled_for"]) for r in runs} == {first_slot, second_slot}
        later = _at((await client.get(f"/v1/policies/{policy['id']}")).json()["next_run_at"])
        assert later == second_slot + timedelta(hours=4)
        for run in runs:
            assert (await wait_for(client, run["backup_id"], TERMINAL))["status"] == "succeeded"
        # The second run of each domain builds on the first.
        newest = (await client.get(f"/v1/backups?domain={vm.name}&limit=1")).json()["items"][0]
        assert newest["kind"] == "incremental"


async def test_two_schedulers_racing_for_one_slot_make_one_run_per_domain(
    app: FastAPI, client: httpx.AsyncClient, vm: TestVM
) -> None:
    state = _state(app)
    policy = await _policy(client, name="raced", selector={"domains": [vm.uuid]})
    slot = _at(policy["next_run_at"])
    replica = Database(state.database.url)  # a second replica's own connections
    try:
        taken = await asyncio.gather(
            scheduler.run_due(state.database, state.hosts, state.settings, slot),
            scheduler.run_due(replica, state.hosts, state.settings, slot),
        )
    finally:
        await replica.dispose()
    assert sorted(taken) == [0, 1]
    runs = await _runs(client, policy["id"])
    assert len(runs) == 1
    listed = (await client.get(f"/v1/backups?domain={vm.uuid}")).json()["items"]
    assert [b["id"] for b in listed] == [runs[0]["backup_id"]]
    assert (await wait_for(client, runs[0]["backup_id"], TERMINAL))["status"] == "succeeded"


async def test_a_shut_off_or_missing_domain_is_a_skipped_run_with_the_reason(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, tmp_path: Path, vm: TestVM
) -> None:
    with throwaway_vm(libvirt_conn, workdir=tmp_path / "off", start=False) as off:
        policy = await _policy(
            client, name="some-off", selector={"domains": [vm.name, off.name, "no-such-vm"]}
        )
        response = await client.post(f"/v1/policies/{policy['id']}/run")
    assert response.status_code == 202, response.text
    runs = {r["domain"]["name"]: r for r in response.json()["items"]}
    assert runs[off.name]["skipped"] == "domain is shutoff"
    assert runs[off.name]["backup_id"] is None
    assert runs["*"]["skipped"] == "domain no-such-vm not found on host local"
    assert runs[vm.name]["skipped"] is None
    done = await wait_for(client, runs[vm.name]["backup_id"], TERMINAL)
    assert done["status"] == "succeeded"

    metrics = (await client.get("/metrics")).text
    assert 'vmbackup_policy_skipped_runs{policy="some-off"} 2.0' in metrics
    assert 'vmbackup_policy_last_success_timestamp_seconds{policy="some-off"}' in metrics
    assert 'vmbackup_policy_next_run_timestamp_seconds{policy="some-off"}' in metrics


async def test_full_every_starts_a_new_chain_after_that_many_incrementals(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    policy = await _policy(
        client, name="short-chains", selector={"domains": [vm.name]}, full_every={"incrementals": 1}
    )
    kinds = []
    for _ in range(4):
        run = (await client.post(f"/v1/policies/{policy['id']}/run")).json()["items"][0]
        kinds.append((await wait_for(client, run["backup_id"], TERMINAL))["kind"])
    assert kinds == ["full", "incremental", "full", "incremental"]
