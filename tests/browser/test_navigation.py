"""The sidebar buttons answer: a reader reaches the chapter list and the page outline on a phone,
and can fold the chapter list away on a desktop.

Each test serves the built site on localhost (`site_url`), opens a chapter in headless Chromium at
a phone's or a desktop's size with outside requests aborted, presses the visible button the way a
reader does, and waits for the state it checks (a sidebar drawn, or folded away).
"""

import re

import pytest

from conftest import block_outside_requests, fail_on_outside

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed").expect

PAGE = "book/01_ddpm.html"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
WAIT_MS = 10_000
FOLDED = re.compile(r"\bpst-sidebar-hidden\b")


@pytest.fixture
def open_page(browser, site_url):
    """open_page(viewport) -> a chapter page at that size; outside requests fail the test."""
    contexts = []

    def open_at(viewport):
        context = browser.new_context(viewport=viewport, is_mobile=viewport["width"] < 500,
                                      has_touch=viewport["width"] < 500)
        outside = block_outside_requests(context)
        contexts.append((context, outside))
        page = context.new_page()
        page.goto(site_url + PAGE, wait_until="load")
        return page

    yield open_at
    for context, outside in contexts:
        context.close()
        fail_on_outside(outside)


def visible_button(page, kind: str):
    """The one visible sidebar button of a kind ("primary" or "secondary") on the page."""
    buttons = page.locator(f"button.{kind}-toggle")
    shown = [i for i in range(buttons.count()) if buttons.nth(i).is_visible()]
    assert len(shown) == 1, f"{len(shown)} visible .{kind}-toggle buttons"
    return buttons.nth(shown[0])


def test_every_sidebar_button_on_the_page_is_one_a_reader_can_press(open_page):
    """No hidden twin of a sidebar button: the themes' scripts bind the first one they find."""
    page = open_page(DESKTOP)
    for kind in ("primary", "secondary"):
        buttons = page.locator(f"button.{kind}-toggle")
        assert buttons.count() == 1, f"{buttons.count()} .{kind}-toggle buttons on the page"


def test_the_chapter_list_opens_on_a_phone(open_page):
    page = open_page(PHONE)
    sidebar = page.locator("#pst-primary-sidebar")
    expect(sidebar.locator("nav.bd-docs-nav")).to_be_hidden()  # folded away until asked for
    visible_button(page, "primary").tap()
    drawer = page.locator("dialog#pst-primary-sidebar-modal")
    expect(drawer).to_have_attribute("open", "", timeout=WAIT_MS)
    chapters = drawer.locator("nav.bd-docs-nav a.reference")
    expect(chapters.first).to_be_visible(timeout=WAIT_MS)
    assert chapters.count() >= 17, f"the chapter list shows {chapters.count()} links"
    expect(drawer.get_by_role("link", name="ControlNet", exact=False).first).to_be_visible()
    page.keyboard.press("Escape")
    expect(drawer).not_to_have_attribute("open", "", timeout=WAIT_MS)
    # and again: the button keeps working after the drawer was closed
    visible_button(page, "primary").tap()
    expect(drawer).to_have_attribute("open", "", timeout=WAIT_MS)
    drawer.locator("nav.bd-docs-nav a.reference", has_text="Samplers").first.tap()
    page.wait_for_url("**/02_samplers.html", timeout=WAIT_MS)


def test_the_page_outline_opens_on_a_phone(open_page):
    page = open_page(PHONE)
    visible_button(page, "secondary").tap()
    drawer = page.locator("dialog#pst-secondary-sidebar-modal")
    expect(drawer).to_have_attribute("open", "", timeout=WAIT_MS)
    sections = drawer.locator("nav.page-toc a")
    expect(sections.first).to_be_visible(timeout=WAIT_MS)
    assert sections.count() >= 3, f"the page outline shows {sections.count()} sections"
    page.keyboard.press("Escape")
    expect(drawer).not_to_have_attribute("open", "", timeout=WAIT_MS)


def test_the_chapter_list_folds_away_on_a_desktop(open_page):
    page = open_page(DESKTOP)
    sidebar = page.locator("#pst-primary-sidebar")
    article = page.locator("main#main-content")
    expect(sidebar).to_be_visible()
    width_with_sidebar = article.bounding_box()["width"]
    visible_button(page, "primary").click()
    expect(sidebar).to_have_class(FOLDED, timeout=WAIT_MS)
    expect(sidebar).to_be_hidden(timeout=WAIT_MS)
    page.wait_for_function(f"document.querySelector('main#main-content').getBoundingClientRect().width"
                           f" > {width_with_sidebar} + 100", timeout=WAIT_MS)
    assert not page.locator("dialog[open]").count(), "a drawer opened instead of the sidebar folding"
    visible_button(page, "primary").click()
    expect(sidebar).not_to_have_class(FOLDED, timeout=WAIT_MS)
    expect(sidebar).to_be_visible(timeout=WAIT_MS)


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_search_stays_one_press_away(open_page, viewport):
    """Without the theme's header bar the search button is the article header's (phone) or the sidebar's
    field (desktop): exactly one is visible, and it opens the search dialog."""
    page = open_page(viewport)
    buttons = page.locator("button.search-button__button")
    shown = [buttons.nth(i) for i in range(buttons.count()) if buttons.nth(i).is_visible()]
    assert len(shown) == 1, f"{len(shown)} visible search buttons at {viewport['width']} px"
    shown[0].click()
    expect(page.locator("dialog#pst-search-dialog")).to_have_attribute("open", "", timeout=WAIT_MS)
