"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, for the
status page tests. Playwright never downloads a browser here: it is handed
Debian's, with the flags that keep Chromium off the network, and a new empty
profile directory per use.

    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.goto(service.url)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import BrowserContext, sync_playwright

CHROMIUM = "/usr/bin/chromium"  # deploy/dev/setup-host.sh installs it for the tests
FLAGS = [
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium(profile: Path) -> Iterator[BrowserContext]:
    profile.mkdir(parents=True)  # new and empty: nothing from another run
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            yield context
        finally:
            context.close()
