"""`vmbackup` the client, as a subprocess, against a real `vmbackup serve` and a real
throw-away domain: exit codes, `--json` output compared with the API, data compared
with the disk. The service runs on SQLite here: what is under test is the client."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import libvirt
import pytest

from app.settings import Settings
from tests.support.service import ServiceProcess, free_port, served, service_env
from tests.support.vms import (
    MiB,
    TestVM,
    domain,
    pause,
    qemu_img_compare,
    read_image,
    resume,
    wait_released,
    write_pattern,
)

pytestmark = pytest.mark.libvirt
CANCELLED_EXIT = 3
PROBLEM_EXIT = 4
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # One database is enough here (the client never sees it); `vmbackup serve` migrates it.
    return f"sqlite:///{tmp_path / 'vmbackup.db'}"


@pytest.fixture
def service(settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    with served(settings, tmp_path / "service.log") as running:
        yield running


@pytest.fixture
def api(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as client:
        yield client


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    return {**env, "VMBACKUP_URL": url, **extra}


def cli(service: ServiceProcess | str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    url = service if isinstance(service, str) else service.url
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=_env(url, **env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def cli_json(service: ServiceProcess, *args: str) -> Any:
    result = cli(service, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def popen(service: ServiceProcess, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        env=_env(service.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_status(api: httpx.Client, backup_id: str, statuses: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        backup: dict[str, Any] = api.get(f"/v1/backups/{backup_id}").json()
        if backup["status"] in statuses:
            return backup
        assert backup["status"] not in TERMINAL, backup
        assert time.monotonic() < deadline, f"still {backup['status']}"
        time.sleep(0.1)


def only_backup_of(api: httpx.Client, vm: TestVM, starter: subprocess.Popen[str]) -> dict[str, Any]:
    """The one backup of `vm`, once the service has it (the `starter` CLI started it)."""
    deadline = time.monotonic() + 60
    while True:
        if starter.poll() is not None:  # it could not start one: say why
            pytest.fail(f"the CLI exited {starter.returncode}: {starter.communicate()[1]}")
        items = api.get("/v1/backups", params={"domain": vm.name}).json()["items"]
        if items:
            assert len(items) == 1, items
            backup: dict[str, Any] = items[0]
            return backup
        assert time.monotonic() < deadline, "no backup was started"
        time.sleep(0.1)


def test_backup_start_wait_exits_0_and_prints_the_apis_json(
    service: ServiceProcess, api: httpx.Client, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    write_pattern(libvirt_conn, vm, "vda", 0, 2 * MiB, 0x5C)
    pause(libvirt_conn, vm)  # the backup's point in time is exactly what was written
    result = cli(service, "backup", "start", vm.name, "--wait", "--json")
    resume(libvirt_conn, vm)
    assert result.returncode == 0, result.stderr
    backup = json.loads(result.stdout)
    assert backup == api.get(f"/v1/backups/{backup['id']}").json()
    assert (backup["status"], backup["mode"], backup["kind"]) == ("succeeded", "push", "full")
    # The live view followed the event stream through every status.
    assert "starting -> running" in result.stderr
    assert "running -> succeeded" in result.stderr
    target = Path(backup["disks"][0]["target"])
    wait_released(target)
    assert qemu_img_compare(target, vm.disks["vda"])
    assert read_image(target)[: 2 * MiB] == b"\x5c" * (2 * MiB)


def test_an_incremental_backup_and_its_chain(
    service: ServiceProcess, api: httpx.Client, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    full = cli_json(service, "backup", "start", vm.name, "--kind", "full", "--wait")
    write_pattern(libvirt_conn, vm, "vda", 8 * MiB, 1 * MiB, 0x21)
    incremental = cli_json(service, "backup", "start", vm.name, "--kind", "incremental", "--wait")
    assert incremental["kind"] == "incremental"
    assert incremental["incremental"] == full["checkpoint"]

    chain = cli_json(service, "backup", "chain", incremental["id"])
    assert chain == api.get(f"/v1/backups/{incremental['id']}/chain").json()
    links = chain["disks"]["vda"]
    assert [(link["backup_id"], link["kind"]) for link in links] == [
        (full["id"], "full"),
        (incremental["id"], "incremental"),
    ]
    table = cli(service, "backup", "chain", incremental["id"])
    assert table.returncode == 0, table.stderr
    assert full["id"] in table.stdout
    assert incremental["id"] in table.stdout

    listed = cli_json(service, "backup", "list", "--domain", vm.name)
    assert [b["id"] for b in listed["items"]] == [incremental["id"], full["id"]]


def test_a_pull_backup_cancelled_while_waiting_exits_3(
    service: ServiceProcess, api: httpx.Client, vm: TestVM
) -> None:
    waiting = popen(service, "backup", "start", vm.name, "--mode", "pull", "--wait")
    try:
        backup = wait_status(api, only_backup_of(api, vm, waiting)["id"], {"ready"})
        assert api.post(f"/v1/backups/{backup['id']}/cancel").status_code == 202
        _, stderr = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == CANCELLED_EXIT, stderr
    assert "-> cancelled" in stderr
    assert api.get(f"/v1/backups/{backup['id']}").json()["status"] == "cancelled"


def test_a_backup_whose_domain_is_destroyed_exits_1(
    service: ServiceProcess, api: httpx.Client, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    waiting = popen(service, "backup", "start", vm.name, "--mode", "pull", "--wait")
    try:
        backup = wait_status(api, only_backup_of(api, vm, waiting)["id"], {"ready"})
        domain(libvirt_conn, vm).destroy()
        _, stderr = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, stderr
    final = api.get(f"/v1/backups/{backup['id']}").json()
    assert final["status"] == "failed"
    assert final["error"]["code"] in stderr  # the reason is printed, not only the code


def test_a_pull_backup_read_with_nbdcopy_then_finished(
    service: ServiceProcess,
    api: httpx.Client,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
    tmp_path: Path,
) -> None:
    write_pattern(libvirt_conn, vm, "vda", 4 * MiB, 1 * MiB, 0x7E)
    started = cli_json(service, "backup", "start", vm.name, "--mode", "pull")
    assert started["status"] in {"queued", "starting"}
    ready = cli(service, "backup", "wait", started["id"], "--ready", "--json")
    assert ready.returncode == 0, ready.stderr
    uri = json.loads(ready.stdout)["disks"][0]["nbd_uri"]
    copy = tmp_path / "vda.raw"
    subprocess.run(["nbdcopy", uri, str(copy)], check=True, timeout=120)
    assert copy.read_bytes()[4 * MiB : 5 * MiB] == b"\x7e" * MiB

    finished = cli(service, "backup", "finish", started["id"], "--wait", "--json")
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["status"] == "succeeded"


def test_restore_wait_writes_the_disk_as_it_was(
    service: ServiceProcess,
    api: httpx.Client,
    libvirt_conn: libvirt.virConnect,
    vm: TestVM,
) -> None:
    write_pattern(libvirt_conn, vm, "vda", 0, 1 * MiB, 0x33)
    pause(libvirt_conn, vm)
    backup = cli_json(service, "backup", "start", vm.name, "--wait")
    expected = read_image(vm.disks["vda"])
    resume(libvirt_conn, vm)
    write_pattern(libvirt_conn, vm, "vda", 0, 1 * MiB, 0x44)  # after the backup: not in it

    restored = cli(service, "restore", backup["id"], "--format", "raw", "--wait", "--json")
    assert restored.returncode == 0, restored.stderr
    restore = json.loads(restored.stdout)
    assert restore["status"] == "succeeded"
    assert restore == cli_json(service, "restore", "show", restore["id"])
    assert restore == api.get(f"/v1/restores/{restore['id']}").json()
    image = Path(restore["disks"][0]["file"])
    assert image.read_bytes() == expected


def test_checkpoints_list_create_delete_and_reconcile(
    service: ServiceProcess, api: httpx.Client, vm: TestVM
) -> None:
    backup = cli_json(service, "backup", "start", vm.name, "--wait")
    made = cli_json(service, "checkpoints", "create", vm.name, "--name", "by-hand")
    assert (made["name"], made["parent"]) == ("by-hand", backup["checkpoint"])

    listed = cli_json(service, "checkpoints", "list", vm.name)
    assert listed == api.get(f"/v1/hosts/local/domains/{vm.name}/checkpoints").json()
    assert [c["name"] for c in listed["items"]] == [backup["checkpoint"], "by-hand"]

    reconciled = cli_json(service, "checkpoints", "reconcile", vm.name, "--dry-run")
    assert (reconciled["broken"], reconciled["unchanged"]) == ([], 2)

    deleted = cli(service, "checkpoints", "delete", vm.name, "by-hand")
    assert deleted.returncode == 0, deleted.stderr
    names = [c["name"] for c in cli_json(service, "checkpoints", "list", vm.name)["items"]]
    assert names == [backup["checkpoint"]]


class Lines:
    """A process's stdout lines, read by a thread so that waiting for one can time out."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(process.stdout,), daemon=True).start()

    def _pump(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._lines.put(line)

    def next_json(self, timeout: float = 120) -> dict[str, Any]:
        line: dict[str, Any] = json.loads(self._lines.get(timeout=timeout))
        return line


def statuses_until_terminal(lines: Lines, backup_id: str) -> list[str]:
    """The status changes of one backup the follower prints, through its terminal one."""
    seen: list[str] = []
    while not seen or seen[-1] not in TERMINAL:
        event = lines.next_json()
        if event["backup_id"] == backup_id and event["progress"] is None:
            seen.append(event["status"])
    return seen


def test_events_replay_then_follow_a_domains_backups(
    service: ServiceProcess, api: httpx.Client, vm: TestVM
) -> None:
    first = cli_json(service, "backup", "start", vm.name, "--wait")
    follower = popen(service, "events", "--json", "--domain", vm.name, "--after", "0")
    try:
        lines = Lines(follower)
        expected = ["queued", "starting", "running", "succeeded"]
        assert statuses_until_terminal(lines, first["id"]) == expected
        # Connected now: a backup started after this is followed live.
        response = api.post(f"/v1/hosts/local/domains/{vm.name}/backups", json={})
        assert response.status_code == 202, response.text
        assert statuses_until_terminal(lines, response.json()["id"]) == expected
    finally:
        follower.kill()
        follower.communicate()


def test_an_unknown_domain_is_one_line_naming_the_problem(service: ServiceProcess) -> None:
    result = cli(service, "backup", "start", "no-such-domain", "--wait")
    assert result.returncode == PROBLEM_EXIT
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vmbackup: domain-not-found (404):")
    assert "no-such-domain" in lines[0]


def test_the_token_is_sent_and_a_refusal_is_one_line(
    settings: Settings, tmp_path: Path, vm: TestVM
) -> None:
    token = "cli-test-token"
    digest = hashlib.sha256(token.encode()).hexdigest()
    tokens = json.dumps([{"name": "ops", "sha256": digest, "scopes": ["read"]}])
    env = service_env(settings, VMBACKUP_TOKENS=tokens)
    with ServiceProcess(env, log=tmp_path / "tokens.log") as service:
        service.start()
        service.wait_ready()
        refused = cli(service, "hosts")
        assert refused.returncode == PROBLEM_EXIT
        assert refused.stderr.startswith("vmbackup: unauthorized (401):")
        assert len(refused.stderr.strip().splitlines()) == 1
        allowed = cli(service, "--json", "domains", VMBACKUP_TOKEN=token)
        assert allowed.returncode == 0, allowed.stderr
        assert vm.name in [d["name"] for d in json.loads(allowed.stdout)["items"]]
        flag = cli(service, "--token", token, "backup", "start", vm.name)
        assert flag.returncode == PROBLEM_EXIT  # read scope only
        assert flag.stderr.startswith("vmbackup: forbidden (403):")


def test_a_service_that_cannot_be_reached_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there now
    result = cli(url, "hosts")
    assert result.returncode == PROBLEM_EXIT
    assert result.stderr.strip() == f"vmbackup: cannot reach {url}: [Errno 111] Connection refused"


def test_ctrl_c_stops_the_watching_not_the_backup(
    service: ServiceProcess, api: httpx.Client, vm: TestVM
) -> None:
    waiting = popen(service, "backup", "start", vm.name, "--mode", "pull", "--wait")
    try:
        backup = wait_status(api, only_backup_of(api, vm, waiting)["id"], {"ready"})
        waiting.send_signal(signal.SIGINT)
        _, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 130, stderr
    assert f"stopped following {backup['id']}; it goes on" in stderr
    assert "Traceback" not in stderr
    assert api.get(f"/v1/backups/{backup['id']}").json()["status"] == "ready"
    assert api.post(f"/v1/backups/{backup['id']}/cancel").status_code == 202


def test_waiting_resumes_the_event_stream_across_a_restart_of_the_service(
    service: ServiceProcess, api: httpx.Client, vm: TestVM
) -> None:
    waiting = popen(service, "backup", "start", vm.name, "--mode", "pull", "--wait")
    try:
        backup = wait_status(api, only_backup_of(api, vm, waiting)["id"], {"ready"})
        service.kill()  # the stream drops; the CLI keeps trying with Last-Event-ID
        service.start()
        service.wait_ready()
        assert waiting.poll() is None
        assert api.post(f"/v1/backups/{backup['id']}/finish").status_code == 202
        _, stderr = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, stderr
    # Resumed after the last event it had, so no change is shown twice.
    assert stderr.count("starting -> ready") == 1
    assert stderr.count("finishing -> succeeded") == 1


def test_policies_and_verify_from_the_command_line(
    service: ServiceProcess, api: httpx.Client, vm: TestVM, tmp_path: Path
) -> None:
    spec = tmp_path / "policy.json"
    spec.write_text(
        json.dumps(
            {
                "name": "nightly",
                "selector": {"domains": [vm.name]},
                "schedule": {"cron": "0 2 * * *"},
                "verify": True,
            }
        )
    )
    created = cli(service, "--json", "policies", "create", str(spec))
    assert created.returncode == 0, created.stderr
    policy = json.loads(created.stdout)
    assert api.get(f"/v1/policies/{policy['id']}").json() == policy

    ran = cli(service, "--json", "policies", "run", policy["id"])
    assert ran.returncode == 0, ran.stderr
    backup_id = json.loads(ran.stdout)["items"][0]["backup_id"]
    waited = cli(service, "backup", "wait", backup_id)
    assert waited.returncode == 0, waited.stderr
    listed = cli(service, "policies", "runs", policy["id"])
    assert backup_id in listed.stdout

    verified = cli(service, "--json", "backup", "verify", backup_id, "--wait")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["verification"]["status"] == "ok"
    paused = cli(service, "--json", "policies", "pause", policy["id"])
    assert json.loads(paused.stdout)["enabled"] is False
    assert json.loads(paused.stdout)["next_run_at"] is None
