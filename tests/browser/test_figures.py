"""Every figure of the built chapters is described and can be opened at full size.

- Each picture a chapter's code outputs sits in a numbered `<figure>` ("Fig. N") with a caption, and
  its alt text says what it shows: not empty, not the hashed file name myst-nb gives by default.
  Both editions are read.
- In headless Chromium, pressing a figure opens it at its own pixel size in a dialog, and Escape
  closes it; a slider panel's picture and an animation's frame carry alt text that follows what
  they show (_ext/book_figures.py).
"""

import re
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from conftest import block_outside_requests, fail_on_outside

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
PAGES = [f"{edition}book/{p.stem}.html" for edition in ("", "zh/") for p in sorted((ROOT / "book").glob("*.ipynb"))]
HASHED = re.compile(r"^[0-9a-f]{16,}(\.\w+)?$|\.(png|jpe?g|svg)$", re.I)
WAIT_MS = 20_000


def _pictures(page: str) -> list:
    path = HTML / page
    if not path.exists():
        pytest.fail(f"{path} is missing: build the book first with `make book`", pytrace=False)
    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    return [img for img in soup.select(".cell_output img")
            if not img.find_parent(class_=re.compile(r"^(dn-panel|dn-sd-panel|animation)$"))]


@pytest.mark.parametrize("page", PAGES)
def test_every_figure_has_a_numbered_caption_and_alt_text(page):
    problems = []
    for img in _pictures(page):
        alt = (img.get("alt") or "").strip()
        figure = img.find_parent("figure")
        caption = figure.find("figcaption") if figure else None
        number = caption.find(class_="caption-number") if caption else None
        where = img.get("src", "")[-40:]
        if not alt or HASHED.search(alt) or len(alt.split()) < 4:
            problems.append(f"{where}: alt text {alt!r} does not describe the picture")
        if number is None or not re.search(r"\d", number.get_text()):
            problems.append(f"{where}: no numbered caption")
        elif len(caption.get_text(" ", strip=True)) < len(number.get_text()) + 10:
            problems.append(f"{where}: the caption is only its number")
    assert not problems, "\n".join(problems)


def test_a_figure_opens_at_full_size_and_closes(browser, site_url):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    outside = block_outside_requests(context)
    try:
        page = context.new_page()
        page.goto(site_url + "book/14_web_ui.html", wait_until="load")
        figure = page.locator("figure img.book-zoomable").first
        figure.scroll_into_view_if_needed()
        figure.wait_for(state="visible", timeout=WAIT_MS)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=figure.element_handle(),
                               timeout=WAIT_MS)
        shown = figure.evaluate("img => [img.getBoundingClientRect().width, img.naturalWidth]")
        assert shown[0] < shown[1], "the figure already fits the phone's column at full size; pick a wider one"
        figure.click()
        view = page.locator("dialog.book-figure-view[open] img")
        view.wait_for(state="visible", timeout=WAIT_MS)
        page.wait_for_function("() => { const i = document.querySelector('dialog.book-figure-view img');"
                               " return i.complete && i.naturalWidth > 0; }", timeout=WAIT_MS)
        big = view.evaluate("img => [img.getBoundingClientRect().width, img.naturalWidth, img.alt]")
        assert abs(big[0] - big[1]) < 1 and big[1] == shown[1], f"shown at {big[0]} px of {big[1]}"
        assert big[2] == figure.get_attribute("alt")
        page.keyboard.press("Escape")
        page.locator("dialog.book-figure-view").wait_for(state="hidden", timeout=WAIT_MS)
    finally:
        context.close()
    fail_on_outside(outside)


FRAME_WORDS = [("", "Animation frame {k} of {n}"), ("zh/", "动画第 {k} 帧，共 {n} 帧")]


@pytest.mark.parametrize("edition, frame_words", FRAME_WORDS, ids=["en", "zh"])
def test_panel_and_animation_frames_say_what_they_show(browser, site_url, edition, frame_words):
    """Chapter 1 has both: the panel's picture names its controls' values, the animation's frame its number."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside = block_outside_requests(context)
    try:
        page = context.new_page()
        page.goto(site_url + edition + "book/01_ddpm.html", wait_until="load")
        panel = page.locator("div.dn-panel").first
        frame = panel.locator("img.dn-frame")
        field = panel.locator("[data-control]").first
        name = field.evaluate("f => f.closest('label').querySelector('span').textContent")
        shown = field.evaluate("f => f.parentNode.querySelector('output').textContent")
        expect(frame).to_have_attribute("alt", re.compile(re.escape(f"{name} {shown}")), timeout=WAIT_MS)
        last = field.evaluate("f => f.tagName === 'SELECT' ? f.options.length - 1 : Number(f.max)")
        field.evaluate("(f, v) => { f.value = String(v); f.dispatchEvent(new Event('input', {bubbles: true})); }",
                       last)
        now = field.evaluate("f => f.parentNode.querySelector('output').textContent")
        assert now != shown
        expect(frame).to_have_attribute("alt", re.compile(re.escape(f"{name} {now}")), timeout=WAIT_MS)

        player = page.locator("div.animation").first
        player.scroll_into_view_if_needed()
        img = player.locator("img")
        total = int(player.locator("input.anim-slider").get_attribute("max")) + 1
        player.locator("button[title='First frame']").click()
        expect(img).to_have_attribute("alt", frame_words.format(k=1, n=total), timeout=WAIT_MS)
        player.locator("button[title='Next frame']").click()
        expect(img).to_have_attribute("alt", frame_words.format(k=2, n=total), timeout=WAIT_MS)
    finally:
        context.close()
    fail_on_outside(outside)


# Legible text: about 9 px on the page. A matplotlib figure's PNG records its smallest text in its own
# pixels (diffusion_book.figure_text, written as the chapter executes); the page shows the picture at
# some scale, and the product must be 9 px or more on a desktop. A picture with no record (a JPEG, a
# screenshot) is held to the scale at which matplotlib's default 10 pt text at 100 dpi (13.9 px) reads
# at 9 px. A figure wider than the column is shown across the margin too (the cell tag "full-width").
MIN_TEXT_PX = 9
MIN_SCALE = MIN_TEXT_PX / (10 * 100 / 72)


@pytest.mark.parametrize("chapter", sorted(p.stem for p in (ROOT / "book").glob("*.ipynb")))
def test_figure_text_reads_at_9_px_or_more_on_a_desktop(browser, site_url, chapter):
    from diffusion_book.figure_text import recorded_px

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside = block_outside_requests(context)
    try:
        page = context.new_page()
        page.goto(site_url + f"book/{chapter}.html", wait_until="load")
        page.evaluate("() => document.querySelectorAll('figure img').forEach(i => { i.loading = 'eager'; })")
        page.wait_for_function("() => Array.from(document.querySelectorAll('figure img'))"
                               ".every(i => i.complete && i.naturalWidth > 0)", timeout=WAIT_MS)
        shown = page.evaluate("() => Array.from(document.querySelectorAll('figure img')).map(i => "
                              "[i.getAttribute('src'), i.getBoundingClientRect().width, i.naturalWidth])")
    finally:
        context.close()
    fail_on_outside(outside)
    small = []
    for src, width, natural in shown:
        scale = width / natural
        text = recorded_px(HTML / "book" / src) if src.endswith(".png") else None
        if text is not None and text * scale < MIN_TEXT_PX:
            small.append(f"{src[-24:]}: smallest text {text:.1f} px x {scale:.2f} = {text * scale:.1f} px")
        elif text is None and scale < MIN_SCALE:
            small.append(f"{src[-24:]}: no text record, shown at {scale:.2f} of its size")
    assert not small, "figure text under 9 px on a 1280 px desktop:\n  " + "\n  ".join(small)


def test_most_figures_record_their_smallest_text():
    """Every matplotlib figure records it; the others are screenshots, JPEG photos and PIL strips."""
    from diffusion_book.figure_text import recorded_px

    pngs = [HTML / "book" / img.get("src") for page in PAGES if not page.startswith("zh/")
            for img in _figure_images(page) if img.get("src", "").endswith(".png")]
    recorded = [p for p in pngs if recorded_px(p) is not None]
    assert pngs and len(recorded) >= 0.8 * len(pngs), f"{len(recorded)} of {len(pngs)} PNG figures record their text"


def _figure_images(page: str) -> list:
    return [img for img in _pictures(page) if img.find_parent("figure")]
