"""The API's /docs page in headless Chromium with the network blocked: Swagger UI draws every route."""

import pytest

from conftest import block_outside_requests, fail_on_outside
from diffusion_notes import pretrained
from diffusion_notes.practice.webui.api import create_api
from diffusion_notes.practice.webui.app import BackgroundServer
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState

pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")


def test_docs_draws_the_routes_offline(browser):
    from diffusion_notes.pretrained import stable_diffusion

    server = BackgroundServer(create_api(WebUIState(ModelRegistry(stable_diffusion("cpu"),
                                                                  pretrained.verify("ldm_unet")))))
    context = browser.new_context()
    outside = block_outside_requests(context)
    try:
        page = context.new_page()
        page.goto(server.url + "/docs", wait_until="load")
        page.wait_for_selector(".opblock-summary-path", timeout=60_000)  # Swagger UI has drawn the routes
        paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
        assert "/sdapi/v1/txt2img" in paths and "/sdapi/v1/progress" in paths and len(paths) > 30
    finally:
        context.close()
        server.close()
    fail_on_outside(outside)
