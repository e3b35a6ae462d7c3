"""The status page: its routes and fragments in-process, then the page itself in
headless Chromium against a real `vmbackup serve` and a real domain."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import libvirt
import pytest
from lxml import html
from playwright.sync_api import Page, expect

from app.settings import Settings
from tests.integration.test_backups import TERMINAL, start, wait_for
from tests.support.browser import chromium
from tests.support.service import ServiceProcess, served, service_env
from tests.support.vms import MiB, TestVM, domain, write_pattern

TOKEN = "status-page-secret"
WAIT_MS = 30_000  # for the page to show what the service did (libvirt under TCG is slow)


def _tree(text: str) -> html.HtmlElement:
    return html.fromstring(text)


def _references(page: html.HtmlElement) -> list[str]:
    return [str(v) for v in page.xpath("//@src | //@href")]


async def test_the_page_is_served_by_the_service_outside_the_api(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    references = _references(_tree(response.text))
    assert "/ui/static/status.js" in references
    for reference in references:  # no CDN: a path on this service, or inline data
        assert (reference.startswith("/") and not reference.startswith("//")) or (
            reference.startswith("data:")
        ), reference
        if reference.startswith("/"):
            assert (await client.get(reference)).status_code == 200, reference

    script = await client.get("/ui/static/status.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "Authorization" in script.text
    for unknown in ("/ui/static/other.js", "/ui/static/..%2F..%2Fmain.py"):
        assert (await client.get(unknown)).status_code == 404

    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/v1/backups" in paths
    assert not [path for path in paths if path == "/" or path.startswith("/ui")]


async def test_the_overview_shows_a_disconnected_host_and_why(client: httpx.AsyncClient) -> None:
    added = await client.post(
        "/v1/hosts", json={"name": "gone", "uri": "qemu+tcp://127.0.0.1:1/system"}
    )
    assert added.status_code == 201, added.text
    reason = added.json()["error"]

    overview = _tree((await client.get("/ui/fragments/overview")).text)
    (gone,) = overview.xpath("//section[@id='hosts']//tr[@data-host='gone']")
    assert gone.xpath(".//span[@class='status status-disconnected']")
    assert reason in gone.text_content()
    (local,) = overview.xpath("//section[@id='hosts']//tr[@data-host='local']")
    assert local.xpath(".//span[@class='status status-connected']")
    unknown = overview.xpath("//section[@id='domains']//td[@class='error-text']")
    assert [cell for cell in unknown if cell.text_content().startswith("gone: domains unknown")]


@pytest.mark.libvirt
async def test_the_domain_page_shows_checkpoints_and_the_chain(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    full = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
    write_pattern(libvirt_conn, vm, "vda", 0, MiB, 0x42)
    incremental = await wait_for(client, (await start(client, vm))["id"], TERMINAL)
    assert (full["status"], incremental["status"]) == ("succeeded", "succeeded")
    assert incremental["kind"] == "incremental"

    response = await client.get(f"/ui/fragments/hosts/local/domains/{vm.name}")
    assert response.status_code == 200, response.text
    page = _tree(response.text)
    checkpoints = page.xpath("//tr[@data-checkpoint]")
    assert [(c.get("data-checkpoint"), c.get("data-parent")) for c in checkpoints] == [
        (full["checkpoint"], ""),
        (incremental["checkpoint"], full["checkpoint"]),
    ]
    assert "depth-1" in checkpoints[1].get("class")
    links = page.xpath("//ol[@data-disk='vda']/li")
    assert [link.get("data-backup-id") for link in links] == [full["id"], incremental["id"]]
    assert incremental["disks"][0]["target"] in links[1].text_content()
    history = page.xpath("//tr[contains(@class, 'history')]/@data-backup-id")
    assert history == [incremental["id"], full["id"]]

    overview = _tree((await client.get("/ui/fragments/overview")).text)
    (row,) = overview.xpath(f"//tr[@data-domain='{vm.name}']")
    assert row.get("data-last-backup-id") == incremental["id"]
    assert row.xpath(".//td[@class='last-status']")[0].text_content().strip() == "succeeded"
    assert row.xpath(".//td[contains(@class, 'rpo')]/time/@datetime")[0].startswith(
        incremental["finished_at"][:19]
    )


@pytest.mark.libvirt
async def test_the_overview_lists_a_failed_backup_with_its_reason(
    client: httpx.AsyncClient, libvirt_conn: libvirt.virConnect, vm: TestVM
) -> None:
    backup = await wait_for(client, (await start(client, vm, mode="pull"))["id"], {"ready"})
    domain(libvirt_conn, vm).destroy()  # the export goes with its domain
    failed = await wait_for(client, backup["id"], TERMINAL)
    assert failed["status"] == "failed", failed

    overview = _tree((await client.get("/ui/fragments/overview")).text)
    (row,) = overview.xpath(f"//tr[@class='failure'][@data-backup-id='{backup['id']}']")
    reason = row.xpath(".//td[@class='reason']")[0].text_content()
    assert failed["error"]["code"] in reason
    assert failed["error"]["message"] in reason
    assert not overview.xpath(f"//tr[contains(@class, 'backup')][@data-backup-id='{backup['id']}']")


# -- in the browser ---------------------------------------------------------------


@pytest.fixture
def service(settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    with served(settings, tmp_path / "service.log") as running:
        yield running


@pytest.fixture
def guarded(settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    """The service with a `read` token configured."""
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens = json.dumps([{"name": "ops", "sha256": digest, "scopes": ["read"]}])
    env = service_env(settings, VMBACKUP_TOKENS=tokens)
    with ServiceProcess(env, log=tmp_path / "guarded.log") as process:
        process.start()
        process.wait_ready()
        yield process


_UNITS = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}


def _scratch_used(text: str) -> float:
    found = re.search(r"scratch used ([\d.]+) (\w+)", text)
    assert found is not None, text
    return float(found[1]) * _UNITS[found[2]]


def _progress_text(page: Page, backup_id: str) -> str:
    return page.locator(f'tr.backup[data-backup-id="{backup_id}"] .progress-text').inner_text()


def _local(url: str, service: ServiceProcess) -> bool:
    return urlsplit(url).netloc == urlsplit(service.url).netloc or url.startswith("data:")


@pytest.mark.libvirt
def test_the_page_follows_a_backup_live_with_nothing_from_outside(
    service: ServiceProcess, libvirt_conn: libvirt.virConnect, vm: TestVM, tmp_path: Path
) -> None:
    requested: list[str] = []
    with chromium(tmp_path / "profile") as browser, service.client() as api:
        browser.on("request", lambda request: requested.append(request.url))
        page = browser.new_page()
        page.goto(service.url + "/")
        domain_row = page.locator(f'tr.domain[data-domain="{vm.name}"]')
        expect(domain_row).to_be_visible(timeout=WAIT_MS)

        response = api.post(f"/v1/hosts/local/domains/{vm.name}/backups", json={"mode": "pull"})
        assert response.status_code == 202, response.text
        backup_id = response.json()["id"]
        row = page.locator(f'tr.backup[data-backup-id="{backup_id}"]')
        expect(row.locator(".backup-status")).to_have_text("ready", timeout=WAIT_MS)
        expect(row.locator(".progress-text")).to_contain_text("scratch used", timeout=WAIT_MS)

        # A ready pull export's scratch fills as the guest writes: each write must
        # show on the page, pushed by the event stream (nothing else reloads it).
        seen = [_progress_text(page, backup_id)]
        for step in range(3):
            write_pattern(libvirt_conn, vm, "vda", step * 4 * MiB, MiB, 0x60 + step)
            expect(row.locator(".progress-text")).not_to_have_text(seen[-1], timeout=WAIT_MS)
            seen.append(_progress_text(page, backup_id))
        used = [_scratch_used(text) for text in seen]
        assert used == sorted(used), seen

        assert api.post(f"/v1/backups/{backup_id}/finish").status_code == 202
        expect(domain_row.locator(".last-status")).to_have_text("succeeded", timeout=WAIT_MS)
        expect(domain_row).to_have_attribute("data-last-backup-id", backup_id)
        expect(row).to_have_count(0)  # no longer running
        page.goto(f"{service.url}/ui/hosts/local/domains/{vm.name}")
        expect(page.locator(f'tr.history[data-backup-id="{backup_id}"]')).to_contain_text(
            "succeeded", timeout=WAIT_MS
        )

    assert f"{service.url}/v1/events" in requested
    outside = [url for url in requested if not _local(url, service)]
    assert not outside, outside


def test_the_page_asks_for_a_token_once_and_sends_it(
    guarded: ServiceProcess, tmp_path: Path
) -> None:
    with chromium(tmp_path / "profile") as browser:
        sent: dict[str, str | None] = {}
        browser.on(
            "request",
            lambda request: sent.__setitem__(
                urlsplit(request.url).path, request.headers.get("authorization")
            ),
        )
        page = browser.new_page()
        page.goto(guarded.url + "/")
        expect(page.locator("#token-form")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator('#hosts tr[data-host="local"]')).to_have_count(0)

        page.fill("#token", "wrong")
        page.click("#token-form button[type=submit]")
        expect(page.locator("#token-reason")).to_contain_text("not valid", timeout=WAIT_MS)

        page.fill("#token", TOKEN)
        page.click("#token-form button[type=submit]")
        expect(page.locator('#hosts tr[data-host="local"]')).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
        assert sent["/ui/fragments/overview"] == f"Bearer {TOKEN}"
        assert sent["/v1/events"] == f"Bearer {TOKEN}"

        page.reload()  # the same tab keeps the token: no second prompt
        expect(page.locator('#hosts tr[data-host="local"]')).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#token-form")).to_be_hidden()
