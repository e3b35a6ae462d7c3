"""Checkpoints through the API against a real libvirtd: the lineage in the
database and in libvirt, sizes from QEMU's bitmaps, and reconcile repairing
what happened behind the service's back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from tests.integration.test_backups import start, wait_for
from tests.support.vms import (
    MiB,
    TestVM,
    domain,
    drop_bitmap,
    lose_checkpoint_metadata,
    throwaway_vm,
    write_pattern,
)

pytestmark = pytest.mark.libvirt


def _url(vm: TestVM, suffix: str = "") -> str:
    return f"/v1/hosts/local/domains/{vm.name}/checkpoints{suffix}"


async def _create(client: httpx.AsyncClient, vm: TestVM, **body: Any) -> dict[str, Any]:
    response = await client.post(_url(vm), json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert response.headers["location"] == _url(vm, f"/{created['name']}")
    return created


async def _listed(client: httpx.AsyncClient, vm: TestVM) -> dict[str, dict[str, Any]]:
    """name -> checkpoint, in the order listed."""
    response = await client.get(_url(vm))
    assert response.status_code == 200, response.text
    return {cp["name"]: cp for cp in response.json()["items"]}


async def _reconcile(client: httpx.AsyncClient, vm: TestVM, dry_run: bool = False) -> Any:
    response = await client.post(_url(vm, "/reconcile"), params={"dry_run": dry_run})
    assert response.status_code == 200, response.text
    return response.json()


def _parents(dom: libvirt.virDomain) -> dict[str, str | None]:
    """libvirt's own lineage."""
    found: dict[str, str | None] = {}
    for cp in dom.listAllCheckpoints(libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL):
        try:
            found[cp.getName()] = cp.getParent().getName()
        except libvirt.libvirtError:
            found[cp.getName()] = None  # a root: "does not have a parent"
    return found


async def test_create_list_and_get_with_sizes(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    first = await _create(client, vm, name="first", description="before the data")
    assert first["parent"] is None
    assert first["disks"] == [
        {"name": "vda", "checkpoint": "bitmap", "bitmap": "first", "size_bytes": None}
    ]
    assert (first["state"], first["in_libvirt"], first["backup_id"]) == ("ok", True, None)
    write_pattern(libvirt_conn, vm, "vda", 0, 1 * MiB, 0xAB)
    second = await _create(client, vm)  # a generated name
    assert second["name"].startswith("vmb-")
    assert second["parent"] == "first"

    listed = await _listed(client, vm)
    assert list(listed) == ["first", second["name"]]
    assert listed["first"]["description"] == "before the data"
    got = (await client.get(_url(vm, "/first"))).json()
    assert got["disks"][0]["size_bytes"] >= 1 * MiB
    newest = (await client.get(_url(vm, f"/{second['name']}"))).json()
    assert newest["disks"][0]["size_bytes"] < 1 * MiB
    assert _parents(domain(libvirt_conn, vm)) == {"first": None, second["name"]: "first"}


async def test_disks_left_out_get_no_bitmap(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, tmp_path: Path
) -> None:
    with throwaway_vm(
        libvirt_conn, workdir=tmp_path, disks={"vda": 64 * MiB, "vdb": 64 * MiB}
    ) as vm:
        made = await _create(client, vm, name="only-b", disks=[{"name": "vdb"}])
        assert made["disks"] == [
            {"name": "vda", "checkpoint": "no", "bitmap": None, "size_bytes": None},
            {"name": "vdb", "checkpoint": "bitmap", "bitmap": "only-b", "size_bytes": None},
        ]
        got = (await client.get(_url(vm, "/only-b"))).json()
        assert [d["size_bytes"] for d in got["disks"]] == [None, 0]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"name": "bad name!"}, 422, "invalid-request"),
        ({"name": "-leading-dash"}, 422, "invalid-request"),
        ({"disks": [{"name": "vdz"}]}, 422, "unknown-disk"),
        ({"disks": [{"name": "vda", "checkpoint": "no"}]}, 422, "invalid-request"),
        ({"disks": [{"name": "vda"}, {"name": "vda"}]}, 422, "invalid-request"),
        ({"disks": [{"name": "vda", "checkpoint": "maybe"}]}, 422, "invalid-request"),
        ({"description": "x" * 1025}, 422, "invalid-request"),
        ({"parent": "x"}, 422, "invalid-request"),
        ({"name": "taken"}, 409, "invalid-state"),
    ],
)
async def test_a_bad_create_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    await _create(client, vm, name="taken")
    response = await client.post(_url(vm), json=body)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert list(await _listed(client, vm)) == ["taken"]
    assert list(_parents(domain(libvirt_conn, vm))) == ["taken"]


async def test_unknown_names_are_404_and_bad_ones_422(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    for method in ("GET", "DELETE"):
        missing = await client.request(method, _url(vm, "/nope"))
        assert (missing.status_code, missing.json()["code"]) == (404, "checkpoint-not-found")
        bad = await client.request(method, _url(vm, "/bad%20name"))
        assert (bad.status_code, bad.json()["code"]) == (422, "invalid-request")
    no_domain = await client.get("/v1/hosts/local/domains/vmbt-none/checkpoints")
    assert (no_domain.status_code, no_domain.json()["code"]) == (404, "domain-not-found")
    no_host = await client.get(f"/v1/hosts/elsewhere/domains/{vm.name}/checkpoints")
    assert (no_host.status_code, no_host.json()["code"]) == (404, "host-not-found")


async def test_a_domain_that_is_not_running_gets_409_but_metadata_can_go(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    await _create(client, vm, name="a")
    dom = domain(libvirt_conn, vm)
    dom.destroy()
    for path in (_url(vm), _url(vm, "/reconcile")):
        response = await client.post(path, json={})
        assert (response.status_code, response.json()["code"]) == (409, "domain-not-running")
    refused = await client.delete(_url(vm, "/a"))
    assert (refused.status_code, refused.json()["code"]) == (409, "domain-not-running")
    got = (await client.get(_url(vm, "/a"))).json()
    assert (got["state"], got["in_libvirt"], got["disks"][0]["size_bytes"]) == ("ok", True, None)

    deleted = await client.delete(_url(vm, "/a"), params={"metadata_only": True})
    assert deleted.status_code == 204
    assert dom.listAllCheckpoints() == []
    assert (await client.get(_url(vm))).json() == {"items": []}


async def test_idempotency_key_replays_the_create(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    headers = {"Idempotency-Key": "cp-once"}
    first = await client.post(_url(vm), json={"description": "once"}, headers=headers)
    again = await client.post(_url(vm), json={"description": "once"}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    other = await client.post(_url(vm), json={"description": "other"}, headers=headers)
    assert (other.status_code, other.json()["code"]) == (422, "idempotency-conflict")
    assert list(_parents(domain(libvirt_conn, vm))) == [first.json()["name"]]


async def test_deleting_a_middle_checkpoint_reparents_its_child(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    for name in ("a", "b", "c"):
        await _create(client, vm, name=name)
        write_pattern(libvirt_conn, vm, "vda", 0, 1 * MiB, 0x11)
    deleted = await client.delete(_url(vm, "/b"))
    assert deleted.status_code == 204, deleted.text
    listed = await _listed(client, vm)
    assert {name: cp["parent"] for name, cp in listed.items()} == {"a": None, "c": "a"}
    dom = domain(libvirt_conn, vm)
    assert dom.checkpointLookupByName("c").getParent().getName() == "a"
    assert _parents(dom) == {"a": None, "c": "a"}
    # The stored XML follows: after a loss of metadata, c is redefined under a.
    lose_checkpoint_metadata(libvirt_conn, vm)
    assert (await _reconcile(client, vm))["redefined"] == ["a", "c"]
    assert _parents(domain(libvirt_conn, vm)) == {"a": None, "c": "a"}


async def test_deleting_with_children_removes_the_subtree(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    for name in ("a", "b", "c"):
        await _create(client, vm, name=name)
    deleted = await client.delete(_url(vm, "/b"), params={"children": True})
    assert deleted.status_code == 204
    assert list(await _listed(client, vm)) == ["a"]
    assert _parents(domain(libvirt_conn, vm)) == {"a": None}


async def test_reconcile_redefines_checkpoints_whose_metadata_was_lost(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    for name in ("a", "b", "c"):
        await _create(client, vm, name=name)
    lose_checkpoint_metadata(libvirt_conn, vm)
    listed = await _listed(client, vm)
    assert {(cp["state"], cp["in_libvirt"]) for cp in listed.values()} == {("missing", False)}

    dry = await _reconcile(client, vm, dry_run=True)
    nothing_else: dict[str, Any] = {"imported": [], "updated": [], "broken": [], "unchanged": 0}
    assert dry == {"redefined": ["a", "b", "c"], **nothing_else}
    assert domain(libvirt_conn, vm).listAllCheckpoints() == []
    assert await _listed(client, vm) == listed

    done = await _reconcile(client, vm)
    assert done == dry
    assert _parents(domain(libvirt_conn, vm)) == {"a": None, "b": "a", "c": "b"}
    listed = await _listed(client, vm)
    assert {(cp["state"], cp["in_libvirt"]) for cp in listed.values()} == {("ok", True)}
    # The bitmaps are live again: they count what the guest writes now.
    write_pattern(libvirt_conn, vm, "vda", 0, 1 * MiB, 0x22)
    got = (await client.get(_url(vm, "/a"))).json()
    assert got["disks"][0]["size_bytes"] >= 1 * MiB
    assert (await _reconcile(client, vm))["unchanged"] == 3


async def test_reconcile_imports_a_checkpoint_made_outside(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    await _create(client, vm, name="ours")
    dom = domain(libvirt_conn, vm)
    dom.checkpointCreateXML("<domaincheckpoint><name>outside</name></domaincheckpoint>")
    listed = await _listed(client, vm)
    assert listed["outside"]["parent"] == "ours"
    assert (listed["outside"]["backup_id"], listed["outside"]["in_libvirt"]) == (None, True)

    dry = await _reconcile(client, vm, dry_run=True)
    assert (dry["imported"], dry["unchanged"]) == (["outside"], 1)
    assert (await _reconcile(client, vm)) == dry
    again = await _reconcile(client, vm)
    assert again == {"redefined": [], "imported": [], "updated": [], "broken": [], "unchanged": 2}
    # Recorded with its XML: it comes back after a loss of metadata.
    lose_checkpoint_metadata(libvirt_conn, vm)
    assert (await _reconcile(client, vm))["redefined"] == ["ours", "outside"]


async def test_reconcile_marks_a_checkpoint_deleted_outside_broken(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    for name in ("a", "b", "c"):
        await _create(client, vm, name=name)
    domain(libvirt_conn, vm).checkpointLookupByName("b").delete()  # with its bitmap
    listed = await _listed(client, vm)
    assert (listed["b"]["state"], listed["b"]["in_libvirt"]) == ("missing", False)

    done = await _reconcile(client, vm)
    assert done["redefined"] == []
    assert done["updated"] == ["c"]  # libvirt re-parented it under a
    assert [b["name"] for b in done["broken"]] == ["b"]
    assert "missing or broken bitmap 'b' for disk 'vda'" in done["broken"][0]["reason"]
    listed = await _listed(client, vm)
    assert (listed["b"]["state"], listed["b"]["in_libvirt"]) == ("broken", False)
    assert listed["b"]["state_reason"] == done["broken"][0]["reason"]
    assert listed["c"]["parent"] == "a"
    # Known broken: reported again, not retried.
    again = await _reconcile(client, vm)
    assert (again["broken"], again["unchanged"]) == (done["broken"], 2)
    deleted = await client.delete(_url(vm, "/b"))
    assert deleted.status_code == 204
    assert list(await _listed(client, vm)) == ["a", "c"]


async def test_reconcile_marks_a_checkpoint_whose_bitmap_is_gone_broken(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    await _create(client, vm, name="a")
    await _create(client, vm, name="b")
    dom = domain(libvirt_conn, vm)
    drop_bitmap(dom, "a")  # libvirt's metadata stays

    done = await _reconcile(client, vm)
    assert done["broken"] == [{"name": "a", "reason": done["broken"][0]["reason"]}]
    assert "QEMU has no bitmap 'a' of disk vda" in done["broken"][0]["reason"]
    assert done["unchanged"] == 1
    got = (await client.get(_url(vm, "/a"))).json()
    assert (got["state"], got["in_libvirt"], got["disks"][0]["size_bytes"]) == (
        "broken",
        True,
        None,
    )
    # libvirt cannot merge a bitmap it cannot find; dropping the metadata works.
    refused = await client.delete(_url(vm, "/a"))
    assert (refused.status_code, refused.json()["code"]) == (502, "libvirt-error")
    assert "bitmap 'a' not found" in refused.json()["detail"]
    deleted = await client.delete(_url(vm, "/a"), params={"metadata_only": True})
    assert deleted.status_code == 204
    assert _parents(dom) == {"b": None}
    assert list(await _listed(client, vm)) == ["b"]


async def test_a_running_backup_job_leaves_sizes_null_and_its_checkpoint_alone(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    await _create(client, vm, name="before")
    backup = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    made = backup["checkpoint"]
    got = (await client.get(_url(vm, "/before"))).json()
    assert got["disks"][0]["size_bytes"] is None
    listed = await _listed(client, vm)
    assert listed[made]["backup_id"] == backup["id"]
    in_use = await client.delete(_url(vm, f"/{made}"))
    assert (in_use.status_code, in_use.json()["code"]) == (409, "invalid-state")
    # Not imported: the backup records it when it succeeds.
    done = await _reconcile(client, vm)
    assert (done["imported"], done["unchanged"]) == ([], 1)

    await client.post(f"/v1/backups/{backup['id']}/finish")
    assert (await wait_for(client, backup["id"], {"succeeded", "failed"}))["status"] == "succeeded"
    listed = await _listed(client, vm)
    assert list(listed) == ["before", made]
    assert listed[made]["backup_id"] == backup["id"]
    assert (await _reconcile(client, vm))["unchanged"] == 2
