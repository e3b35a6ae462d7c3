"""Who can read a pull export on a unix socket: the service's user and root, not
every local user. NBD has no authentication of its own, so the socket's directory
is what keeps others out: SOCKET_ROOT grants nothing to other users."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.support.vms import TestVM

pytestmark = pytest.mark.libvirt
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def settings(settings: Settings) -> Iterator[Settings]:
    # Under /run (0755), not pytest's own 0700 folder, so that whether another user
    # can reach a socket depends on SOCKET_ROOT alone.
    parent = Path(tempfile.mkdtemp(prefix="vmbackup-test-", dir="/run"))
    parent.chmod(0o755)
    yield settings.model_copy(update={"socket_root": parent / "sockets"})
    subprocess.run(["rm", "-rf", str(parent)], check=True)


def _nbdinfo(uri: str, *, user: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*user, "nbdinfo", "--size", uri], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_unix_socket_export_is_closed_to_other_users(
    client: httpx.AsyncClient, settings: Settings, vm: TestVM
) -> None:
    settings.socket_root.mkdir(mode=0o755)  # as an operator might have made it
    backup = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    try:
        uri = backup["disks"][0]["nbd_uri"]
        socket = Path(backup["server"]["socket"])
        assert socket.parent == settings.socket_root
        assert stat.S_ISSOCK(os.stat(socket).st_mode)
        assert stat.S_IMODE(os.stat(settings.socket_root).st_mode) & 0o007 == 0
        as_root = _nbdinfo(uri, user=[])
        assert as_root.returncode == 0, as_root.stderr
        assert int(as_root.stdout) == 64 * 1024 * 1024
        as_nobody = _nbdinfo(uri, user=NOBODY)
        assert as_nobody.returncode != 0
        assert "Permission denied" in as_nobody.stderr
    finally:
        await client.post(f"/v1/backups/{backup['id']}/cancel")
    assert (await wait_for(client, backup["id"], TERMINAL))["status"] == "cancelled"
