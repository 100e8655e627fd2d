"""A script written for the web UI, run unmodified: the `webuiapi` client (the A1111 client scripts use) and raw
HTTP against the app served by uvicorn, as a user runs it."""

import base64
import io

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from diffusion_notes import pretrained
from diffusion_notes.data.images import to_pil
from diffusion_notes.data.shapes import ShapesDataset, render
from diffusion_notes.practice.controlnet.conditions import make_condition
from diffusion_notes.practice.webui.app import BackgroundServer, create_app
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState

SMALL = {"width": 32, "height": 32}  # the size the model draws until it draws others
ITEM = ShapesDataset("train", length=1, seed=0).attributes(0)


@pytest.fixture(scope="module")
def server(pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("webui")
    state = WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet")), root / "outputs",
                       controlnets={"controlnet": pretrained.load("controlnet", "cpu")})
    server = BackgroundServer(create_app(state))
    yield server, state
    server.close()


@pytest.fixture(scope="module")
def api(server):
    host, port = server[0].url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port))


def pixels(image):
    return np.asarray(image.convert("RGB"), dtype=int)


def test_the_client_finds_the_scripts_and_the_controlnet_extension(api):
    """webuiapi's check_extensions reads /sdapi/v1/scripts and looks for "controlnet m2m"."""
    assert api.has_controlnet
    assert api.controlnet_version() == 3 and "canny" in api.controlnet_module_list()
    assert api.controlnet_model_list() == ["controlnet"]
    names = api.util_get_scheduler_names()  # sd_schedulers.py's twelve, as the client lists them
    assert len(names) == 12 and {"automatic", "karras", "exponential", "sgm_uniform"} <= set(names)
    assert "Lanczos" in [u["name"] for u in api.get_upscalers()]
    assert isinstance(api.get_memory()["ram"], dict) and api.get_cmd_flags()["api"] is True
    assert api.get_sd_vae() == [] and api.get_face_restorers() == []


@pytest.mark.slow
def test_txt2img_and_img2img_at_the_clients_defaults(api):
    """The client's default size, 512x512, as a script that leaves it alone sends it (2 steps: 20 at 512 take
    minutes on a CPU; benchmarks/webui_sizes.py times them)."""
    result = api.txt2img(prompt="a small red circle", seed=1, steps=2)
    assert result.image.size == (512, 512)
    again = api.img2img(images=[result.image], prompt="a small blue circle", seed=2, steps=2)
    assert again.image.size == (512, 512)


def test_txt2img_and_img2img_through_the_client_and_raw_http(api, server):
    """The client's other defaults (Euler a, 20 steps, cfg 7, its scheduler and eta) at 32x32; the same job posted
    as raw JSON draws the same PNG."""
    result = api.txt2img(prompt="a small red circle on the left", seed=1, **SMALL)
    assert result.image.size == (32, 32) and result.info["all_seeds"] == [1]
    assert result.info["sampler_name"] == "Euler a" and result.parameters["cfg_scale"] == 7.0
    raw = requests.post(f"{server[0].url}/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "a small red circle on the left", "seed": 1, "sampler_name": "Euler a", "steps": 20,
        "cfg_scale": 7, **SMALL}).json()
    assert np.array_equal(pixels(Image.open(io.BytesIO(base64.b64decode(raw["images"][0])))), pixels(result.image))
    edited = api.img2img(images=[result.image], prompt="a small blue circle on the left", seed=2,
                         denoising_strength=0.6, **SMALL)
    assert edited.image.size == (32, 32) and "Denoising strength: 0.6" in edited.info["infotexts"][0]


def test_controlnet_units_do_not_carry_over_to_later_calls(api):
    """webuiapi shares one alwayson_scripts dict between calls; it resets the ControlNet entry only when the server
    lists "controlnet m2m", so every later call would be steered by the last unit without it."""
    condition = to_pil(make_condition([ITEM], "outline"))[0]
    job = {"prompt": "", "seed": 3, "steps": 8, **SMALL}
    plain = api.txt2img(**job)
    unit = webuiapi.ControlNetUnit(image=condition, model="controlnet", module="none", resize_mode="Just Resize")
    steered = api.txt2img(controlnet_units=[unit], **job)
    after = api.txt2img(**job)
    assert len(steered.images) == 2 and steered.images[1].size == (32, 32)  # the picture, then the unit's map
    assert not np.array_equal(pixels(steered.image), pixels(plain.image))
    assert np.array_equal(pixels(after.image), pixels(plain.image))
    edited = api.img2img(images=[plain.image], controlnet_units=[unit], denoising_strength=0.8, **job)
    again = api.img2img(images=[plain.image], denoising_strength=0.8, **job)
    assert len(edited.images) == 2 and len(again.images) == 1


def test_styles_round_trip(api, server):
    """A styles.csv applied by name; PNG Info gives the prompt back without it and the style's name."""
    server[1].styles.path.write_text('name,prompt,negative_prompt\nleft corner,"{prompt} in the top left",blue\n')
    assert api.get_prompt_styles() == [{"name": "left corner", "prompt": "{prompt} in the top left",
                                        "negative_prompt": "blue"}]
    styled = api.txt2img(prompt="a large red square", styles=["left corner"], seed=4, steps=8, **SMALL)
    typed = api.txt2img(prompt="a large red square in the top left", negative_prompt="blue", seed=4, steps=8, **SMALL)
    assert styled.info["prompt"] == "a large red square in the top left" and styled.info["styles"] == ["left corner"]
    assert np.array_equal(pixels(styled.image), pixels(typed.image))
    read = api.png_info(styled.image).parameters
    assert (read["Prompt"], read["Styles array"]) == ("a large red square", ["left corner"])


def test_png_info_redraws_through_the_infotext_field(api):
    """web UI >= 1.8: a request's infotext fills the fields it leaves out, so PNG Info's text redraws the picture."""
    first = api.txt2img(prompt="a small green star in the center", seed=9, steps=6, cfg_scale=5, **SMALL)
    text = api.png_info(first.image).info
    redrawn = api.custom_post("txt2img", {"infotext": text}, baseurl=True)
    assert np.array_equal(pixels(redrawn.image), pixels(first.image))


def test_interrogate_and_upscale_through_the_client(api):
    """webuiapi's interrogate (the caption lands in result.info) and extra_single_image (result.image)."""
    picture = to_pil(render([ITEM]))[0]
    caption = api.interrogate(picture).info
    assert isinstance(caption, str) and caption.startswith("a ")
    bigger = api.extra_single_image(picture, upscaler_1="Lanczos", upscaling_resize=2)
    assert bigger.image.size == (64, 64)
