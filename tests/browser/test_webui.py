"""The web UI in headless Chromium: the page loads with every outside request aborted, a prompt generates an image."""

import socket

import pytest


def find_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def webui_url(tmp_path_factory):
    import torch

    from diffusion_notes import pretrained
    from diffusion_notes.practice.webui.app import BackgroundServer, create_app
    from diffusion_notes.practice.webui.models import ModelRegistry
    from diffusion_notes.practice.webui.state import WebUIState

    torch.set_num_threads(1)
    registry = ModelRegistry(pretrained.load("stable_diffusion", device="cpu"), pretrained.verify("ldm_unet"),
                             tmp_path_factory.mktemp("models"))
    server = BackgroundServer(create_app(WebUIState(registry, tmp_path_factory.mktemp("outputs"))),
                              port=find_free_port())
    yield server.url
    server.close()


def test_prompt_generate_and_see_an_image(offline_page, webui_url):
    page = offline_page
    page.goto(webui_url + "/")
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    page.fill("#txt2img_prompt textarea", "a large green star in the center")
    page.fill("#txt2img_seed input", "3")
    page.click("#txt2img_generate")
    image = page.wait_for_selector("#txt2img_gallery img", timeout=60_000)
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=image, timeout=30_000)
    assert image.evaluate("el => el.naturalWidth") == 32
    info = page.input_value("#txt2img_info textarea")
    assert info.startswith("a large green star in the center\n") and "Seed: 3," in info
    fonts = page.evaluate("getComputedStyle(document.querySelector('#txt2img_info textarea')).fontFamily")
    assert "system-ui" in fonts


def test_a_bad_setting_shows_a_message(offline_page, webui_url):
    page = offline_page
    page.goto(webui_url + "/")
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    page.fill("#txt2img_prompt textarea", "a (red:1.2.3) circle")
    page.click("#txt2img_generate")
    page.wait_for_selector("text=malformed emphasis", timeout=30_000)
