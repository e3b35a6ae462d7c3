"""Real `vmbackup serve` processes, for the tests that kill, restart or run
several replicas of the service (an in-process app cannot be `kill -9`ed).

    env = service_env(settings)
    with ServiceProcess(env, log=tmp_path / "a.log") as service:
        service.start(crash_at="after-begin")   # VMBACKUP_CRASH_AT (tests only)
        ...
        assert service.wait_exit() == CRASH_EXIT_CODE
        service.start()
        service.wait_ready()
        backup = service.client().get(...)

Each process listens on its own free loopback port and appends its output to
`log`, which a failing test prints.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import httpx

from app.crashpoints import CRASH_ENV
from app.settings import Settings

READY_TIMEOUT_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes `vmbackup serve` use these settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("VMBACKUP_")}
    env.update(
        VMBACKUP_DATA_DIR=str(settings.data_dir),
        VMBACKUP_DATABASE_URL=settings.effective_database_url,
        VMBACKUP_LIBVIRT_URI=settings.libvirt_uri,
        VMBACKUP_SOCKET_ROOT=str(settings.socket_root),
        VMBACKUP_LEASE_SECONDS=str(settings.lease_seconds),
        VMBACKUP_POLL_SECONDS=str(settings.poll_seconds),
        VMBACKUP_HOST_OUTAGE_LIMIT_SECONDS=str(settings.host_outage_limit_seconds),
        VMBACKUP_ALLOW_TCP_HOSTS=str(settings.allow_tcp_hosts).lower(),
        VMBACKUP_HOST="127.0.0.1",
        VMBACKUP_LOG_LEVEL="info",
    )
    env.update(extra)
    return env


class ServiceProcess:
    def __init__(self, env: dict[str, str], *, log: Path) -> None:
        self.env = env
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def tls_cert(self) -> str | None:
        return self.env.get("VMBACKUP_TLS_CERT")

    def verify(self) -> ssl.SSLContext | bool:
        """What a client checks the server's certificate against: the service's own
        (self-signed in tests) when it serves HTTPS."""
        return ssl.create_default_context(cafile=self.tls_cert) if self.tls_cert else True

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, verify=self.verify())

    def start(self, *, crash_at: str | None = None) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        env = dict(self.env, VMBACKUP_PORT=str(self.port))
        if crash_at is not None:
            env[CRASH_ENV] = crash_at
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"vmbackup exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=2, verify=self.verify())
                if ready.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"vmbackup not ready within {timeout} s:\n{self.output()}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"vmbackup still running after {timeout} s:\n{self.output()}"
            ) from None

    def kill(self) -> None:
        """`kill -9`: nothing is flushed, no lease released, no job touched."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.kill()


@contextmanager
def served(settings: Settings, log: Path) -> Iterator[ServiceProcess]:
    """One ready `vmbackup serve` on these settings, stopped (its output flushed) after."""
    with ServiceProcess(service_env(settings), log=log) as running:
        running.start()
        running.wait_ready()
        yield running
        running.stop()
