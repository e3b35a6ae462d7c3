"""/docs and /redoc load every file from the service: hypervisor networks are
offline."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from lxml import html

from app.hosts.registry import HypervisorFactory, ManagedHypervisor
from tests.support.fake_hypervisor import FakeHypervisor

DOC_PAGES = ["/docs", "/redoc"]
# What each file a page loads must be served as.
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}
ABSOLUTE_URL = re.compile(r"""(?:https?:)?//[^\s"'<>]+""")


@pytest.fixture
def hypervisor_factory() -> HypervisorFactory:
    """A fake host `local` with one domain, `fake`: nothing here needs libvirtd."""

    def make(name: str, uri: str) -> ManagedHypervisor:
        return FakeHypervisor(name=name, uri=uri)

    return make


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    return dict((await client.get("/openapi.json")).json())


def _xpath(page: str, query: str) -> list[str]:
    found = html.fromstring(page).xpath(query)
    assert isinstance(found, list)
    return [str(item) for item in found]


def _loaded_by(page: str) -> list[str]:
    """Every URL the page makes the browser fetch: its elements' and the spec's."""
    urls = _xpath(page, "//@src | //@href | //redoc/@spec-url")
    urls += re.findall(r"url: '([^']*)'", page)  # Swagger UI's spec, in its inline script
    return urls


@pytest.mark.parametrize("path", DOC_PAGES)
async def test_a_docs_page_loads_every_file_from_the_service(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    page = response.text
    assert ABSOLUTE_URL.findall(page) == []
    urls = _loaded_by(page)
    assert "/openapi.json" in urls
    assert len(urls) >= 3  # the spec, the favicon, the script (and Swagger UI's style sheet)
    for url in urls:
        assert urlsplit(url).netloc == "", url  # "//cdn…" has one
        assert url.startswith("/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        suffix = url[url.rindex(".") :]
        assert asset.headers["content-type"].startswith(CONTENT_TYPES[suffix]), url
        assert len(asset.content) > 4096, url


@pytest.mark.parametrize("path", DOC_PAGES)
async def test_a_docs_page_lets_the_browser_fetch_from_the_service_only(
    client: httpx.AsyncClient, path: str
) -> None:
    # ReDoc's bundle asks cdn.redoc.ly for a logo: only the policy stops it.
    response = await client.get(path)
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    for name in ("default-src", "script-src", "img-src", "connect-src", "font-src"):
        sources = directives[name].split()
        assert sources[0] == "'self'", name
        assert all(s.startswith("'sha256-") or s == "data:" for s in sources[1:]), name
    inline_scripts = _xpath(response.text, "//script[not(@src)]")
    hashes = [s for s in directives["script-src"].split() if s.startswith("'sha256-")]
    assert len(hashes) == len(inline_scripts)


async def test_the_docs_and_their_files_are_outside_the_openapi(spec: dict[str, Any]) -> None:
    assert not [path for path in spec["paths"] if path.startswith(("/docs", "/redoc"))]
