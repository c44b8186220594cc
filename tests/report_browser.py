"""Open an HTML report in headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Shared by the report tests: the constructed report (test_report_html.py) and the reports
the real commands write (test_eval_es.py). Skips, with the reason, where Playwright or
Chromium is missing.
"""

from __future__ import annotations

import contextlib
import shutil

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def sync_api():
    """Playwright's sync API, or a skip naming what is missing."""
    api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")
    return api


@contextlib.contextmanager
def open_report(path, *, width=1280, height=900):
    """Yield ``(page, errors, requests)`` for the report at ``path``: console errors and page
    errors are collected in ``errors``, every requested URL in ``requests``."""
    api = sync_api()
    errors, requests = [], []
    with api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri(), wait_until="load")
            yield page, errors, requests
        finally:
            browser.close()


@contextlib.contextmanager
def open_url(url, profile, *, width=1400, height=1000, bypass_csp=False):
    """Yield ``(page, errors, requests)`` for a page served over HTTP, in a browser with a fresh
    profile folder ``profile`` (``--user-data-dir``: no cache, no cookies, no saved logins).
    ``bypass_csp`` ignores the page's Content-Security-Policy (to test what the page itself does)."""
    api = sync_api()
    errors, requests = [], []
    with api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height}, bypass_csp=bypass_csp)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            yield page, errors, requests
        finally:
            context.close()


def query_order(page, section=0):
    """The query ids of one per-query section, in the order shown."""
    return page.locator("section.per-query").nth(section).locator("li.q").evaluate_all(
        "els => els.map(e => e.dataset.qid)")


def query_deltas(page, section=0):
    """The per-query deltas of one section, in the order shown."""
    return page.locator("section.per-query").nth(section).locator("li.q").evaluate_all(
        "els => els.map(e => parseFloat(e.dataset.delta))")
