"""Open the built pages in headless Chromium and check what a reader would see.

Needs the HTML from `make book` (or `make build-strict`). The check is on the DOM
after the page's JavaScript has run, with the network blocked: math typeset by
the MathJax we serve ourselves, the animation player drawn, widgets rendered.
"""

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
    home = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, **home})


@pytest.fixture(scope="module")
def chapter_1_dom(tmp_path_factory):
    if not CHAPTER_1.exists():
        pytest.fail(f"{CHAPTER_1} is missing: build the book first with `make book`")
    tmp = tmp_path_factory.mktemp("chromium")
    out = _run(["--dump-dom", CHAPTER_1.as_uri()], tmp)
    assert out.returncode == 0, out.stderr[-2000:]
    return BeautifulSoup(out.stdout, "html.parser")


def test_math_is_typeset(chapter_1_dom):
    assert len(chapter_1_dom.select("mjx-container")) >= 10, "MathJax did not typeset the equations"
    for block in chapter_1_dom.select("div.math, span.math"):
        text = block.get_text()
        assert "\\[" not in text and "\\(" not in text, f"raw TeX left on the page: {text[:80]!r}"


def test_animation_player_runs(chapter_1_dom):
    frames = [img for img in chapter_1_dom.select("img") if (img.get("id") or "").startswith("_anim_img")]
    assert frames, "no animation player on the page"
    for img in frames:
        assert (img.get("src") or "").startswith("data:image/png"), "the animation's first frame was not drawn"
    assert chapter_1_dom.select("div.anim-buttons button"), "the animation has no play buttons"


def test_widgets_render(chapter_1_dom):
    views = chapter_1_dom.select('script[type="application/vnd.jupyter.widget-view+json"]')
    assert views, "Chapter 1 should carry at least one widget view"
    assert chapter_1_dom.select(".widget-slider, .jupyter-widgets"), "the widget renderer did not draw the widgets"


def test_screenshot(tmp_path):
    """A picture of the top of Chapter 1 for people to look at (kept in _build/screenshots)."""
    if not CHAPTER_1.exists():
        pytest.fail(f"{CHAPTER_1} is missing: build the book first with `make book`")
    shot = ROOT / "_build" / "screenshots" / "01_ddpm.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    out = _run([f"--screenshot={shot}", CHAPTER_1.as_uri()], tmp_path)
    assert out.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000, out.stderr[-2000:]
