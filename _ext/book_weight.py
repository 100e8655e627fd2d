"""Lighter pages: pictures load when they are scrolled to, and the icon script that repeats the icon
font is not loaded.

- Every `<img>` of a page's body gets `loading="lazy"`: a chapter's figures below the first screen
  are fetched as the reader reaches them, not all at once when the page opens.
- pydata-sphinx-theme loads Font Awesome twice: as a web font through its style sheet, and as a
  script (`scripts/fontawesome.js`, 0.54 MB gzipped) that redraws the same icons as SVG. The style
  sheet alone draws them, so the script's tag is taken out of every page after the build.
- The theme loads Sphinx's search scripts and the whole search index (`searchindex.js`, 36 kB
  gzipped and growing with the book) on every page, for its search-as-you-type box, which is off
  (`search_as_you_type`, the theme's default): its script returns at once. The search page loads
  them itself, and the search box sends the reader there, so other pages leave them out.
tests/browser/test_page_weight.py holds each page to its budget.
"""

import re
from pathlib import Path

IMG = re.compile(r"<img(?![^>]*\sloading=)")
ICON_SCRIPT = re.compile(r'<script[^>]*src="[^"]*scripts/fontawesome\.js[^"]*"[^>]*>\s*</script>\s*')
SEARCH_SCRIPTS = re.compile(r'<script src="[^"]*(?:_static/searchtools\.js|_static/language_data\.js|searchindex\.js)'
                            r'"></script>\s*')


def lazy_images(html: str) -> str:
    """`html` with loading="lazy" on each <img> that has no loading attribute."""
    return IMG.sub('<img loading="lazy"', html)


def without_icon_script(html: str) -> str:
    return ICON_SCRIPT.sub("", html)


def without_search_scripts(html: str) -> str:
    return SEARCH_SCRIPTS.sub("", html)


def _lazy(app, pagename, templatename, context, doctree):
    if "body" in context:
        context["body"] = lazy_images(context["body"])


def _drop_icon_script(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    as_you_type = (app.config.html_theme_options or {}).get("search_as_you_type", False)
    for page in Path(app.outdir).rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        lighter = without_icon_script(text)
        if not as_you_type and page.name != "search.html":
            lighter = without_search_scripts(lighter)
        if lighter != text:
            page.write_text(lighter, encoding="utf-8")


def setup(app):
    app.connect("html-page-context", _lazy)
    app.connect("build-finished", _drop_icon_script)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
