"""Open the built pages in headless Chromium and check what a reader would see.

Needs the HTML from `make book` (or `make build-strict`). The check is on the DOM
after the page's JavaScript has run, with the network blocked: math typeset by
the MathJax we serve ourselves, the animation player drawn, widgets rendered.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
CHAPTER_1 = HTML / "book" / "01_ddpm.html"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: the page must stand on its own
    "--virtual-time-budget=30000", "--window-size=1200,2400",
]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium not found; install it to run this test: `apt-get install chromium` (Debian/Ubuntu) "
                "or `brew install --cask chromium` (macOS)")


def _run(args, tmp_path):
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    home = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, **home})


CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def _expected(chapter: str) -> dict:
    """What the page must show, read from the notebook: its display math, animations and widgets."""
    nb = json.loads((ROOT / "book" / f"{chapter}.ipynb").read_text())
    markdown = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    cells = [c.get("outputs", []) for c in nb["cells"] if c["cell_type"] == "code"]
    bundles = [o.get("data", {}) for outputs in cells for o in outputs]
    # a precomputed panel's output has a widget view and an HTML view; the page shows the HTML one
    return {
        "display_math": markdown.count("```{math}") + markdown.count("$$") // 2,
        "animations": "_anim_img" in json.dumps(cells),
        "widgets": any("application/vnd.jupyter.widget-view+json" in d and "text/html" not in d for d in bundles),
        "panels": sum("dn-panel" in "".join(d.get("text/html", "")) for d in bundles),
    }


_DOMS: dict = {}


@pytest.fixture
def dom(request, tmp_path_factory):
    chapter = request.param
    if chapter not in _DOMS:
        page = HTML / "book" / f"{chapter}.html"
        if not page.exists():
            pytest.fail(f"{page} is missing: build the book first with `make book`")
        out = _run(["--dump-dom", page.as_uri()], tmp_path_factory.mktemp("chromium"))
        assert out.returncode == 0, out.stderr[-2000:]
        _DOMS[chapter] = BeautifulSoup(out.stdout, "html.parser")
    return chapter, _DOMS[chapter]


@pytest.mark.parametrize("dom", CHAPTERS, indirect=True)
def test_math_is_typeset(dom):
    chapter, page = dom
    expected = _expected(chapter)["display_math"]
    assert expected > 0, f"{chapter} has no display math: is the expectation reading the notebook right?"
    assert len(page.select("mjx-container")) >= expected, f"MathJax did not typeset the equations of {chapter}"
    for block in page.select("div.math, span.math"):
        text = block.get_text()
        assert "\\[" not in text and "\\(" not in text, f"raw TeX left on {chapter}: {text[:80]!r}"


@pytest.mark.parametrize("dom", CHAPTERS, indirect=True)
def test_animation_players_run(dom):
    chapter, page = dom
    frames = [img for img in page.select("img") if (img.get("id") or "").startswith("_anim_img")]
    if not _expected(chapter)["animations"]:
        assert not frames
        return
    assert frames, f"no animation player on {chapter}"
    for img in frames:
        assert (img.get("src") or "").startswith(("data:image/png", "data:image/jpeg")), \
            "an animation's first frame was not drawn"
    assert page.select("div.anim-buttons button"), "an animation has no play buttons"


@pytest.mark.parametrize("dom", CHAPTERS, indirect=True)
def test_no_control_is_dead_on_the_site(dom):
    """Every control on a page answers with no kernel: a widget whose output has no HTML view would be
    drawn by the widget renderer and then do nothing when moved, so no chapter may store one."""
    chapter, page = dom
    assert not _expected(chapter)["widgets"], f"{chapter} stores a widget with no HTML view: use viz.precomputed_panel"
    assert not page.select('script[type="application/vnd.jupyter.widget-view+json"]'), f"{chapter} draws a widget view"
    assert not page.select('script[src*="embed-amd"]'), f"{chapter} loads the widget renderer for nothing"


@pytest.mark.parametrize("dom", CHAPTERS, indirect=True)
def test_precomputed_panels_are_drawn_not_their_widget_views(dom):
    chapter, page = dom
    panels = page.select("div.dn-panel")
    assert len(panels) == _expected(chapter)["panels"], f"{chapter}: {len(panels)} panels drawn"
    for panel in panels:
        picture = panel.select_one("img.dn-frame")
        assert picture is not None and picture.get("src", "").startswith("data:image/"), "a panel has no picture"
        assert panel.select("[data-control]"), "a panel has no controls"


def test_screenshot(tmp_path):
    """A picture of the top of Chapter 1 for people to look at (kept in _build/screenshots)."""
    if not CHAPTER_1.exists():
        pytest.fail(f"{CHAPTER_1} is missing: build the book first with `make book`")
    shot = ROOT / "_build" / "screenshots" / "01_ddpm.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    out = _run([f"--screenshot={shot}", CHAPTER_1.as_uri()], tmp_path)
    assert out.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000, out.stderr[-2000:]
