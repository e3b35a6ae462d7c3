"""Input is taken exactly as sent: names with no trailing newline or control
character, booleans that are not numbers, free text with no NUL."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from app.backups.schemas import BackupCreate
from tests.support.vms import TestVM

BACKUPS = "/v1/hosts/local/domains/{domain}/backups"


@pytest.mark.libvirt
async def test_a_domain_uuid_with_a_trailing_newline_is_not_the_domain(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    assert (await client.get(f"/v1/hosts/local/domains/{vm.uuid}")).status_code == 200
    for suffix in ("\n", " ", "\t", "\x00"):
        ref = quote(vm.uuid + suffix, safe="")
        response = await client.get(f"/v1/hosts/local/domains/{ref}")
        assert response.status_code == 422, suffix
        assert response.json()["code"] == "invalid-request"
        started = await client.post(BACKUPS.format(domain=ref), json={})
        assert started.status_code == 422, suffix
    assert (await client.get("/v1/backups")).json()["items"] == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/hosts/local%0A",
        "/v1/hosts/local%0A/domains",
        "/v1/backups?host=local%0A",
        "/v1/backups?domain=demo%00",
        "/v1/hosts/local/domains/demo/checkpoints/cp%0A",
    ],
)
async def test_a_name_with_a_control_character_is_422(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid-request"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "pull", "ttl_seconds": True}, "body.ttl_seconds"),
        ({"mode": "pull", "ttl_seconds": 60.0}, "body.ttl_seconds"),
        ({"mode": "pull", "ttl_seconds": "60"}, "body.ttl_seconds"),
        ({"quiesce": 1}, "body.quiesce"),
        ({"reuse_external": "true"}, "body.reuse_external"),
        ({"disks": [{"name": "vda", "backup": 0}]}, "body.disks.0.backup"),
        ({"mode": "pull", "server": {"transport": "tcp", "port": "10809"}}, "body.server.port"),
        ({"description": "a\x00b"}, "body.description"),
        ({"description": "bell\x07"}, "body.description"),
        ({"description": "c1\x85"}, "body.description"),
        ({"checkpoint": {"name": "cp", "description": "\x1b[31m"}}, "body.checkpoint"),
        ({"checkpoint": {"name": "cp\n"}}, "body.checkpoint"),
        ({"incremental": "cp\n"}, "body.incremental"),
        ({"disks": [{"name": "vda", "target": {"file": "/x\x00y"}}]}, "body.disks.0.target"),
    ],
)
async def test_a_loose_backup_body_is_422_before_any_lookup(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await client.post(BACKUPS.format(domain="no-such-domain"), json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid-request"
    assert any(error["field"].startswith(field) for error in problem["errors"]), problem


async def test_a_checkpoint_description_refuses_control_characters(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/hosts/local/domains/no-such-domain/checkpoints",
        json={"name": "cp", "description": "nul\x00"},
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.description"


def test_free_text_keeps_tabs_and_line_breaks() -> None:
    body = BackupCreate.model_validate({"description": "two\nlines\tand a tab\r\n"})
    assert body.description == "two\nlines\tand a tab\r\n"
