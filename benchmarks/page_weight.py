"""Each page of the built book (`make book` first): what a reader's browser fetches, raw and gzipped.

    python benchmarks/page_weight.py [--html _build/html] [--edition zh]

Prints one line per page: what opening it fetches (MB raw, MB gzipped, files), the budget it is held to
by tests/browser/test_page_weight.py (1.5 MB gzipped for a chapter with slider panels, 1 MB otherwise),
what reading it to the end fetches (lazy pictures too), and the requests that failed.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

from diffusion_book.page_weight import budget, page_weight
from diffusion_book.screenshot import ARGS, find_chromium, serve_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", default="_build/html", type=Path)
    parser.add_argument("--edition", default="", help="zh: the Chinese edition's pages (under zh/)")
    args = parser.parse_args()
    root = args.html / args.edition
    pages = [root / "index.html", *sorted((root / "book").glob("*.html"))]

    with serve_folder(args.html) as base:
        run(args.html, pages, base)


def run(html: Path, pages: list, base: str) -> None:
    print(f"{'page':34s}{'MB':>7}{'MB gz':>8}{'budget':>8}{'files':>7}{'read all, MB gz':>17}  failed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium() or shutil.which("chromium"), args=ARGS)
        for page_file in pages:
            name = page_file.relative_to(html).as_posix()
            w = page_weight(browser, base + name)
            whole = page_weight(browser, base + name, scroll=True)
            print(f"{name:34s}{w.raw / 1e6:7.2f}{w.gzipped / 1e6:8.2f}{budget(page_file) / 1e6:8.1f}"
                  f"{len(w.files):7d}{whole.gzipped / 1e6:17.2f}  {len(w.failed)}")
        browser.close()


if __name__ == "__main__":
    main()
