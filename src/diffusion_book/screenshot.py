"""A picture of the running app: headless Chromium (the system's, through Playwright) opens it, types a
prompt, presses Generate and takes a screenshot, with every request that would leave the machine aborted."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from urllib.parse import urlsplit

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    """The system Chromium's path, or None (then there is no screenshot to take)."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname in ("127.0.0.1", "localhost", "::1")


def screenshot(url: str, prompt: str, chromium: str, seed: int = 0, size=(1100, 1400)) -> tuple[bytes, list[str]]:
    """(PNG bytes of the txt2img tab after Generate, the outside URLs the page tried and was refused).

    The window is `size`; the picture is cropped to the tab's content, down to the generation info
    and the seed, the controls the chapter discusses, so that it fits a page's column legibly.

    Runs in a thread of its own: Playwright's sync API refuses a thread with a running event loop
    (a Jupyter kernel's)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_screenshot, url, prompt, chromium, seed, size).result()


def _screenshot(url, prompt, chromium, seed, size):
    from playwright.sync_api import sync_playwright

    outside: list[str] = []

    def route(r):
        if _local(r.request.url):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort("internetdisconnected")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": size[0], "height": size[1]})
            context.route("**/*", route)
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
            page.fill("#txt2img_prompt textarea", prompt)
            page.fill("#txt2img_seed input", str(seed))
            page.click("#txt2img_generate")
            image = page.wait_for_selector("#txt2img_gallery img", timeout=60_000)
            page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=image, timeout=30_000)
            page.wait_for_timeout(300)
            # the tab's content: from the checkpoint row's left to its Refresh button's right, down to
            # the lower of the generation info and the seed
            box = page.evaluate("""() => {
                const r = s => document.querySelector(s).getBoundingClientRect();
                return {left: r('#sd_model_checkpoint').left, right: r('#refresh_sd_model_checkpoint').right,
                        bottom: Math.max(r('#txt2img_info').bottom, r('#txt2img_seed').bottom) + window.scrollY};
            }""")
            left = max(0, int(box["left"]) - 16)
            png = page.screenshot(full_page=True, clip={
                "x": left, "y": 0, "width": min(int(box["right"]) + 16, size[0]) - left,
                "height": min(int(box["bottom"]) + 16, size[1])})
        finally:
            browser.close()
    return png, outside


@contextmanager
def serve_folder(folder):
    """`folder` served over http on 127.0.0.1 (a free port) by a thread; yields the base URL, ending in /."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # a page closed mid-transfer: not our error
            import sys

            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
