"""Where a pull export may listen: over TCP with TLS, or plain TCP only where the
operator's setting allows it, loopback included (NBD has no authentication)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from app.backups.planner import plan_server
from app.backups.schemas import ServerIn
from app.errors import InvalidRequest
from app.settings import Settings

BACKUP_ID = uuid.uuid4()


def _settings(**values: object) -> Settings:
    return Settings(data_dir=Path("/tmp/vmbackup-test"), **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
def test_plain_tcp_on_loopback_needs_the_setting_too(name: str) -> None:
    # Any local user could read the disks through a loopback port.
    server = ServerIn(transport="tcp", name=name, port=10809)
    with pytest.raises(InvalidRequest, match="VMBACKUP_ALLOW_PLAIN_TCP_EXPORTS"):
        plan_server(server, BACKUP_ID, _settings())
    planned = plan_server(server, BACKUP_ID, _settings(allow_plain_tcp_exports=True))
    assert planned == {"transport": "tcp", "name": name, "port": 10809, "tls": False}


@pytest.mark.parametrize("name", ["127.0.0.1", "192.0.2.10", "0.0.0.0", "::", "kvm1.example.net"])
def test_plain_tcp_elsewhere_needs_tls(name: str) -> None:
    with pytest.raises(InvalidRequest, match="tls"):
        plan_server(ServerIn(transport="tcp", name=name, port=10809), BACKUP_ID, _settings())
    with_tls = ServerIn(transport="tcp", name=name, port=10809, tls=True)
    assert plan_server(with_tls, BACKUP_ID, _settings())["tls"] is True


def test_the_operator_may_allow_plain_tcp() -> None:
    server = ServerIn(transport="tcp", name="192.0.2.10", port=10809)
    planned = plan_server(server, BACKUP_ID, _settings(allow_plain_tcp_exports=True))
    assert planned["tls"] is False
