"""/docs and /redoc in headless Chromium against a real `vmbackup serve`: each page
renders the API, and no request leaves the service's origin (hypervisor networks
are offline). No libvirtd is asked: the service's one host is a port nothing
listens on, so it stays `disconnected` and the pages need nothing from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Route, expect

from app.settings import Settings
from tests.support.browser import chromium
from tests.support.service import ServiceProcess, service_env

WAIT_MS = 30_000


@pytest.fixture
def service(settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    # A refused connection, at once (the settings allow qemu+tcp:// hosts).
    offline = settings.model_copy(update={"libvirt_uri": "qemu+tcp://127.0.0.1:1/system"})
    with ServiceProcess(service_env(offline), log=tmp_path / "service.log") as process:
        process.start()
        process.wait_ready()
        yield process


@pytest.mark.parametrize(
    ("path", "operation"),
    [
        # Swagger UI: one block per operation, the body example menu filled.
        ("/docs", "#operations-backups-start_backup_v1_hosts__host__domains__domain__backups_post"),
        # ReDoc: one heading per operation, by its summary.
        ("/redoc", "h2:has-text('Start a backup')"),
    ],
)
def test_the_docs_render_with_nothing_from_outside(
    service: ServiceProcess, tmp_path: Path, path: str, operation: str
) -> None:
    origin = urlsplit(service.url).netloc
    sent: list[str] = []  # what reached the network layer; the page's CSP blocks earlier

    def record(route: Route) -> None:
        sent.append(route.request.url)
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            route.abort()  # the test itself sends nothing out either

    with chromium(tmp_path / "profile") as browser:
        browser.route("**/*", record)
        page = browser.new_page()
        page.goto(service.url + path)
        expect(page.locator(operation)).to_be_visible(timeout=WAIT_MS)
        page.wait_for_load_state("networkidle")

    assert f"{service.url}/openapi.json" in sent
    outside = [url for url in sent if urlsplit(url).netloc != origin]
    assert outside == []
