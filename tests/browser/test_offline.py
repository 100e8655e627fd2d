"""The built site must stand on its own: nothing a page loads may come from outside this machine.

Two checks. A static scan of every built HTML page and of the site's own CSS for outside URLs in
what a browser *loads* (scripts, stylesheets, icons, images, media, frames, CSS `url()` and
`@import`, fonts among them, and the embedded Jupyter widget state). Plain `<a href>` links to
outside pages are fine: nothing is fetched until a reader follows them. Then the pages opened in
headless Chromium from a localhost server with every outside request aborted and recorded.

Needs the HTML from `make book` (or `make build-strict`).
"""

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# The widget classes the vendored renderer (@jupyter-widgets/html-manager) has built in. A widget
# from any other module is looked up through `data-jupyter-widgets-cdn`.
BUILT_IN_WIDGET_MODULES = {"@jupyter-widgets/base", "@jupyter-widgets/controls", "@jupyter-widgets/output"}
# The renderer's own fallback when the embed script names no CDN (libembed-amd.js).
RENDERER_DEFAULT_CDN = "https://cdn.jsdelivr.net/npm/"

# Elements and the attributes through which a browser fetches something on its own.
LOADING_ATTRIBUTES = {
    "script": ("src",),
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "iframe": ("src",),
    "frame": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "video": ("src", "poster"),
    "audio": ("src",),
    "track": ("src",),
    "input": ("src",),
    "image": ("href", "xlink:href"),
    "use": ("href", "xlink:href"),
    "feimage": ("href", "xlink:href"),
}
# <link rel=...> values that are only references (nothing is fetched); any other rel is treated as loading.
REFERENCE_RELS = {"canonical", "alternate", "author", "license", "help", "next", "prev", "search", "index",
                  "top", "up", "bookmark", "external", "nofollow", "noopener", "noreferrer", "me", "edit"}

CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)""", re.IGNORECASE | re.DOTALL)
CSS_IMPORT = re.compile(r"""@import\s+(?:url\(\s*)?(['"]?)([^'")\s;]+)\1""", re.IGNORECASE)
CSS_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)


def is_outside(url: str) -> bool:
    """http://, https:// or protocol-relative //host: a URL that would leave this machine."""
    url = url.strip()
    if url.startswith("//"):
        return True
    parts = urlsplit(url)
    return (parts.scheme.lower() in {"http", "https", "ws", "wss", "ftp"}
            and parts.hostname not in {"127.0.0.1", "localhost"})


def _srcset_urls(value: str):
    return [candidate.strip().split()[0] for candidate in value.split(",") if candidate.strip()]


def css_outside_urls(css: str) -> list:
    """Outside URLs in a style sheet's `url(...)` and `@import` (data: URLs inside are fine)."""
    css = CSS_COMMENT.sub("", css)
    found = [m.group(2) for m in CSS_URL.finditer(css)] + [m.group(2) for m in CSS_IMPORT.finditer(css)]
    return [u for u in found if not u.lower().startswith("data:") and is_outside(u)]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def scan_html(text: str, page: str = "page", page_path: Path | None = None) -> list:
    """Every outside URL the page would load, as 'where: url' strings.

    `page_path` (the file on disk) lets a relative widget CDN be checked to exist in the site.
    """
    soup = BeautifulSoup(text, "html.parser")
    problems = []

    def flag(where, url):
        problems.append(f"{page}: {where}: {url}")

    for tag in soup.find_all(True):
        name = tag.name.lower()
        for attr in LOADING_ATTRIBUTES.get(name, ()):
            value = tag.get(attr)
            if not value:
                continue
            urls = _srcset_urls(value) if attr == "srcset" else [value]
            if name == "input" and (tag.get("type") or "").lower() != "image":
                urls = []
            for url in urls:
                if is_outside(url):
                    flag(f"<{name} {attr}>", url)
        if name == "link" and tag.get("href"):
            rels = {r.lower() for r in (tag.get("rel") or [])}
            if (not rels or rels - REFERENCE_RELS) and is_outside(tag["href"]):
                flag(f"<link rel={' '.join(sorted(rels)) or '?'}>", tag["href"])
        if tag.get("style"):
            for url in css_outside_urls(tag["style"]):
                flag(f"<{name} style> url()", url)
        if name == "style":
            for url in css_outside_urls(tag.get_text()):
                flag("<style>", url)
        if name == "script" and tag.has_attr("data-jupyter-widgets-cdn"):
            cdn = tag["data-jupyter-widgets-cdn"]
            if is_outside(cdn):
                flag("widget renderer CDN (data-jupyter-widgets-cdn)", cdn)
            elif page_path is not None and not cdn.startswith(("data:", "blob:")):
                target = (page_path.parent / cdn).resolve()
                if not target.is_dir():
                    flag("widget renderer CDN (data-jupyter-widgets-cdn) is not a folder of the site", cdn)
        if name == "script" and "embed-amd" in (tag.get("src") or "") and not tag.has_attr("data-jupyter-widgets-cdn"):
            flag("widget renderer with no data-jupyter-widgets-cdn (it falls back to)", RENDERER_DEFAULT_CDN)

    for script in soup.find_all("script", type=WIDGET_STATE):
        state = json.loads(script.string or script.get_text() or "{}")
        for value in _strings(state):
            if is_outside(value):
                flag("widget state", value.strip())
            elif "<" in value:  # an HTML widget's value: what it would load
                problems += scan_html(value, f"{page}: widget state HTML")
            elif "url(" in value:
                for url in css_outside_urls(value):
                    flag("widget state url()", url)
    return problems


def widget_modules(text: str) -> set:
    """The model and view modules of every widget in a page's embedded widget state."""
    soup = BeautifulSoup(text, "html.parser")
    modules = set()
    for script in soup.find_all("script", type=WIDGET_STATE):
        for model in json.loads(script.string or "{}").get("state", {}).values():
            modules.add(model.get("model_module"))
            modules.add(model.get("state", {}).get("_view_module") or model.get("model_module"))
    return modules - {None}


def _built(pattern: str) -> list:
    return sorted(p.relative_to(HTML).as_posix() for p in HTML.glob(pattern)) if HTML.exists() else []


PAGES = _built("**/*.html")
STYLESHEETS = _built("_static/**/*.css")
MISSING = "_build/html is missing: build the book first with `make book`"


def _need_build():
    if not (HTML / "index.html").exists():
        pytest.fail(MISSING, pytrace=False)


# -- the scanner itself ---------------------------------------------------------------------------

SYNTHETIC = """<!doctype html><html><head>
<script src="https://cdn.example.com/lib.js"></script>
<link rel="stylesheet" href="//fonts.example.com/css?family=Roboto">
<link rel="preload" as="font" href="https://fonts.example.com/a.woff2">
<link rel="canonical" href="https://example.com/this-page.html">
<style>@font-face { font-family: X; src: url("https://fonts.example.com/x.woff2") format("woff2"); }
@import url(https://example.com/more.css); .ok { background: url(data:image/png;base64,AAAA); }</style>
<script data-jupyter-widgets-cdn="https://cdn.example.com/npm/" src="_static/widgets/embed-amd.js"></script>
<script type="application/vnd.jupyter.widget-state+json">{"state": {"m": {"model_module": "@jupyter-widgets/controls",
 "state": {"value": "https://images.example.com/p.png", "description": "<img src='//images.example.com/q.png'>"}}},
 "version_major": 2, "version_minor": 0}</script>
</head><body>
<a href="https://example.com/a-page-to-read">a link, not loaded</a>
<img src="../_static/local.png" srcset="local@2x.png 2x, https://images.example.com/big.png 3x">
<div style="background-image: url('https://images.example.com/bg.png')"></div>
<iframe src="https://www.example.com/embed"></iframe>
<img src="data:image/png;base64,AAAA"><script src="file:///tmp/x.js"></script><script src="http://127.0.0.1:8000/x.js"></script>
</body></html>"""


def test_scanner_catches_outside_loads():
    found = "\n".join(scan_html(SYNTHETIC, "synthetic"))
    for url in ["https://cdn.example.com/lib.js", "//fonts.example.com/css?family=Roboto", "https://fonts.example.com/a.woff2",
                "https://fonts.example.com/x.woff2", "https://example.com/more.css", "https://cdn.example.com/npm/",
                "https://images.example.com/p.png", "//images.example.com/q.png", "https://images.example.com/big.png",
                "https://images.example.com/bg.png", "https://www.example.com/embed"]:
        assert url in found, f"the scanner missed {url}:\n{found}"
    for fine in ["a-page-to-read", "this-page.html", "local.png", "data:image", "file:///tmp", "127.0.0.1"]:
        assert fine not in found, f"the scanner flagged {fine}, which loads nothing from outside:\n{found}"
    assert "<style>" in found and "widget state" in found and "widget renderer CDN" in found


def test_scanner_reads_css_files():
    css = """/* url(https://in.a.comment/ignored.woff) */
    @import "https://fonts.example.com/family.css";
    @font-face { src: url(//fonts.example.com/f.woff2) format("woff2"), url("../webfonts/local.woff2"); }"""
    assert sorted(css_outside_urls(css)) == ["//fonts.example.com/f.woff2", "https://fonts.example.com/family.css"]


def test_scanner_wants_a_local_widget_cdn():
    page = '<script src="../_static/widgets/embed-amd.js"></script>'
    assert any(RENDERER_DEFAULT_CDN in p for p in scan_html(page, "p")), (
        "an embed script without a CDN falls back to jsdelivr")


# -- the built site -------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES or [MISSING])
def test_page_loads_nothing_from_outside(page):
    _need_build()
    problems = scan_html((HTML / page).read_text(encoding="utf-8"), page, HTML / page)
    assert not problems, "outside URLs a browser would load:\n  " + "\n  ".join(problems)


def test_stylesheets_load_nothing_from_outside():
    _need_build()
    assert STYLESHEETS, "no style sheets under _build/html/_static"
    problems = [f"{css}: {url}" for css in STYLESHEETS
                for url in css_outside_urls((HTML / css).read_text(encoding="utf-8", errors="replace"))]
    assert not problems, "outside URLs in the site's CSS (fonts?):\n  " + "\n  ".join(problems)


def test_our_widgets_need_no_cdn():
    """Every widget on the pages is one the vendored renderer has built in: none is fetched from a CDN."""
    _need_build()
    used = set()
    for page in PAGES:
        used |= widget_modules((HTML / page).read_text(encoding="utf-8"))
    lacking = sorted(used - BUILT_IN_WIDGET_MODULES)
    assert not lacking, f"widget modules the renderer lacks: {lacking}"


def _pages_to_open():
    return [p for p in PAGES if "_static/" not in p] or [MISSING]  # both editions' pages (zh/ too)


@pytest.mark.parametrize("page", _pages_to_open())
def test_page_opens_with_the_network_blocked(page, site_url, offline_page):
    """Open the page from localhost with outside requests aborted; `offline_page` fails on any attempt."""
    _need_build()
    offline_page.goto(site_url + page, wait_until="load", timeout=120_000)
    offline_page.wait_for_load_state("networkidle", timeout=120_000)
    if 'type="application/vnd.jupyter.widget-view+json"' in (HTML / page).read_text(encoding="utf-8"):
        # the renderer drew the widgets from the vendored files alone
        offline_page.wait_for_selector(".widget-subarea .jupyter-widgets", state="attached", timeout=60_000)
        offline_page.wait_for_load_state("networkidle", timeout=60_000)
