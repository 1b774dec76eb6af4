"""A real headless browser for tests: Debian's chromium, driven by Playwright.

    from tests.browser import browser, page  # noqa: F401 - pytest fixtures

    def test_something(page, live_url):
        page.goto(live_url + "/ui")

Playwright cannot download its own browsers here (no internet), so it drives
the system's chromium (`CHROMIUM`, default /usr/bin/chromium). Without it a test
is skipped locally, with the reason, and fails under CI (CI=true), where
`.ci/run` installs it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    configured = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
    if Path(configured).is_file():
        return configured
    return shutil.which("chromium")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run; .ci/run installs chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    """One headless chromium for the whole session."""
    executable = chromium_path()
    if executable is None:
        _unavailable("no chromium: install Debian's chromium (apt-get install chromium) to run the browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (it is in the dev extra)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser):
    """A fresh page in its own context (no cookies or storage shared between tests)."""
    context = browser.new_context(viewport={"width": 1000, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.js_errors = errors  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()
