"""Event ids are SSE ids: a dashboard resumes with the last one it saw, so an
id, once given, is never given again, even after the newest backups are deleted."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.integration.test_events import parse_sse
from tests.support.vms import TestVM

pytestmark = pytest.mark.libvirt


async def _event_ids(client: httpx.AsyncClient, backup_id: str) -> list[int]:
    response = await client.get(f"/v1/backups/{backup_id}/events")
    return [event["id"] for event in parse_sse(response.text)]


async def test_deleting_the_newest_backup_does_not_free_its_event_ids(
    client: httpx.AsyncClient, vm: TestVM
) -> None:
    first = await wait_for(client, (await start(client, vm, checkpoint=False))["id"], TERMINAL)
    first_ids = await _event_ids(client, first["id"])
    assert first_ids
    deleted = await client.delete(f"/v1/backups/{first['id']}")
    assert deleted.status_code == 204, deleted.text

    second = await wait_for(client, (await start(client, vm, checkpoint=False))["id"], TERMINAL)
    second_ids = await _event_ids(client, second["id"])
    assert second_ids
    assert min(second_ids) > max(first_ids)
