"""The glossary as a reader meets it: its Chinese cells marked as Chinese, its chapter numbers links.

The built page is served on localhost and opened in headless Chromium with outside requests aborted.
"""

import re

import pytest

from conftest import HTML, block_outside_requests, fail_on_outside

pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")

PAGE = "book/glossary.html"


def test_chinese_cells_have_a_language_and_chapters_are_links(browser, site_url):
    context = browser.new_context()
    outside = block_outside_requests(context)
    page = context.new_page()
    page.goto(site_url + PAGE, wait_until="load")
    cells = page.eval_on_selector_all(
        "table td", "cells => cells.map(c => [c.textContent, c.getAttribute('lang')])")
    chinese = [(text, lang) for text, lang in cells if re.search(r"[\u4e00-\u9fff]", text)]
    assert len(chinese) >= 60, f"only {len(chinese)} cells with Chinese on the glossary page"
    assert [text for text, lang in chinese if lang != "zh-Hans"] == []
    links = page.eval_on_selector_all(
        "table td:last-child a", "links => links.map(a => a.getAttribute('href'))")
    assert len(links) >= 70, f"only {len(links)} chapter links in the glossary's last column"
    for href in set(links):
        target = (HTML / "book" / href.split("#")[0]).resolve()
        assert target.exists(), f"the glossary links to {href}, which the site does not have"
    context.close()
    fail_on_outside(outside)
