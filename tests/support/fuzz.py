"""Fuzzing the served OpenAPI with schemathesis, shared by the test suite (a few
hundred cases) and `bench/fuzz_api.py` (thousands).

The app is served for real (`vmbackup serve` on a free loopback port, SQLite, one
admin token, the real libvirtd as `local`) and every generated case, positive and
negative, goes to it over HTTP. Each answer is checked: no 5xx, status, content
type, headers and body as the OpenAPI documents them, negative input refused,
auth not ignored, and every error an `application/problem+json` document whose
`status` is the HTTP status.

The libvirtd is shared with other tests, so nothing generated may reach a live
domain but the fuzz's own throw-away one: host registration is not fuzzed (it
would also dial out), the domain list is not fuzzed (schemathesis reuses what
responses show), and a case naming another live domain is skipped before it is
sent. Half the positive cases of the domain's routes are steered to the fuzz's own
domain on `local`, so backups, checkpoints and reconciles really run; a generated
pull server on TCP is kept on loopback. `GET /v1/events` is left out too: it streams
until the client leaves, so every case would end in a client timeout.

`fuzz_stateful` then runs scenarios along the OpenAPI links: a backup or a
checkpoint made on the fuzz's domain, then read, cancelled, finished, restored or
deleted, each step checked the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import hypothesis
import hypothesis.strategies as st
import libvirt
import requests
import schemathesis
from schemathesis import Case, CheckContext, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi import checks as openapi_checks

from tests.support.vms import TestVM, create_vm, destroy_vm

T = TypeVar("T")
PROBLEM_JSON = "application/problem+json"
TOKEN = "fuzz-admin-token"
# (method, path template) never generated: see the module docstring.
EXCLUDED = {("POST", "/v1/hosts"), ("GET", "/v1/hosts/{host}/domains"), ("GET", "/v1/events")}


@schemathesis.check
def problem_json_errors(ctx: CheckContext, response: schemathesis.Response, case: Case) -> None:
    """Every error is a problem document that says its own status (but `/readyz`'s
    503, which lists each check's state as the OpenAPI says)."""
    if response.status_code < 400 or case.operation.path == "/readyz":
        return
    content_type = response.headers.get("content-type", [""])[0]
    if content_type.split(";")[0].strip() != PROBLEM_JSON:
        raise AssertionError(f"{response.status_code} answered as {content_type!r}")
    body = json.loads(response.content)
    if body.get("status") != response.status_code or not body.get("code"):
        raise AssertionError(f"problem without its status or code: {body}")


CHECKS = [
    not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.negative_data_rejection,
    openapi_checks.ignored_auth,
    openapi_checks.unsupported_method,
    problem_json_errors,
]


@dataclass
class Figures:
    cases: int = 0
    skipped_live_domain: int = 0
    batches_cut_short: int = 0
    host_unreachable: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: dict[str, Counter[int]] = field(default_factory=dict)
    problem_codes: dict[str, Counter[str]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        """5xx answers, but 503 `host-unreachable`: the documented answer while
        libvirtd is away (other tests on this machine restart it)."""
        all_5xx = sum(count for status, count in self.statuses.items() if status >= 500)
        return all_5xx - self.host_unreachable

    @property
    def failure_count(self) -> int:
        return sum(len(examples) for examples in self.failures.values())

    def fail(self, title: str, example: str) -> None:
        self.failures.setdefault(title, []).append(example)

    def report(self) -> str:
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(self.statuses.items()))
        lines = [
            f"cases sent: {self.cases} over {len(self.by_operation)} operations "
            f"(skipped, naming a live domain: {self.skipped_live_domain}; "
            f"stateful batches cut short by a moving server: {self.batches_cut_short})",
            f"statuses: {statuses}",
            f"5xx responses: {self.server_errors} (and 503 host-unreachable while libvirtd "
            f"was restarted by another test: {self.host_unreachable})",
            f"check failures: {self.failure_count}",
            "by operation:",
        ]
        for key, counts in sorted(self.by_operation.items(), key=lambda item: item[0][::-1]):
            spread = " ".join(f"{status}x{n}" for status, n in sorted(counts.items()))
            codes = " ".join(
                f"{code}x{n}" for code, n in sorted(self.problem_codes.get(key, {}).items())
            )
            lines.append(f"  {key}: {spread}" + (f" ({codes})" if codes else ""))
        for title, examples in sorted(self.failures.items()):
            lines.append(f"  {title}: {len(examples)}, e.g. {examples[0][:300]}")
        return "\n".join(lines)


@contextlib.contextmanager
def own_domain(workdir: Path) -> Iterator[TestVM]:
    """The fuzz's throw-away domain, made and removed through fresh connections,
    again until libvirtd answers (another test may restart it meanwhile)."""
    vm = _until_libvirtd_answers(
        lambda: create_vm(libvirt.open(LiveDomains.URI), workdir=workdir / "vms")
    )
    try:
        yield vm
    finally:
        _until_libvirtd_answers(lambda: destroy_vm(libvirt.open(LiveDomains.URI), vm))


def _until_libvirtd_answers(call: Callable[[], T]) -> T:
    deadline = time.monotonic() + LiveDomains.RECONNECT_SECONDS
    while True:
        try:
            return call()
        except (libvirt.libvirtError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def served_app(workdir: Path) -> Iterator[str]:
    """`vmbackup serve` on loopback with a fresh SQLite database; yields its base URL."""
    port = _free_port()
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VMBACKUP_")}
    env = {
        **clean,
        "VMBACKUP_DATA_DIR": str(workdir / "data"),
        "VMBACKUP_SOCKET_ROOT": str(workdir / "run"),
        "VMBACKUP_TOKENS": json.dumps([{"name": "fuzz", "sha256": digest, "scopes": ["admin"]}]),
        "VMBACKUP_LOG_LEVEL": "warning",
        "VMBACKUP_ALLOW_PLAIN_TCP_EXPORTS": "true",  # the cases' tcp exports, on loopback
    }
    log = (workdir / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_live(base_url, server)
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _wait_until_live(base_url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"vmbackup serve exited with {server.returncode}")
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"{base_url}/livez", timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("vmbackup serve did not answer /livez within 60 s")


class LiveDomains:
    """Names and UUIDs of the domains on the shared libvirtd but `own`, looked up
    per case (other tests make and remove theirs all the time, and may restart
    libvirtd: the connection is then opened again)."""

    URI = "qemu:///system"
    RECONNECT_SECONDS = 60

    def __init__(self, own: tuple[str, ...]) -> None:
        self._conn: libvirt.virConnect | None = libvirt.open(self.URI)
        self._own = {_normal(ref) for ref in own}

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()

    def named_by(self, case: Case) -> bool:
        values = [
            (case.path_parameters or {}).get("domain"),
            (case.query or {}).get("domain"),
        ]
        refs = {_normal(value) for value in values if value is not None}
        return bool(refs) and bool(refs & (self._live() - self._own))

    def _live(self) -> set[str]:
        deadline = time.monotonic() + self.RECONNECT_SECONDS
        while True:
            try:
                conn = self._conn or libvirt.open(self.URI)
                self._conn = conn
                domains = conn.listAllDomains()
                return {_normal(ref) for d in domains for ref in (d.name(), d.UUIDString())}
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                self.close()
                self._conn = None
                time.sleep(0.5)


def _normal(value: object) -> str:
    # libvirt trims white space around a UUID and takes one without dashes.
    text = str(value).strip()
    return text.lower().replace("-", "") if len(text.replace("-", "")) == 32 else text


def fuzz(base_url: str, *, cases_per_mode: int, seed: int, own: tuple[str, str]) -> Figures:
    """Every operation but the excluded ones, `cases_per_mode` positive and as many
    negative cases each; `own` is the fuzz's domain (name, UUID). Returns the
    figures; it never stops at a failure."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    figures = Figures()
    live = LiveDomains(own)
    steer = partial(_steer, domain=own[0])
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            if (operation.method.upper(), operation.path) in EXCLUDED:
                continue
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(generation_mode=mode)
                if mode is GenerationMode.POSITIVE:
                    strategy = st.tuples(strategy, st.booleans()).map(lambda pair: steer(*pair))
                run = _runner(strategy, cases_per_mode, seed)
                run(lambda case: _send(case, base_url, figures, live))
    finally:
        live.close()
    return figures


def _steer(case: Case, to_own: bool, *, domain: str) -> Case:
    """A valid case, sometimes aimed at the fuzz's own domain (naming its disk, with
    no base checkpoint it cannot have and no guest agent it does not run, so that
    backups and checkpoints really start); a TCP pull server kept on loopback (a
    generated one could listen on any address)."""
    params = case.path_parameters
    body = case.body if isinstance(case.body, dict) else {}
    if to_own and params and "domain" in params:
        params["host"] = "local"
        params["domain"] = domain
        body.pop("incremental", None)
        body.pop("quiesce", None)
        if body.get("kind") == "incremental":
            body["kind"] = "auto"
        disks = body.get("disks")
        if isinstance(disks, list) and disks and isinstance(disks[0], dict):
            body["disks"] = [{**disks[0], "name": "vda"}]
    server = body.get("server")
    if isinstance(server, dict) and server.get("transport") == "tcp":
        server["name"] = "127.0.0.1"
    return case


def _runner(
    strategy: st.SearchStrategy[Case], max_examples: int, seed: int
) -> Callable[[Callable[[Case], None]], None]:
    def run(send: Callable[[Case], None]) -> None:
        @hypothesis.seed(seed)
        @hypothesis.settings(
            max_examples=max_examples,
            database=None,
            deadline=None,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=strategy)
        def each(case: Case) -> None:
            send(case)

        with contextlib.suppress(hypothesis.errors.Unsatisfiable):
            each()  # unsatisfiable: an operation without input has no negative case

    return run


def _send(case: Case, base_url: str, figures: Figures, live: LiveDomains) -> None:
    if live.named_by(case):
        figures.skipped_live_domain += 1
        return
    _authorize(case)
    try:
        response = case.call(base_url=base_url, timeout=30)
    except requests.Timeout:
        figures.fail("timeout", f"{case.method.upper()} {case.operation.path}")
        return
    _validate(case, response, figures)


def _authorize(case: Case) -> None:
    # The admin token on every case (a generated Authorization header would only
    # measure 401s); `ignored_auth` sends its own requests without it.
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}


def _validate(case: Case, response: schemathesis.Response, figures: Figures) -> None:
    key = f"{case.method.upper()} {case.operation.path}"
    figures.cases += 1
    figures.by_operation.setdefault(key, Counter())[response.status_code] += 1
    figures.statuses[response.status_code] += 1
    if response.status_code >= 400:
        figures.problem_codes.setdefault(key, Counter())[_problem_code(response)] += 1
    checks = CHECKS
    if _libvirtd_away(response):
        figures.host_unreachable += 1
        checks = [check for check in CHECKS if check is not not_a_server_error]
    try:
        case.validate_response(response, checks=checks, headers=case.headers)
    except (AssertionError, FailureGroup) as failure:
        for single in getattr(failure, "exceptions", None) or [failure]:
            title = getattr(single, "title", type(single).__name__)
            figures.fail(str(title), f"{key} -> {response.status_code}: {single}")


def _problem_code(response: schemathesis.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(response.content).get("code"))
    return "not-a-problem"


def _libvirtd_away(response: schemathesis.Response) -> bool:
    return response.status_code == 503 and _problem_code(response) == "host-unreachable"


SCENARIOS_PER_BATCH = 5
# Never in a stateful scenario either: a backup's event stream lasts as long as the
# backup, and a pull backup waits for its client (the ttl is hours).
STATEFUL_EXCLUDED = {("GET", "/v1/backups/{backup_id}/events")}


def fuzz_stateful(base_url: str, *, scenarios: int, own: tuple[str, str], figures: Figures) -> None:
    """Scenarios along the OpenAPI links (start a backup on the fuzz's own domain,
    then read, cancel, finish, restore or delete it; make a checkpoint, then read
    or delete it), every step checked as in `fuzz`; adds to `figures`. Not seeded:
    a scenario's later steps depend on what the server answered."""
    names = [f"{method} {path}" for method, path in EXCLUDED | STATEFUL_EXCLUDED]
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json").exclude(name=names)
    live = LiveDomains(own)

    class Scenario(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Case) -> None:
            _steer(case, True, domain=own[0])
            hypothesis.assume(not live.named_by(case))
            _authorize(case)

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": base_url, "timeout": 30}

        def validate_response(
            self, response: schemathesis.Response, case: Case, *_: Any, **__: Any
        ) -> None:
            _validate(case, response, figures)

    settings = hypothesis.settings(
        max_examples=SCENARIOS_PER_BATCH,
        stateful_step_count=8,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    try:
        for _ in range(-(-scenarios // SCENARIOS_PER_BATCH)):
            try:
                Scenario.run(settings=settings)
            except hypothesis.errors.FlakyStrategyDefinition:
                # Hypothesis saw the same choices lead elsewhere: the server's state
                # moved on (backups finish, lists grow). The batch ends; not a failure.
                figures.batches_cut_short += 1
    finally:
        live.close()
