"""Sidebar toggles that answer, on a phone and on a desktop.

pydata-sphinx-theme 0.17 draws its own header bar with a second, hidden pair of sidebar buttons
(`.primary-toggle`, `.secondary-toggle`) above sphinx-book-theme's visible ones. Both themes'
scripts bind `document.querySelector(".primary-toggle")`, the first such button on the page,
which is the hidden one: the visible buttons then do nothing, so a phone has no way to open the
chapter list or the page outline and a desktop cannot collapse the sidebar
(pydata/pydata-sphinx-theme#2451).

That header bar is drawn only when one of its item lists (navbar_start/center/end/persistent) is
non-empty. sphinx-book-theme leaves the first three empty; pydata-sphinx-theme fills
navbar_persistent with a search field unless the book sets it. Setting it to [] leaves the bar
empty: the only sidebar buttons on the page are the visible ones, the scripts bind them, and the
duplicate search field in the bar goes with it (the sidebar keeps its own).
tests/browser/test_navigation.py opens the chapter list at phone size and collapses it on a desktop.
"""


def _no_header_bar(app, config):
    options = config.html_theme_options
    options.setdefault("navbar_persistent", [])


def setup(app):
    app.connect("config-inited", _no_header_bar)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
