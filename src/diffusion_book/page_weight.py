"""What a page of the built book costs a reader: every file the browser fetches to show it, in bytes
as stored and as a server would send them gzipped, and the requests that fail.

    weight = page_weight(browser, "http://127.0.0.1:8000/book/01_ddpm.html")
    weight.gzipped, weight.raw, weight.failed          # bytes, bytes, [(status, url)]

The page is opened in headless Chromium (Playwright's sync API, a browser the caller launched) and left
until the network is idle: what opening the page costs. `scroll=True` also scrolls to the end, so
that the pictures loaded lazily are counted too (what reading the whole page costs). Each
response's body is gzipped at level 6 (what a static server's default does); data: URIs are part of
the page that holds them, so they are counted there.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

PANEL_BUDGET, PAGE_BUDGET = 1_500_000, 1_000_000  # bytes gzipped, per page with all it fetches


def budget(html_file: Path) -> int:
    """A page's gzipped budget: more where slider panels store their frames in the page."""
    return PANEL_BUDGET if 'class="dn-panel"' in Path(html_file).read_text(encoding="utf-8") else PAGE_BUDGET


@dataclass
class PageWeight:
    url: str
    raw: int = 0  # bytes of every response body
    gzipped: int = 0  # the same, gzipped
    files: dict = field(default_factory=dict)  # url -> (raw, gzipped)
    failed: list = field(default_factory=list)  # (status, url) of every response >= 400 and every failed request


def _gzipped(body: bytes) -> int:
    return len(gzip.compress(body, compresslevel=6, mtime=0))


def page_weight(browser, url: str, viewport=None, scroll: bool = False, timeout_ms: int = 120_000) -> PageWeight:
    """Open `url` in a new context of `browser` and add up what it fetched (see the module's docstring)."""
    weight = PageWeight(url)
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
    page = context.new_page()
    responses = []
    page.on("response", lambda response: responses.append(response))
    page.on("requestfailed", lambda request: weight.failed.append(("failed", request.url)))
    page.goto(url, wait_until="networkidle", timeout=timeout_ms)
    if scroll:
        for _ in range(60):  # a screen at a time, so that each lazy picture comes into view
            at_end = page.evaluate("window.scrollBy(0, window.innerHeight); "
                                   "window.innerHeight + window.scrollY >= document.body.scrollHeight")
            page.wait_for_timeout(50)
            if at_end:
                break
        page.wait_for_load_state("networkidle", timeout=timeout_ms)
    for response in responses:
        if response.url.startswith("data:"):
            continue
        if response.status >= 400:
            weight.failed.append((response.status, response.url))
            continue
        try:
            body = response.body()
        except Exception:  # a redirect or an aborted body has none
            continue
        weight.files[response.url] = (len(body), _gzipped(body))
    context.close()
    weight.raw = sum(raw for raw, _ in weight.files.values())
    weight.gzipped = sum(gz for _, gz in weight.files.values())
    return weight
