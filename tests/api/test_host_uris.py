"""Host URIs: only the allow-listed shapes reach libvirt (app/hosts/uris.py).

libvirt acts on what a URI says (runs `?command=`, reads `?keyfile=`, parses
`test:///<file>`), so a refused URI must be refused before libvirt is called:
the marker tests prove no program ran."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import libvirt
import pytest
from fastapi import FastAPI

from app.hosts.registry import HypervisorFactory
from app.hosts.uris import UriRefused, check_host_uri
from app.main import create_app
from app.settings import Settings

pytestmark = pytest.mark.libvirt

REFUSED = [
    "qemu+ssh://localhost/system?keyfile=/etc/shadow",
    "qemu+ssh://localhost/system?no_verify=1",
    "qemu+ssh://localhost/system?no_tty=1",
    "qemu+tls://localhost/system?pkipath=/root",
    "qemu+tls://localhost/system?no_verify=1",
    "qemu+tls://localhost/system?name=qemu:///embed",
    "qemu+ssh://localhost/system?socket=/run/other.sock",
    "qemu+ssh://localhost/system?mode=legacy",
    "qemu+ssh://localhost/system%3Fcommand=/bin/sh",
    "qemu+unix:///system?socket=/run/other.sock",
    "qemu:///embed?root=/etc",
    "qemu:///session",
    "qemu+libssh2://localhost/system?known_hosts=/etc/shadow",
    "test:///etc/passwd",
    "test:///default",
    "http://example.com/",
    "qemu+ssh://-oProxyCommand=x/system",
    "qemu+ssh://host/system extra",
    "qemu+tls://host/system#x",
    "qemu+tls://host:99999/system",
    "qemu+tls://user@host/system",
    "qemu+tls://host/system/",
    "lxc:///system",
]


@pytest.mark.parametrize("uri", REFUSED)
async def test_a_uri_outside_the_allow_list_is_422_and_not_registered(
    client: httpx.AsyncClient, uri: str
) -> None:
    response = await client.post("/v1/hosts", json={"name": "h", "uri": uri})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "uri-not-allowed"
    assert [error["field"] for error in problem["errors"]] == ["body.uri"]
    assert "/etc" not in problem["detail"]
    assert "/root" not in problem["detail"]
    assert [h["name"] for h in (await client.get("/v1/hosts")).json()["items"]] == ["local"]


def _marker_script(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "marker"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, marker


def test_the_marker_script_runs_when_libvirt_is_given_the_uri(tmp_path: Path) -> None:
    """The control: the attack is real, so the next test's missing marker means something."""
    script, marker = _marker_script(tmp_path)
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(f"qemu+ssh://localhost/system?command={script}")
    assert marker.exists()


@pytest.mark.parametrize(
    "template",
    [
        "qemu+ssh://localhost/system?command={script}",
        "qemu+ssh://localhost/system?netcat={script}",
        "qemu+ext:///system?command={script}",
        "qemu+ssh://localhost/system?command={script}&keyfile=/etc/shadow",
    ],
)
async def test_a_uri_naming_a_program_runs_nothing(
    client: httpx.AsyncClient, tmp_path: Path, template: str
) -> None:
    script, marker = _marker_script(tmp_path)
    uri = template.format(script=script)
    response = await client.post("/v1/hosts", json={"name": "evil", "uri": uri})
    assert response.status_code == 422
    assert response.json()["code"] == "uri-not-allowed"
    assert str(script) not in response.json()["detail"]
    assert not marker.exists()


@pytest.mark.parametrize(
    "uri",
    [
        "qemu:///system",
        "qemu+tls://kvm1.example.net/system",
        "qemu+tls://kvm1.example.net:16514/system",
        "qemu://10.0.0.5/system",
        "qemu+ssh://root@kvm2.example.net/system",
        "qemu+ssh://[2001:db8::1]:2222/system",
    ],
)
def test_the_allowed_shapes_pass(uri: str) -> None:
    assert check_host_uri(uri, allow_tcp=False) == uri


def test_tcp_needs_the_setting() -> None:
    uri = "qemu+tcp://127.0.0.1/system"
    assert check_host_uri(uri, allow_tcp=True) == uri
    with pytest.raises(UriRefused, match="VMBACKUP_ALLOW_TCP_HOSTS"):
        check_host_uri(uri, allow_tcp=False)


class TestWithoutTcp:
    @pytest.fixture
    def app(self, settings: Settings, hypervisor_factory: HypervisorFactory | None) -> FastAPI:
        return create_app(settings.model_copy(update={"allow_tcp_hosts": False}), None)

    async def test_a_tcp_host_is_refused_unless_allowed(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/v1/hosts", json={"name": "plain", "uri": "qemu+tcp://127.0.0.1/system"}
        )
        assert response.status_code == 422
        assert response.json()["code"] == "uri-not-allowed"
        assert "VMBACKUP_ALLOW_TCP_HOSTS" in response.json()["detail"]


async def test_a_host_error_quotes_no_file(client: httpx.AsyncClient) -> None:
    # libvirt's TLS error names the CA certificate file it could not read.
    response = await client.post(
        "/v1/hosts", json={"name": "tls", "uri": "qemu+tls://127.0.0.1:1/system"}
    )
    assert response.status_code == 201
    host = response.json()
    assert host["state"] == "disconnected"
    assert host["error"]
    assert "/etc/" not in host["error"]
    assert "cacert" not in host["error"]
    listed = (await client.get("/v1/hosts/tls")).json()
    assert listed["error"] == host["error"]


def test_a_local_uri_outside_the_allow_list_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="VMBACKUP_LIBVIRT_URI is not allowed"):
        Settings(libvirt_uri="test:///etc/passwd")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--no-migrate"],
        env={
            **clean,
            "VMBACKUP_DATA_DIR": str(tmp_path),
            "VMBACKUP_LIBVIRT_URI": "qemu+ssh://h/system?command=/bin/sh",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "VMBACKUP_LIBVIRT_URI is not allowed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+tls://hypervisor1.example.net/system?pkipath=/etc/vmbackup/pki",
        "qemu+ssh://backup@kvm2.example.net/system?keyfile=/keys/id_ed25519&known_hosts=/keys/kh",
    ],
)
def test_the_operator_may_name_mounted_files_in_the_local_uri(uri: str) -> None:
    assert Settings(libvirt_uri=uri).libvirt_uri == uri


@pytest.mark.parametrize(
    "uri",
    [
        "qemu+ssh://h/system?command=/bin/sh",
        "qemu+ssh://h/system?netcat=/tmp/nc",
        "qemu+tls://h/system?no_verify=1",
        "qemu+tls://h/system?pkipath=relative",
        "qemu+tls://h/system?pkipath=/etc/pki&socket=/run/x",
        "qemu:///embed?root=/srv",
        "test:///default",
    ],
)
def test_the_local_uri_still_names_no_program_socket_or_lax_check(uri: str) -> None:
    with pytest.raises(ValueError, match="VMBACKUP_LIBVIRT_URI is not allowed"):
        Settings(libvirt_uri=uri)


def test_a_client_uri_takes_no_parameter_even_an_operator_one() -> None:
    with pytest.raises(UriRefused, match="no query parameters"):
        check_host_uri("qemu+tls://h/system?pkipath=/etc/vmbackup/pki", allow_tcp=False)
