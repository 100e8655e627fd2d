"""Light pages: every chapter's page (both editions), with all it fetches, within its gzipped budget, and no
failed request.

The budget is the one benchmarks/page_weight.py prints the table against: 1.5 MB gzipped for a
chapter with slider panels (their frames are stored in the page), 1 MB for any other page.
"""

import pytest

from conftest import HTML
from diffusion_book.page_weight import budget, page_weight

pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")

# both editions: the Chinese pages carry the same outputs and their own prose
PAGES = [f"{edition}{page}" for edition in ("", "zh/") for page in
         ["index.html", *sorted(f"book/{p.stem}.html" for p in (HTML.parents[1] / "book").glob("*.ipynb"))]]


@pytest.mark.parametrize("page_path", PAGES)
def test_page_stays_within_its_budget(page_path, browser, site_url):
    page_file = HTML / page_path
    if not page_file.exists():
        pytest.fail(f"{page_file} is missing: build the book first with `make book`", pytrace=False)
    weight = page_weight(browser, site_url + page_path)
    assert weight.failed == [], f"{page_path}: requests that failed: {weight.failed}"
    heaviest = sorted(weight.files.items(), key=lambda item: -item[1][1])[:3]
    assert weight.gzipped <= budget(page_file), (
        f"{page_path} weighs {weight.gzipped / 1e6:.2f} MB gzipped, over {budget(page_file) / 1e6:.1f} MB; "
        f"heaviest: {[(url.rsplit('/', 1)[-1], round(gz / 1e6, 2)) for url, (_, gz) in heaviest]}")
