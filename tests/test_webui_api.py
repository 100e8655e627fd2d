"""The web UI's HTTP API (the subset we serve) and the app's start-up with the network blocked."""

import base64
import dataclasses
import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from diffusion_notes import pretrained
from diffusion_notes.practice.webui import infotext
from diffusion_notes.practice.webui.api_models import ControlNetScript, Img2ImgRequest, Txt2ImgRequest
from diffusion_notes.practice.webui.app import create_app
from diffusion_notes.practice.webui.generate import Settings, check
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState
from diffusion_notes.run_files import load_checkpoint, save_checkpoint

PROMPT = "a small red circle on the left"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("Stable-diffusion")
    tensors, meta = load_checkpoint(pretrained.verify("ldm_unet"))
    save_checkpoint(folder / "zeroed.safetensors", {k: torch.zeros_like(v) for k, v in tensors.items()},
                    {"recipe": meta["recipe"], "config": meta["config"]})
    return folder


@pytest.fixture(scope="module")
def client(pipe, models_dir):
    state = WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet"), models_dir))
    with TestClient(create_app(state)) as c:
        yield c


def decode(b64):
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_txt2img_returns_the_pipelines_pixels(client, pipe):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 5, "cfg_scale": 4, "seed": 21,
                                               "sampler_name": "Euler a", "batch_size": 1, "n_iter": 2,
                                               "width": 32, "height": 32, "restore_faces": False})
    assert r.status_code == 200
    body = r.json()
    info = json.loads(body["info"])
    assert info["all_seeds"] == [21, 22] and len(body["images"]) == 2
    for i, b64 in enumerate(body["images"]):
        direct = pipe(PROMPT, num_inference_steps=5, guidance_scale=4.0, sampler="Euler a", output_type="pil",
                      generator=torch.Generator().manual_seed(21 + i)).images[0]
        image = decode(b64)
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(direct))
        assert image.text["parameters"] == info["infotexts"][i]


def test_png_info_round_trip(client):
    request = {"prompt": "a (large:1.2) blue square, top", "negative_prompt": "red", "steps": 3, "cfg_scale": 6.5,
               "seed": 5, "subseed": 9, "subseed_strength": 0.3, "sampler_name": "DDIM"}
    image = client.post("/sdapi/v1/txt2img", json=request).json()["images"][0]
    r = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + image})
    fields = infotext.to_settings(r.json()["parameters"])
    assert {k: fields[k] for k in request} == request
    assert fields["sd_model_name"] == "ldm_unet"


def test_img2img_with_a_mask(client):
    source = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 3, "seed": 1}).json()["images"][0]
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="png")
    r = client.post("/sdapi/v1/img2img", json={"prompt": "a large green star", "init_images": [source], "steps": 6,
                                               "denoising_strength": 0.8, "seed": 2,
                                               "mask": base64.b64encode(buffer.getvalue()).decode()})
    assert r.status_code == 200
    out = np.asarray(decode(r.json()["images"][0]).convert("RGB"), dtype=int)
    src = np.asarray(decode(source).convert("RGB"), dtype=int)
    assert np.abs(out[:, :16] - src[:, :16]).max() <= 2
    assert "Denoising strength: 0.8" in json.loads(r.json()["info"])["infotexts"][0]


BAD = [
    ({"steps": 0}, 422, "steps"), ({"cfg_scale": -1}, 422, "cfg_scale"), ({"sampler_name": "PLMS"}, 422, "sampler"),
    ({"prompt": "(a:1.2.3)"}, 422, "emphasis"), ({"batch_size": 10000}, 422, "batch_size"),
    ({"override_settings": {"sd_model_checkpoint": "nope"}}, 422, "unknown checkpoint"),
    ({"width": 512, "height": 500}, 422, "multiple of 8"), ({"steps": "many"}, 422, "steps"),
]


@pytest.mark.parametrize("change, status, message", BAD)
def test_bad_input_is_a_4xx_json_error(client, change, status, message):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 2, **change})
    assert r.status_code == status and message in r.json()["detail"]


def test_a_field_of_the_wrong_type_gets_the_same_answer_as_before(client):
    """A value the web UI's models cannot read is the same 422 as generate.check gives, in the web UI's error body
    (modules/api/api.py, api_middleware's handle_exception: error, detail, body, errors); a value they coerce
    ("2" for an int, "7" for a float) is read as they read it."""
    for field, value in (("steps", "many"), ("steps", 2.5), ("prompt", 5)):
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 2, field: value})
        with pytest.raises(ValueError) as checked:
            check(Settings(**{"prompt": "a", "steps": 2, field: value}))
        detail = str(checked.value)
        assert r.status_code == 422 and r.json() == {"error": "ValueError", "detail": detail, "body": "",
                                                     "errors": detail}, field
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": "2", "cfg_scale": "7", "seed": "3"})
    assert r.status_code == 200 and (r.json()["parameters"]["steps"], r.json()["parameters"]["cfg_scale"]) == (2, 7.0)
    r = client.post("/sdapi/v1/img2img", json={"prompt": "a", "init_images": "not a list"})
    assert r.status_code == 400 and "init_images must be a list of base64 images" in r.json()["detail"]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "override_settings": [1]})
    assert r.status_code == 400 and "override_settings must be a JSON object" in r.json()["detail"]


def test_the_request_models_take_settings_fields_and_an_int_for_a_float():
    request = Txt2ImgRequest.model_validate({"prompt": "a", "cfg_scale": 7, "subseed_strength": 1, "seed": None,
                                             "sampler_index": "Euler a", "restore_faces": True, "alwayson_scripts":
                                             {"controlnet": {"args": [{"image": "x", "weight": 1}]}}})
    values = request.values()
    assert values == {"prompt": "a", "cfg_scale": 7.0, "subseed_strength": 1.0, "sampler_name": "Euler a"}
    assert type(values["cfg_scale"]) is float and type(values["subseed_strength"]) is float
    assert type(ControlNetScript.model_validate(request.alwayson_scripts["controlnet"]).args[0].weight) is float
    settings = {f.name for f in dataclasses.fields(Settings)} - {"init_image", "init_images", "mask", "controlnet",
                                                                "extra_generation_params"}
    assert settings <= set(Txt2ImgRequest.model_fields) and Txt2ImgRequest().cfg_scale == Settings().cfg_scale
    assert Img2ImgRequest.model_validate({"init_images": ["x"], "denoising_strength": 1}).denoising_strength == 1.0


def test_info_names_the_model_that_drew_the_images(client):
    models = client.get("/sdapi/v1/sd-models").json()
    for model in models:
        body = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1,
                                                      "override_settings": {"sd_model_checkpoint": model["title"]}})
        info = json.loads(body.json()["info"])
        assert (info["sd_model_name"], info["sd_model_hash"]) == (model["model_name"], model["hash"])
        assert f"Model hash: {model['hash']}, Model: {model['model_name']}" in info["infotexts"][0]


def test_bad_bodies_and_images_then_the_server_keeps_serving(client):
    assert client.post("/sdapi/v1/txt2img", content=b"{not json").status_code == 400
    assert client.post("/sdapi/v1/txt2img", json=[1, 2]).status_code == 400
    not_image = base64.b64encode(b"GIF89a but not really").decode()
    r = client.post("/sdapi/v1/img2img", json={"prompt": "a", "init_images": [not_image]})
    assert r.status_code == 422 and "not an image" in r.json()["detail"]
    assert client.post("/sdapi/v1/img2img", json={"prompt": "a", "init_images": ["%%%"]}).status_code == 400
    assert client.post("/sdapi/v1/img2img", json={"prompt": "a"}).status_code == 400
    assert client.post("/sdapi/v1/png-info", json={"image": not_image}).status_code == 422
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1}).status_code == 200


def test_models_samplers_and_options(client):
    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["ldm_unet", "zeroed"]
    assert all(len(m["hash"]) == 10 and m["title"].endswith(f"[{m['hash']}]") for m in models)
    names = [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert {"Euler a", "DPM++ 2M", "DDIM"} <= set(names)
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == models[0]["title"]
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "zeroed", "unknown_option": 1})
    assert r.status_code == 200 and r.json()["ignored"] == ["unknown_option"]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == models[1]["title"]
    info = json.loads(client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1}).json()["info"])
    assert info["sd_model_hash"] == models[1]["hash"]
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"}).status_code == 422
    client.post("/sdapi/v1/options", json={"sd_model_checkpoint": models[0]["title"]})


STARTUP = textwrap.dedent("""
    import socket, sys, urllib.request
    attempts = []
    _connect = socket.socket.connect
    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost") and not str(host).startswith("/"):
            attempts.append(str(address))
            raise OSError("network blocked by the test")
        return _connect(self, address)
    socket.socket.connect = connect
    import torch
    torch.set_num_threads(1)
    from diffusion_notes import pretrained
    from diffusion_notes.practice.webui.app import BackgroundServer, create_app
    from diffusion_notes.practice.webui.models import ModelRegistry
    from diffusion_notes.practice.webui.state import WebUIState
    registry = ModelRegistry(pretrained.load("stable_diffusion", device="cpu"), pretrained.verify("ldm_unet"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    server = BackgroundServer(create_app(WebUIState(registry)), port=port)
    page = urllib.request.urlopen(server.url + "/", timeout=30).read().decode()
    config = urllib.request.urlopen(server.url + "/config", timeout=30).read().decode()
    models = urllib.request.urlopen(server.url + "/sdapi/v1/sd-models", timeout=30).read().decode()
    theme = urllib.request.urlopen(server.url + "/theme.css", timeout=30).read().decode()
    server.close()
    outside = [u for u in ("fonts.googleapis", "fonts.gstatic", "@import", "url(http", "url('http") if u in theme]
    print("PAGE", "<html" in page and "txt2img" in config and "diffusion_notes" in config, outside, "ldm_unet" in models)
    print("ATTEMPTS", attempts)
""")


@pytest.mark.slow
def test_the_app_starts_with_the_network_blocked():
    run = subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": "/nonexistent"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "PAGE True [] True" in run.stdout, run.stdout
    assert "ATTEMPTS []" in run.stdout, run.stdout


@pytest.mark.slow
def test_create_api_serves_the_api_without_the_pages_or_gradio(pipe, models_dir):
    code = textwrap.dedent("""
        import sys
        from diffusion_notes.practice.webui import api
        print("gradio" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # the API module alone does not pull in Gradio

    from diffusion_notes.practice.webui.api import create_api

    state = WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet"), models_dir))
    with TestClient(create_api(state)) as c:
        assert c.get("/sdapi/v1/samplers").status_code == 200
        assert c.get("/").status_code == 404  # no pages
        body = c.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 3, "seed": 5}).json()
    with TestClient(create_app(state)) as c:
        assert c.get("/").status_code == 200
        assert c.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 3, "seed": 5}).json()["images"] == body["images"]
