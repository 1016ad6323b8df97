"""Chromium for the browser tests: Debian's build driven by Playwright against pytest-django's live server.

The browser may fetch nothing from outside the live server (the UI must work with no internet), and
screenshots land in ``test-results/`` (gitignored) to be looked at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-results"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Playwright's sync API runs an event loop; the tests still read and write the database while it
    # runs. Allowed for the browser modules only, and undone after them.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as p:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, live_server) -> Iterator[Page]:
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1360, "height": 900})
    outside: list[str] = []

    def local_only(route: Route) -> None:
        if route.request.url.startswith(live_server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", local_only)
    page = context.new_page()
    yield page
    context.close()
    assert not outside, f"the page fetched from outside the server: {outside}"


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def docs_image(locator, name: str) -> None:
    """The README's pictures: written to docs/images/ only when MODELGATE_DOCS_SCREENSHOTS=1
    (`make docs-screenshots`), so that a test run never changes a tracked file."""
    import os

    target = DOCS_IMAGES if os.environ.get("MODELGATE_DOCS_SCREENSHOTS") == "1" else SCREENSHOTS
    target.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(target / f"{name}.png"))
