"""A real Prometheus (Debian's /usr/bin/prometheus) for the alerting tests: its
own free loopback port, its own storage under the test's directory, scraping
and evaluating rules every second.

    with PrometheusProcess(tmp_path / "prometheus", target=service.url,
                           rules=[RULES]) as prometheus:
        prometheus.wait_until(lambda: prometheus.query('up') ...)
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import yaml

from tests.support.service import free_port

PROMETHEUS = "/usr/bin/prometheus"  # deploy/dev/setup-host.sh installs it for the tests
PROMTOOL = "/usr/bin/promtool"
T = TypeVar("T")


class PrometheusProcess:
    def __init__(self, workdir: Path, *, target: str, rules: list[Path]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "prometheus.log"
        workdir.mkdir(parents=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path.resolve()) for path in rules],
            "scrape_configs": [
                {
                    "job_name": "vmbackup",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": [urlsplit(target).netloc]}],
                }
            ],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_until(self._ready, "Prometheus is ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return found

    def wait_until(self, found: Callable[[], T], what: str, timeout: float = 60) -> T:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.output()}")
            value = found()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {timeout} s: {what}\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def __enter__(self) -> PrometheusProcess:
        self.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
