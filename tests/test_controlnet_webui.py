"""ControlNet through the web UI's HTTP API (alwayson_scripts.controlnet, as the extension takes it) and its panel."""

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from diffusion_notes import pretrained
from diffusion_notes.data.images import to_pil
from diffusion_notes.data.shapes import sample_attributes
from diffusion_notes.practice.controlnet.conditions import make_condition
from diffusion_notes.practice.controlnet.model import ControlNet
from diffusion_notes.practice.webui.app import create_app
from diffusion_notes.practice.webui.controlnet_panel import unit_from_panel
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState

PROMPT = "a large red star"


def png64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def client(pipe, tmp_path_factory):
    fresh = ControlNet.from_unet(pipe.unet).eval()
    torch.manual_seed(0)
    moved = ControlNet.from_unet(pipe.unet).eval()
    with torch.no_grad():
        for conv in [*moved.zero_convs, moved.mid_out, moved.cond_embedding.conv_out]:
            conv.weight.normal_(0, 0.05)
    state = WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet"), tmp_path_factory.mktemp("models")),
                       controlnets={"fresh": fresh, "moved": moved})
    with TestClient(create_app(state)) as c:
        yield c


@pytest.fixture(scope="module")
def outline():
    return png64(to_pil(make_condition([sample_attributes(4, seed=2)], "outline"))[0])


def txt2img(client, outline, **unit):
    body = {"prompt": PROMPT, "steps": 4, "cfg_scale": 4, "seed": 3}
    if unit:
        body["alwayson_scripts"] = {"controlnet": {"args": [{"image": outline, **unit}]}}
    return client.post("/sdapi/v1/txt2img", json=body)


def pixels(response):
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).convert("RGB"))


def test_model_list(client):
    assert client.get("/controlnet/model_list").json() == {"model_list": ["fresh", "moved"]}


def test_alwayson_controlnet_steers_txt2img(client, outline):
    plain = pixels(txt2img(client, outline))
    assert np.array_equal(pixels(txt2img(client, outline, model="fresh", weight=1.0)), plain)  # zero start
    steered = pixels(txt2img(client, outline, model="moved", weight=1.0, guidance_start=0.0, guidance_end=1.0))
    assert np.abs(steered.astype(int) - plain).max() > 0
    assert np.array_equal(pixels(txt2img(client, outline, model="moved", weight=0)), plain)
    assert np.array_equal(pixels(txt2img(client, outline, model="moved", enabled=False)), plain)
    late = pixels(txt2img(client, outline, model="moved", guidance_start=0.5, guidance_end=1.0))
    assert not np.array_equal(late, steered)
    parameters = txt2img(client, outline, model="moved", weight=0.5).json()["parameters"]
    assert parameters["controlnet"] == [{"model": "moved", "weight": 0.5, "guidance_start": 0.0, "guidance_end": 1.0}]


def test_alwayson_controlnet_in_img2img(client, outline):
    source = txt2img(client, outline).json()["images"][0]
    r = client.post("/sdapi/v1/img2img", json={
        "prompt": PROMPT, "init_images": [source], "steps": 4, "denoising_strength": 0.6, "seed": 1,
        "alwayson_scripts": {"controlnet": {"args": [{"image": outline, "model": "moved"}]}}})
    assert r.status_code == 200 and len(r.json()["images"]) == 2  # the picture, then the unit's map (the extension's)


@pytest.mark.parametrize("unit, message", [
    (dict(model="moved", weight=-1), "controlnet_conditioning_scale must be >= 0"),
    (dict(model="moved", guidance_start=0.7, guidance_end=0.3), "start < end"),
    (dict(model="nope"), "unknown ControlNet model 'nope'"),
    (dict(model="moved", module="hed"), "unknown ControlNet preprocessor (module) 'hed'"),
])
def test_bad_units_get_422(client, outline, unit, message):
    r = txt2img(client, outline, **unit)
    assert r.status_code == 422 and message in r.json()["detail"]


def test_any_size_is_resized_and_a_bad_shape_is_a_400(client):
    big = png64(Image.new("RGB", (64, 48)))
    r = txt2img(client, big, model="moved")
    assert r.status_code == 200 and Image.open(io.BytesIO(base64.b64decode(r.json()["images"][1]))).size == (32, 32)
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "alwayson_scripts": {"controlnet": [1, 2]}})
    assert r.status_code == 400 and "args" in r.json()["detail"]


def test_panel_values_make_a_unit():
    assert unit_from_panel(False, None, None, "moved", 1, 0, 1) is None
    drawing = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    drawing.paste((255, 255, 255, 255), (64, 64, 192, 192))
    unit = unit_from_panel(True, None, {"background": None, "layers": [], "composite": drawing}, "moved", 0.8, 0.1, 0.9)
    array = np.asarray(unit.image)
    assert unit.image.size == (32, 32) and array[16, 16, 0] == 255 and array[0, 0, 0] == 0
    assert (unit.model, unit.weight, unit.guidance_start, unit.guidance_end) == ("moved", 0.8, 0.1, 0.9)
    with pytest.raises(ValueError, match="no condition image"):
        unit_from_panel(True, None, None, "moved", 1, 0, 1)


def test_the_shipped_controlnet_places_an_unplaced_caption_at_the_outline(pipe, tmp_path):
    """The extension's API shape (alwayson_scripts.controlnet.args, module "none"), a caption that names no
    position: the drawn object lands where the outline is, and without the unit it does not."""
    from diffusion_notes.practice.controlnet.conditions import drawn_region, iou
    from diffusion_notes.practice.controlnet.evaluate import eval_set

    if "controlnet" not in pretrained.available():
        pytest.skip("no shipped ControlNet")
    state = WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet"), tmp_path),
                       controlnets={"controlnet": pretrained.load("controlnet", "cpu")})
    items = eval_set(4, "outline", "none", "offgrid")  # anywhere on the canvas, not only in the nine cells
    scores = {True: [], False: []}
    with TestClient(create_app(state)) as c:
        for k, (caption, condition) in enumerate(zip(items["captions"], items["condition"])):
            for with_unit in (True, False):
                body = {"prompt": caption, "steps": 10, "cfg_scale": 4, "seed": k}
                if with_unit:
                    unit = {"image": png64(to_pil(condition[None])[0]), "model": "controlnet", "module": "none"}
                    body["alwayson_scripts"] = {"controlnet": {"args": [unit]}}
                picture = torch.from_numpy(pixels(c.post("/sdapi/v1/txt2img", json=body)).copy()).permute(2, 0, 1)
                scores[with_unit].append(float(iou(drawn_region(picture[None] / 255.0), items["region"][k:k + 1])))
    mean = {k: sum(v) / len(v) for k, v in scores.items()}  # without the unit the place is chance's
    assert min(scores[True]) > 0.5 and mean[True] > 0.65 and mean[False] < 0.3, scores
