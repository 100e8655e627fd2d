"""The two editions: every page links to the same page in the other language, and the Chinese pages are Chinese.

Served on localhost with outside requests aborted, a reader on a chapter presses the language link
and must land on the same chapter in the other edition (and back). Every built Chinese page says
it is Chinese (`<html lang="zh-CN">`) and its heading is translated: a catalog Sphinx could not use
(a heading MyST read as a list, say) leaves the English title, which this catches.
"""

import re
from pathlib import Path

import pytest

from conftest import block_outside_requests, fail_on_outside

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
PAGES = sorted(f"book/{p.stem}.html" for p in (ROOT / "book").glob("*.ipynb")) + [
    "book/intro.html", "book/glossary.html"]
CJK = re.compile(r"[\u4e00-\u9fff]")
WAIT_MS = 30_000


def _need(path: Path):
    if not path.exists():
        pytest.fail(f"{path} is missing: build both editions first with `make book`", pytrace=False)


@pytest.mark.parametrize("page", PAGES)
def test_the_chinese_page_is_chinese(page):
    _need(HTML / "zh" / page)
    html = (HTML / "zh" / page).read_text(encoding="utf-8")
    assert re.search(r'<html lang="zh-CN"', html), "the page does not declare its language"
    h1 = re.search(r"<h1>(.*?)</h1>", html, re.S)
    assert h1 and CJK.search(h1.group(1)), f"the heading is not translated: {h1 and h1.group(1)[:80]!r}"


@pytest.mark.parametrize("chapter", ["book/01_ddpm.html", "book/13_text_to_image.html", "book/glossary.html"])
def test_the_language_link_lands_on_the_same_page(browser, site_url, chapter):
    _need(HTML / "zh" / chapter)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside = block_outside_requests(context)
    try:
        page = context.new_page()
        page.goto(site_url + chapter, wait_until="load")
        english_title = page.locator("h1").first.inner_text()
        page.locator("a.book-language-switch[hreflang='zh-Hans']").click()
        page.wait_for_url(site_url + "zh/" + chapter, timeout=WAIT_MS)
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        chinese_title = page.locator("h1").first.inner_text()
        assert CJK.search(chinese_title) and chinese_title != english_title
        page.locator("a.book-language-switch[hreflang='en']").click()
        page.wait_for_url(site_url + chapter, timeout=WAIT_MS)
        assert page.locator("h1").first.inner_text() == english_title
    finally:
        context.close()
    fail_on_outside(outside)


@pytest.mark.parametrize("page", [f"{edition}{page}" for edition in ("", "zh/") for page in PAGES])
def test_no_markdown_is_left_as_text(page):
    """Bold that did not parse shows its asterisks (in Chinese, "**要点。**其后" does: CommonMark will not
    close `**` after punctuation when a letter follows); so do a role or a link Sphinx could not read."""
    from bs4 import BeautifulSoup

    _need(HTML / page)
    soup = BeautifulSoup((HTML / page).read_text(encoding="utf-8"), "html.parser")
    for skip in soup.select("pre, code, .math, script, style, .highlight"):
        skip.extract()
    left = [block.get_text(" ", strip=True)[:100] for block in soup.select("article p, article li, article td, "
                                                                           "figcaption, article h1, article h2")
            if re.search(r"\*\*|\{(eq|ref|numref|doc)\}|\]\(", block.get_text())]
    assert not left, "markup shown as text:\n  " + "\n  ".join(left)
