"""Screenshots of the built book (`make book` first) as a reader sees it on a phone and on a desktop.

    python benchmarks/site_screenshots.py [--pages book/03_guidance.html book/13_text_to_image.html]
                                          [--widths 390 1280] [--out _build/screenshots]

Each page is served on localhost, opened in headless Chromium with outside requests refused, and shot
twice per width: its top, and its first slider panel (or the in-page model's panel) scrolled into view.
Prints each file with the page's count of refused requests.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

from diffusion_book.screenshot import ARGS, _local, find_chromium, serve_folder

HEIGHTS = {390: 844, 1280: 900}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", default="_build/html", type=Path)
    parser.add_argument("--pages", nargs="+", default=["book/03_guidance.html", "book/13_text_to_image.html"])
    parser.add_argument("--widths", nargs="+", type=int, default=[390, 1280])
    parser.add_argument("--out", default="_build/screenshots", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with serve_folder(args.html) as base:
        run(args, base)


def run(args, base: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium() or shutil.which("chromium"), args=ARGS)
        for page_name in args.pages:
            for width in args.widths:
                phone = width < 500
                context = browser.new_context(viewport={"width": width, "height": HEIGHTS.get(width, 900)},
                                              is_mobile=phone, has_touch=phone, device_scale_factor=1)
                refused: list[str] = []

                def route(r, refused=refused):
                    if _local(r.request.url):
                        r.continue_()
                    else:
                        refused.append(r.request.url)
                        r.abort()

                context.route("**/*", route)
                page = context.new_page()
                page.goto(base + page_name, wait_until="networkidle")
                stem = f"{Path(page_name).stem}-{width}"
                page.screenshot(path=str(args.out / f"{stem}-top.png"))
                panel = page.locator("div.dn-panel, .dn-sd-panel").first
                if panel.count():
                    panel.scroll_into_view_if_needed()
                    page.wait_for_timeout(300)
                    page.screenshot(path=str(args.out / f"{stem}-panel.png"))
                print(f"{stem}: top{' and panel' if panel.count() else ''}, {len(refused)} refused requests")
                context.close()
        browser.close()


if __name__ == "__main__":
    main()
