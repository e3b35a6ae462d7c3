"""`VMBACKUP_TLS_CERT` and `VMBACKUP_TLS_KEY`: `vmbackup serve` speaks HTTPS with
uvicorn's own TLS, checked by a client that trusts only the certificate the test
made; plain HTTP to the same port gets no answer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from tests.support.service import ServiceProcess, service_env
from tests.support.tls import self_signed

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"

pytestmark = pytest.mark.libvirt


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_serve_speaks_https_with_the_configured_certificate(
    settings: Settings, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    env = service_env(settings, VMBACKUP_TLS_CERT=str(cert), VMBACKUP_TLS_KEY=str(key))
    with ServiceProcess(env, log=tmp_path / "serve.log") as service:
        service.start()
        service.wait_ready()
        assert service.url.startswith("https://")
        with service.client() as client:
            assert client.get("/livez").status_code == 200
            hosts = client.get("/v1/hosts")
            assert hosts.status_code == 200
            assert [host["name"] for host in hosts.json()["items"]] == ["local"]
        with pytest.raises(httpx.ConnectError):  # no certificate trusted: refused
            httpx.get(f"{service.url}/livez", timeout=10)
        plain = f"http://127.0.0.1:{service.port}/livez"
        with pytest.raises(httpx.TransportError):  # a TLS server does not answer plain HTTP
            httpx.get(plain, timeout=10)
        healthcheck = _image_healthcheck(env | {"VMBACKUP_PORT": str(service.port)})
        assert healthcheck.returncode == 0, healthcheck.stderr
        service.stop()


def _image_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's HEALTHCHECK (`python -c ...`), run here against the service."""
    found = re.search(r'CMD \["python", "-c", "(.*)"\]', DOCKERFILE.read_text())
    assert found is not None, "no python HEALTHCHECK in the Dockerfile"
    return subprocess.run(
        [sys.executable, "-c", found[1]], env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"VMBACKUP_TLS_CERT": "cert"}, "go together"),
        ({"VMBACKUP_TLS_CERT": "/nonexistent/cert.pem", "VMBACKUP_TLS_KEY": "key"}, "cannot read"),
    ],
)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_half_or_missing_tls_pair_stops_the_start_with_one_line(
    settings: Settings, tmp_path: Path, extra: dict[str, str], says: str
) -> None:
    cert, key = self_signed(tmp_path)
    paths = {"cert": str(cert), "key": str(key)}
    env = service_env(settings, **{name: paths.get(value, value) for name, value in extra.items()})
    with ServiceProcess(env, log=tmp_path / "serve.log") as service:
        service.start()
        assert service.wait_exit() == 1
        lines = service.output().strip().splitlines()
        assert len(lines) == 1
        assert "invalid settings" in lines[0]
        assert says in lines[0]
