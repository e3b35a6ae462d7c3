"""The container image, built and started for real: no Docker engine is needed.

deploy/dev/build-image.sh builds the Dockerfile with buildah (`--isolation chroot`) on a
local debootstrap base (cached by its recipe, so only the first run pays for it). Then
each compose service built from the Dockerfile runs its own command in the image, the way
compose would: the image's ENTRYPOINT, the service's `command`, its environment and user,
the libvirt socket folder it mounts. `vmbackup migrate` migrates a fresh PostgreSQL
database, `vmbackup serve --no-migrate` answers /readyz with 200, reaches the host's
libvirtd through the socket, and the image's own HEALTHCHECK passes against it.

Only the database URL, the listening address (loopback, a free port) and the roots (a
temporary folder, mounted at the same path inside and out as compose mounts them) are
changed from the compose file's values.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import _pg_admin, _pg_url
from tests.support.service import free_port
from tests.support.tls import self_signed, trusting
from tests.unit.test_deploy_files import (
    bind_mounts,
    compose_environment,
    load_compose,
)

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "deploy" / "dev" / "build-image.sh"
# A tag per checkout, so that tests of two work trees never start each other's image.
IMAGE = f"localhost/vmbackup:test-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]}"
# A first run makes the debootstrap base and compiles libvirt-python: minutes, not seconds.
BUILD_TIMEOUT_SECONDS = 900
READY_TIMEOUT_SECONDS = 60.0

pytestmark = [
    pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah's chroot isolation needs root"),
    pytest.mark.timeout(BUILD_TIMEOUT_SECONDS + 300),
]

TOKEN = secrets.token_urlsafe(16)
TOKENS = json.dumps(
    [{"name": "t", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "scopes": ["read"]}]
)


def buildah(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        ["buildah", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"buildah {shlex.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def image() -> str:
    result = subprocess.run(
        [str(BUILD_SCRIPT)],
        env={**os.environ, "VMBACKUP_IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == IMAGE
    return IMAGE


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    name = f"vmbackup-test-{secrets.token_hex(4)}"
    buildah("from", "--pull-never", "--name", name, image)
    yield name
    buildah("rm", name)


def docker_config(image: str) -> dict[str, Any]:
    """The image's configuration as built (ENTRYPOINT, HEALTHCHECK, ...)."""
    config: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", image))
    return config["Docker"]["config"]  # type: ignore[no-any-return]


def service_argv(svc: dict[str, Any]) -> list[str]:
    command = svc["command"]
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def built_services() -> dict[str, dict[str, Any]]:
    """The compose services whose image is this Dockerfile."""
    services = load_compose()["services"]
    built = {name: svc for name, svc in services.items() if "build" in svc}
    assert built, "no compose service is built from the Dockerfile"
    return built


def run_argv(
    container: str,
    argv: list[str],
    *,
    env: dict[str, str],
    user: str,
    mounts: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """`buildah run` as compose would run a service: its user, environment, mounts."""
    options = ["--isolation", "chroot", "--user", user]
    for key, value in env.items():
        options += ["--env", f"{key}={value}"]
    for source, target in mounts:
        options += ["--volume", f"{source}:{target}"]
    return ["buildah", "run", *options, container, "--", *argv]


def test_each_compose_command_exists_in_the_image(container: str) -> None:
    entrypoint = docker_config(IMAGE).get("Entrypoint") or []
    for name, svc in built_services().items():
        argv = service_argv(svc)
        for program in [*entrypoint[:1], argv[0]]:
            found = buildah("run", "--isolation", "chroot", container, "--", "which", program)
            assert found.strip(), f"{name}: {program} is not in the image"
        # The subcommand itself (serve, migrate) exists: its --help succeeds.
        buildah("run", "--isolation", "chroot", container, "--", *argv[:2], "--help")


@pytest.fixture
def database() -> Iterator[str]:
    """An empty PostgreSQL database: the image's `vmbackup migrate` builds it."""
    name = f"vmbt_image_{secrets.token_hex(6)}"
    _pg_admin(f"CREATE DATABASE {name}")
    yield _pg_url(name)
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def session_processes(session: int) -> dict[int, str]:
    """pid -> executable of every process in this session."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            exe = os.readlink(stat.parent / "exe")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone meanwhile, or a kernel thread
        if int(fields[3]) == session:
            found[int(stat.parent.name)] = exe
    return found


def signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop(process: subprocess.Popen[str]) -> str:
    """Stop the service under `buildah run` (started in a session of its own) and all
    that buildah started for it.

    Not by signalling buildah: it answers SIGTERM with SIGKILL to its chroot helper and
    leaves the service running, re-parented to init (tini runs it in a process group of
    its own). So the processes of the session that are not buildah get SIGTERM first,
    the service shuts down as it would under a container engine, and buildah follows.
    """
    buildah_exe = os.path.realpath(shutil.which("buildah") or "buildah")
    members = session_processes(process.pid)
    signal_all([pid for pid, exe in members.items() if exe != buildah_exe], signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    signal_all(list(session_processes(process.pid)), signal.SIGKILL)
    output, _ = process.communicate(timeout=10)
    time.sleep(0.5)  # SIGKILL is not instant: let the caller see them gone
    return output


def wait_for_host(base: str, verify: ssl.SSLContext) -> dict[str, Any]:
    """The one host (the settings' libvirt URI) once connected, or as it is at the end."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        hosts = httpx.get(f"{base}/v1/hosts", headers=auth, verify=verify)
        assert hosts.status_code == 200, hosts.text
        (host,) = hosts.json()["items"]
        if host["state"] == "connected" or time.monotonic() > deadline:
            return host  # type: ignore[no-any-return]
        time.sleep(0.5)


def test_the_image_migrates_serves_and_is_ready(
    container: str, database: str, tmp_path: Path
) -> None:
    services = built_services()
    port = free_port()
    roots = {var: tmp_path / var.lower() for var in ("BACKUP", "SCRATCH", "RESTORE")}
    for path in roots.values():
        path.mkdir()
    cert, key = self_signed(tmp_path)  # compose serves HTTPS; the test folder has the pair
    tls = {"VMBACKUP_TLS_CERT": str(cert), "VMBACKUP_TLS_KEY": str(key)}
    overrides = {
        **tls,
        "VMBACKUP_DATABASE_URL": database,
        "VMBACKUP_HOST": "127.0.0.1",  # keep the test on loopback
        "VMBACKUP_PORT": str(port),
        "VMBACKUP_DATA_DIR": str(tmp_path),
        "VMBACKUP_SOCKET_ROOT": str(tmp_path),
        # tini is not PID 1 under `buildah run`: as a subreaper it still reaps (and
        # does not warn that it cannot).
        "TINI_SUBREAPER": "1",
        **{f"VMBACKUP_{var}_ROOT": str(path) for var, path in roots.items()},
    }
    entrypoint = docker_config(IMAGE).get("Entrypoint") or []

    def compose_run(name: str) -> list[str]:
        """The service's command as compose would run it, with the overrides above.
        Of its mounts, the libvirt daemon's folder is kept (read-only, as compose has
        it); the roots it mounts at the same path inside and out are the temporary
        folder instead, likewise mounted at its own path."""
        svc = services[name]
        env = compose_environment(svc, {"VMBACKUP_TOKENS": TOKENS}) | overrides
        mounts = [(src, f"{dst}:ro") for src, dst in bind_mounts(svc) if "libvirt" in dst]
        mounts.append((str(tmp_path), str(tmp_path)))
        argv = [*entrypoint, *service_argv(svc)]
        return run_argv(container, argv, env=env, user=str(svc.get("user", "0:0")), mounts=mounts)

    migrate = subprocess.run(
        compose_run("migrate"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    serve = subprocess.Popen(
        compose_run("vmbackup"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so stop() reaches the service under buildah
    )
    base = f"https://127.0.0.1:{port}"
    verify = trusting(cert)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        ready: httpx.Response | None = None
        while time.monotonic() < deadline and serve.poll() is None:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=5, verify=verify)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert serve.poll() is None, "vmbackup serve exited"
        assert ready is not None, "the service never answered"
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"

        # The host's libvirtd, through the mounted socket folder.
        host = wait_for_host(base, verify)
        assert host["uri"] == "qemu:///system"
        assert host["state"] == "connected", host
        assert host["libvirt_version"], host

        # The image's own HEALTHCHECK (as built: Docker's format keeps it), run in it.
        healthcheck = docker_config(IMAGE).get("Healthcheck") or {}
        assert healthcheck.get("Test", [""])[0] == "CMD", f"no HEALTHCHECK: {healthcheck}"
        health = healthcheck["Test"][1:]
        image_user = docker_config(IMAGE).get("User") or "root"  # as the image runs it
        check = subprocess.run(
            run_argv(container, health, env={"VMBACKUP_PORT": str(port), **tls}, user=image_user),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        output = stop(serve)
        leftovers = session_processes(serve.pid)
    assert not leftovers, f"left running: {leftovers}"
    assert "Traceback" not in output, output
