"""Fixtures for the browser tests: a headless Chromium driven by Playwright, pages that may not
reach outside this machine, and the built site served on localhost.

Playwright's own browser downloads are not used: the tests launch the system Chromium
(`executable_path`), so nothing is fetched at test time.
"""

import functools
import http.server
import shutil
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
INSTALL_HINT = ("Chromium not found; install it to run this test: `apt-get install chromium` (Debian/Ubuntu) "
                "or `brew install --cask chromium` (macOS)")
LOCAL_SCHEMES = {"file", "data", "blob", "about"}
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_local_url(url: str) -> bool:
    """True for what a page may load offline: file:, data:, blob:, about: and this machine over http(s)/ws(s)."""
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    return parts.scheme in {"http", "https", "ws", "wss"} and parts.hostname in LOCAL_HOSTS


def block_outside_requests(context) -> list:
    """Abort every request of a Playwright browser context that would leave this machine.

    Returns the list the aborted (and any other outside) URLs are appended to, so a test can
    fail on them. WebSockets are not routed by `context.route`; outside ones are recorded too.
    The routing runs in the test's thread (sync API): while waiting, use `page.wait_for_timeout`, not
    `time.sleep`, or the page's requests stall.
    """
    outside: list = []

    def route(r):
        url = r.request.url
        if is_local_url(url):
            r.continue_()
        else:
            outside.append(url)
            r.abort("internetdisconnected")

    def on_websocket(ws):
        if not is_local_url(ws.url):
            outside.append(ws.url)

    context.route("**/*", route)
    context.on("page", lambda page: page.on("websocket", on_websocket))
    return outside


def fail_on_outside(outside: list) -> None:
    if outside:
        listed = "\n  ".join(sorted(set(outside)))
        pytest.fail(f"{len(outside)} request(s) tried to leave this machine:\n  {listed}", pytrace=False)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(INSTALL_HINT)


@pytest.fixture(scope="session")
def browser(chromium_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: `make setup` installs it from requirements.lock")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def offline_context(browser):
    """A fresh browser context whose requests outside this machine are aborted; the test fails if there were any."""
    context = browser.new_context(viewport={"width": 1280, "height": 1600})
    outside = block_outside_requests(context)
    yield context
    context.close()
    fail_on_outside(outside)


@pytest.fixture
def offline_page(offline_context):
    """A page in `offline_context`: outside requests are aborted and fail the test at teardown."""
    return offline_context.new_page()


@pytest.fixture
def free_port() -> int:
    """A free TCP port on 127.0.0.1 (see `find_free_port`)."""
    return find_free_port()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # no request log (the names are the base class's)
        pass


@pytest.fixture(scope="session")
def site_url():
    """The built book served from _build/html on 127.0.0.1 (a free port); yields the base URL, ending in /."""
    if not (HTML / "index.html").exists():
        pytest.fail(f"{HTML / 'index.html'} is missing: build the book first with `make book`", pytrace=False)
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", find_free_port()), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
