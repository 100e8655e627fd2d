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
    models = tmp_path_factory.mktemp("models")
    shipped = pretrained.verify("ldm_unet")
    (models / "copy.safetensors").write_bytes(shipped.read_bytes())  # a second checkpoint the API can choose
    registry = ModelRegistry(pretrained.load("stable_diffusion", device="cpu"), shipped, models)
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


def _open(page, url):
    page.goto(url + "/")
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)


def _generate(page, prompt: str, seed: str):
    page.fill("#txt2img_prompt textarea", prompt)
    page.fill("#txt2img_seed input", seed)
    page.click("#txt2img_generate")


def test_an_error_keeps_the_last_pictures_and_says_why_under_them(offline_page, webui_url):
    page = offline_page
    _open(page, webui_url)
    _generate(page, "a large green star in the center", "3")
    page.wait_for_selector("#txt2img_gallery img", timeout=60_000)
    info = page.input_value("#txt2img_info textarea")
    _generate(page, "a (red:1.2.3) circle", "3")
    page.wait_for_selector("#txt2img_note >> text=malformed emphasis", timeout=30_000)
    assert page.query_selector("#txt2img_gallery img") is not None  # the last picture stays
    assert page.input_value("#txt2img_info textarea") == info


def test_the_seed_buttons_and_a_note_for_a_word_the_model_never_saw(offline_page, webui_url):
    page = offline_page
    _open(page, webui_url)
    _generate(page, "a pink circle on the left", "-1")
    page.wait_for_selector("#txt2img_note >> text=never saw in training", timeout=60_000)
    seed = page.input_value("#txt2img_info textarea").split("Seed: ")[1].split(",")[0]
    page.click("#txt2img_reuse_seed")
    page.wait_for_function(f"() => document.querySelector('#txt2img_seed input').value === '{seed}'", timeout=10_000)
    page.click("#txt2img_random_seed")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '-1'", timeout=10_000)


def test_send_to_img2img_carries_the_picture_and_its_parameters(offline_page, webui_url):
    page = offline_page
    _open(page, webui_url)
    _generate(page, "a small blue square at the top", "5")
    page.wait_for_selector("#txt2img_gallery img", timeout=60_000)
    page.click("#txt2img_send_to_img2img")
    page.wait_for_selector("#img2img_prompt textarea", timeout=30_000)
    page.wait_for_function("() => document.querySelector('#img2img_prompt textarea').value === "
                           "'a small blue square at the top'", timeout=10_000)
    assert page.input_value("#img2img_seed input") == "5"
    image = page.wait_for_selector(".dn-input img", state="visible", timeout=10_000)
    box = image.bounding_box()
    assert box["width"] >= 150 and box["height"] >= 150  # 32x32 pixels, drawn large


def test_the_checkpoint_dropdown_shows_the_model_the_api_chose(offline_page, webui_url):
    import requests

    page = offline_page
    models = requests.get(webui_url + "/sdapi/v1/sd-models", timeout=30).json()
    assert len(models) == 2
    requests.post(webui_url + "/sdapi/v1/options", json={"sd_model_checkpoint": models[1]["title"]}, timeout=60)
    try:
        _open(page, webui_url)
        page.wait_for_function("title => document.querySelector('#sd_model_checkpoint input').value === title",
                               arg=models[1]["title"], timeout=30_000)
    finally:
        requests.post(webui_url + "/sdapi/v1/options", json={"sd_model_checkpoint": models[0]["title"]}, timeout=60)


def test_a_progress_bar_and_interrupt(offline_page, webui_url):
    """The web UI's Interrupt: the running batch returns its last x0 prediction, the batches after it never run."""
    page = offline_page
    _open(page, webui_url)
    page.fill("#txt2img_prompt textarea", "a large red circle")
    page.evaluate("""() => {  // the longest job: 150 steps, 8 images a batch, 5 batches
        for (const [label, value] of [["Sampling steps", 150], ["Batch count", 5], ["Batch size", 8]]) {
            const box = [...document.querySelectorAll('input[type=number]')].find(
                el => el.closest('.block')?.innerText.includes(label) && el.closest('#component-0, .gradio-container'));
            box.value = value; box.dispatchEvent(new Event('input', {bubbles: true}));
            box.dispatchEvent(new Event('change', {bubbles: true}));
        }
    }""")
    page.click("#txt2img_generate")
    page.wait_for_selector("text=/batch 1 of 5, step \\d+ of 150/", timeout=60_000)  # the progress bar's text
    page.click("#txt2img_interrupt")
    page.wait_for_selector("#txt2img_gallery img", timeout=120_000)
    page.wait_for_timeout(500)
    assert len(page.query_selector_all("#txt2img_gallery img")) == 8  # the first batch, stopped; no other batch


def test_the_localization_labels_the_controls_in_chinese(offline_page, tmp_path_factory):
    """`webui --localization zh_CN`: the page's labels and buttons are Chinese, a chapter note kept."""
    from diffusion_notes import pretrained
    from diffusion_notes.practice.webui.app import BackgroundServer, create_app
    from diffusion_notes.practice.webui.models import ModelRegistry
    from diffusion_notes.practice.webui.state import WebUIState

    registry = ModelRegistry(pretrained.load("stable_diffusion", device="cpu"), pretrained.verify("ldm_unet"),
                             tmp_path_factory.mktemp("models-zh"))
    server = BackgroundServer(create_app(WebUIState(registry, None), localization="zh_CN"), port=find_free_port())
    try:
        page = offline_page
        page.goto(server.url + "/")
        page.wait_for_selector("#txt2img_generate >> text=生成", timeout=60_000)
        page.wait_for_selector("text=采样方法（第 2 章）", timeout=30_000)
        page.wait_for_selector("button[role=tab] >> text=图生图", timeout=30_000)
        assert page.locator("text=Sampling method").count() == 0
    finally:
        server.close()
