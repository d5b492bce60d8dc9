"""Reports opened the way a marketer opens them: in headless Chromium (Debian's `chromium`,
driven by playwright), with every console error, failed load and request for anything but the
file itself recorded."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def page_of():
    """Open an HTML file; (figures by data-key, errors and outside requests, svgs, text)."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])

        def load(path):
            page = browser.new_page()
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed {r.url}"))
            page.on(
                "request",
                lambda r: None if r.url == path.as_uri() else errors.append(f"request {r.url}"),
            )
            page.goto(path.as_uri(), wait_until="load")
            figures = page.eval_on_selector_all(
                "[data-key]", "els => els.map(e => [e.dataset.key, e.dataset.value])"
            )
            svgs = page.locator("svg").count()
            text = page.inner_text("body")
            page.close()
            return dict(figures), errors, svgs, text

        yield load
        browser.close()
