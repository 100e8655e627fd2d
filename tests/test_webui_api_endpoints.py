"""The web UI's routes that scripts call besides txt2img and img2img, its ControlNet extension's, and LoRA tags."""

import base64
import hashlib
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from diffusion_notes import pretrained
from diffusion_notes.data.captions import canonical_caption
from diffusion_notes.data.images import to_pil
from diffusion_notes.data.shapes import ShapesDataset, render
from diffusion_notes.practice.controlnet import preprocessors
from diffusion_notes.practice.controlnet.units import ControlledUNet, ControlUnit, soft_injection_scales
from diffusion_notes.practice.finetune.lora_files import save_lora
from diffusion_notes.practice.webui import infotext, interrogate, styles
from diffusion_notes.practice.webui.api import create_api
from diffusion_notes.practice.webui.api_scripts import axis_labels
from diffusion_notes.practice.webui.extra_networks import LoRALibrary, multipliers
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState

PROMPT = "a large orange heart on the left"


@pytest.fixture(scope="module")
def library(pipe, random_lora, tmp_path_factory):
    network = random_lora
    folder = tmp_path_factory.mktemp("Lora")
    save_lora(network, pipe.unet, folder / "copy.safetensors", "kohya")
    return LoRALibrary(pipe.unet, {"random": network}, folder)


@pytest.fixture(scope="module")
def state(pipe, library, tmp_path_factory):
    root = tmp_path_factory.mktemp("webui")
    return WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet")), root / "outputs", loras=library,
                      controlnets={"controlnet": pretrained.load("controlnet", "cpu")})


@pytest.fixture(scope="module")
def client(state):
    with TestClient(create_api(state)) as c:
        yield c


def png64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(b64) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def pixels(b64):
    return np.asarray(decode(b64).convert("RGB"), dtype=int)


def txt2img(client, **body):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 3, "seed": 5, **body})
    assert r.status_code == 200, r.text
    return r.json(), json.loads(r.json()["info"])


def test_scripts_and_their_arguments(client):
    """api.py's get_scripts_list / get_script_info; xyz_grid.py's axis_options order (txt2img: Hires steps at 5,
    CFG Scale at 6; img2img: CFG Scale at 5, Image CFG Scale at 6)."""
    scripts = client.get("/sdapi/v1/scripts").json()
    assert {"x/y/z plot", "controlnet m2m"} <= set(scripts["txt2img"]) and scripts["img2img"] == scripts["txt2img"]
    info = client.get("/sdapi/v1/script-info").json()
    xyz = [s for s in info if s["name"] == "x/y/z plot"]
    assert [s["is_img2img"] for s in xyz] == [False, True]
    assert [a["label"] for a in xyz[0]["args"]][:4] == ["x_type", "x_values", "x_values_dropdown", "y_type"]
    t2i, i2i = axis_labels(False), axis_labels(True)
    assert t2i[:7] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale"]
    assert i2i[4:8] == ["Steps", "CFG Scale", "Image CFG Scale", "Prompt S/R"]
    assert t2i[9] == "Sampler" and i2i[9] == "Sampler" and xyz[0]["args"][0]["choices"] == t2i


def test_the_lists_have_the_web_uis_item_shapes(client):
    """models.py's SchedulerItem, UpscalerItem, LatentUpscalerModeItem, SDVaeItem, MemoryResponse."""
    schedules = client.get("/sdapi/v1/schedulers").json()
    assert all(set(item) == {"name", "label", "aliases", "default_rho", "need_inner_model"} for item in schedules)
    labels = [item["label"] for item in schedules]  # sd_schedulers.py's list, in its order
    assert labels[:6] == ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform"]
    upscalers = client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest"]
    assert all(set(u) == {"name", "model_name", "model_path", "model_url", "scale"} for u in upscalers)
    modes = client.get("/sdapi/v1/latent-upscale-modes").json()
    assert all(set(m) == {"name"} for m in modes)
    assert [m["name"] for m in modes][:3] == ["Latent", "Latent (antialiased)", "Latent (bicubic)"]  # shared_items.py
    assert client.get("/sdapi/v1/sd-vae").json() == [] and client.get("/sdapi/v1/hypernetworks").json() == []
    memory = client.get("/sdapi/v1/memory").json()
    assert set(memory) == {"ram", "cuda"} and memory["ram"]["total"] >= memory["ram"]["used"] > 0
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["api"] is True and "ckpt_dir" in flags
    assert client.post("/sdapi/v1/refresh-embeddings").status_code == 200


def test_unload_and_reload_keep_the_pictures(client):
    before, _ = txt2img(client)
    assert client.post("/sdapi/v1/unload-checkpoint").json() == {}
    assert client.post("/sdapi/v1/reload-checkpoint").json() == {}
    after, _ = txt2img(client)
    assert np.array_equal(pixels(before["images"][0]), pixels(after["images"][0]))


def test_styles_apply_and_come_back_as_the_web_ui_does(client, state):
    """modules/styles.py: merge_prompts and extract_style_text_from_prompt (its docstring's examples)."""
    assert styles.merge("masterpiece, {prompt}", "1girl") == "masterpiece, 1girl"
    assert styles.merge("masterpiece", "1girl, art by greg") == "1girl, art by greg, masterpiece"
    assert styles.extract_text("masterpiece", "1girl, art by greg, masterpiece") == (True, "1girl, art by greg")
    assert styles.extract_text("masterpiece, {prompt}", "masterpiece, 1girl, art by greg") == \
        (True, "1girl, art by greg")
    assert styles.extract_text("masterpiece, {prompt}", "exquisite, 1girl, art by greg") == \
        (False, "exquisite, 1girl, art by greg")
    state.styles.path.write_text('name,prompt,negative_prompt\nbig,"a large {prompt}",blue\n'
                                 "# a comment,x,y\nleft,on the left,\n")
    assert client.get("/sdapi/v1/prompt-styles").json() == [
        {"name": "big", "prompt": "a large {prompt}", "negative_prompt": "blue"},
        {"name": "left", "prompt": "on the left", "negative_prompt": ""}]
    styled, info = txt2img(client, prompt="orange heart", styles=["big", "left", "nope"])
    assert info["prompt"] == "a large orange heart, on the left" and info["negative_prompt"] == "blue"
    assert "styles: 'nope' not in the styles file; they add nothing" in info["warnings"]
    typed, _ = txt2img(client, prompt="a large orange heart, on the left", negative_prompt="blue")
    assert np.array_equal(pixels(styled["images"][0]), pixels(typed["images"][0]))
    read = client.post("/sdapi/v1/png-info", json={"image": styled["images"][0]}).json()["parameters"]
    # StyleDatabase.extract_styles_from_prompt takes out the first style (in file order) that matches, then the
    # next, and returns them reversed: "big" ("a large {prompt}") matches first here, so ["left", "big"]
    assert (read["Prompt"], read["Negative prompt"], read["Styles array"]) == ("orange heart", "", ["left", "big"])
    again, info = txt2img(client, prompt=read["Prompt"], styles=read["Styles array"])
    assert info["prompt"] == "a large orange heart, on the left"


def test_extra_single_image_upscales_with_the_upscalers_we_have(client):
    """scripts/postprocessing_upscale.py and modules/upscaler.py: to (w, h) x scale rounded down to 8; mode 1 to a
    size, scaled by max(w / W, h / H) and cut to it."""
    image = to_pil(render([ShapesDataset("train", length=1, seed=0).attributes(0)]))[0]
    r = client.post("/sdapi/v1/extra-single-image", json={"image": png64(image), "upscaler_1": "Lanczos"})
    assert np.array_equal(np.asarray(decode(r.json()["image"])), np.asarray(image.resize((64, 64), Image.LANCZOS)))
    r = client.post("/sdapi/v1/extra-single-image", json={"image": png64(image), "upscaler_1": "Nearest",
                                                          "resize_mode": 1, "upscaling_resize_w": 48,
                                                          "upscaling_resize_h": 40})
    expected = np.asarray(image.resize((48, 48), Image.NEAREST))[4:44]
    assert np.array_equal(np.asarray(decode(r.json()["image"])), expected)
    r = client.post("/sdapi/v1/extra-batch-images", json={"imageList": [{"data": png64(image), "name": "a"}] * 2,
                                                          "upscaler_1": "Nearest", "upscaling_resize": 1.5})
    assert [decode(b).size for b in r.json()["images"]] == [(48, 48), (48, 48)]
    r = client.post("/sdapi/v1/extra-single-image", json={"image": png64(image), "upscaler_1": "R-ESRGAN 4x+"})
    assert r.status_code == 422 and "Lanczos" in r.json()["detail"]


def test_interrogate_names_what_clip_sees(client, state):
    """The caption is one of the Shapes captions; CLIP places every object and names most pictures whole."""
    dataset = ShapesDataset("train", length=200, seed=0, p_two_objects=0)
    items = [dataset.attributes(i) for i in range(20)]
    pictures = to_pil(render(items))
    clip = state.registry.pipeline()[0].clip
    words = [interrogate.words(clip, p) for p in pictures]
    assert all(w["position"][0] == a["objects"][0]["position"] for w, a in zip(words, items))
    assert sum(interrogate.interrogate(clip, p) == canonical_caption(a) for p, a in zip(pictures, items)) >= 5
    r = client.post("/sdapi/v1/interrogate", json={"image": png64(pictures[0]), "model": "clip"})
    assert r.json()["caption"] == interrogate.interrogate(clip, pictures[0])
    assert client.post("/sdapi/v1/interrogate", json={"image": png64(pictures[0]),
                                                      "model": "deepdanbooru"}).status_code == 422


def test_controlnet_routes(client):
    """The extension's scripts/api.py: version (external_code.get_api_version: 3), module_list with its details,
    control_types (global_state.select_control_type), detect."""
    assert client.get("/controlnet/version").json() == {"version": 3}
    modules = client.get("/controlnet/module_list").json()
    assert modules["module_list"] == ["none", "canny", "invert"]
    assert [s["name"] for s in modules["module_detail"]["canny"]["sliders"]] == ["Resolution", "Low Threshold",
                                                                                 "High Threshold"]
    labels = client.get("/controlnet/module_list", params={"alias_names": True}).json()["module_list"]
    assert labels[2] == "invert (from white bg & black line)"
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert types["Canny"]["default_option"] == "canny" and types["All"]["default_model"] == "None"
    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = 255
    r = client.post("/controlnet/detect", json={"controlnet_module": "invert",
                                                "controlnet_input_images": [png64(Image.fromarray(square))]})
    assert np.array_equal(np.asarray(decode(r.json()["images"][0])), 255 - square)
    r = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_processor_res": 64,
                                                "controlnet_input_images": [png64(Image.fromarray(square))]})
    edges = np.asarray(decode(r.json()["images"][0]))[:, :, 0] > 0
    ring = np.zeros((64, 64), bool)
    ring[14:50, 14:50], ring[18:46, 18:46] = True, False  # within two pixels of the square's border
    assert edges.sum() > 100 and not (edges & ~ring).any()
    assert client.post("/controlnet/detect", json={"controlnet_module": "hed",
                                                   "controlnet_input_images": ["x"]}).status_code == 422


def test_resize_modes_fit_a_map_as_the_extension_does():
    """controlnet.py's detectmap_proc: Just Resize stretches, Crop and Resize scales by max(h/H, w/W) and cuts the
    middle out, Resize and Fill scales by min and pads with the border's median colour."""
    wide = np.zeros((32, 64, 3), np.uint8)  # three colours: resized nearest
    wide[:, :21], wide[:, 21:43], wide[:, 43:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    assert np.array_equal(preprocessors.fit(wide, "Crop and Resize", 32, 32), wide[:, 16:48])
    filled = preprocessors.fit(wide, "Resize and Fill", 32, 32)
    assert np.array_equal(filled[8:24], np.asarray(Image.fromarray(wide).resize((32, 16), Image.NEAREST)))
    # the border's 192 pixels are 74 red, 44 green, 74 blue: each channel's median is 0
    assert (filled[:8] == 0).all() and (filled[24:] == 0).all()
    assert np.array_equal(preprocessors.fit(wide, 0, 32, 32),
                          np.asarray(Image.fromarray(wide).resize((32, 32), Image.NEAREST)))
    assert [preprocessors.resize_mode(v) for v in (0, 1, 2, 3, "Inner Fit (Scale to Fit)")] == \
        ["Just Resize", "Crop and Resize", "Resize and Fill", "Just Resize", "Crop and Resize"]
    picture = np.zeros((512, 768, 3), np.uint8)  # external_code.pixel_perfect_resolution
    assert preprocessors.pixel_perfect_resolution(picture, 32, 32, "Crop and Resize") == 32
    assert preprocessors.pixel_perfect_resolution(picture, 32, 32, "Resize and Fill") == 21


class _Net:
    """A ControlNet stand-in: residuals of ones, one per depth, so their scales can be read off."""

    class config:
        condition_size = 32

    def check_condition(self, c):
        return c

    def __call__(self, x, t, context, condition):
        return [torch.ones_like(x) for _ in range(3)], torch.ones_like(x)


class _UNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, context, down_residuals=None, mid_residual=None):
        self.seen = [r[:, 0, 0, 0] for r in down_residuals] + [mid_residual[:, 0, 0, 0]]
        return x


def test_control_modes_weight_the_residuals_as_the_extension_does():
    """hook.py: soft injection scales residual i of 13 by 0.825 ** (12 - i); "ControlNet is more important"
    (cfg_injection) multiplies the control by cond_mark, 0 on the negative prompt's rows."""
    assert soft_injection_scales(12) == pytest.approx([0.825 ** (12 - i) for i in range(13)])
    unet, x, t = _UNet(), torch.zeros(4, 4, 8, 8), torch.full((4,), 500.0)
    for mode, expected in (("Balanced", [[0.5] * 4] * 4),
                           ("My prompt is more important", [[0.5 * 0.825 ** (3 - k)] * 4 for k in range(4)]),
                           ("ControlNet is more important", [[0.5 * 0.825 ** (3 - k)] * 2 + [0, 0] for k in range(4)])):
        unit = ControlUnit(torch.zeros(1, 3, 32, 32), weight=0.5, net=_Net(), control_mode=mode)
        ControlledUNet(unet, [unit], [500.0], images=2)(x, t, torch.zeros(4, 77, 8))
        assert np.allclose([r.tolist() for r in unet.seen], expected), mode


def test_units_through_the_api_take_modules_modes_and_write_their_infotext(client):
    picture = to_pil(render([ShapesDataset("train", length=1, seed=0).attributes(0)]))[0].resize((128, 128))
    unit = {"image": png64(picture), "module": "canny", "model": "controlnet", "processor_res": 512,
            "threshold_a": 64, "threshold_b": 64}
    runs = {mode: txt2img(client, prompt="", alwayson_scripts={"controlnet": {"args": [{**unit,
                                                                                     "control_mode": mode}]}})
            for mode in (0, "My prompt is more important", 2)}
    plain, _ = txt2img(client, prompt="", alwayson_scripts={"controlnet": {"args": [unit]}})
    assert np.array_equal(pixels(runs[0][0]["images"][0]), pixels(plain["images"][0]))
    drawn = [pixels(body["images"][0]) for body, _ in runs.values()]
    assert not np.array_equal(drawn[0], drawn[1]) and not np.array_equal(drawn[1], drawn[2])
    body, info = runs[2]
    assert len(body["images"]) == 2 and decode(body["images"][1]).size == (32, 32)  # the canny map, fitted
    line = infotext.parse(info["infotexts"][0])["ControlNet 0"]
    assert line == ("Module: canny, Model: controlnet, Weight: 1.0, Resize Mode: Crop and Resize, "
                    "Processor Res: 512, Threshold A: 64.0, Threshold B: 64.0, Guidance Start: 0.0, "
                    "Guidance End: 1.0, Pixel Perfect: False, Control Mode: ControlNet is more important")
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "", "alwayson_scripts": {"controlnet": {"args": [
        {**unit, "control_mode": "Prompt first"}]}}})
    assert r.status_code == 422 and "control_mode" in r.json()["detail"]


def test_lora_tags_take_both_multipliers(client, library):
    """extensions-builtin/Lora/extra_networks_lora.py: te = positional[1] or te=, unet = positional[2] or unet=,
    else te; our LoRAs adapt the UNet only, so unet is what changes the picture."""
    assert multipliers("<lora:x>", []) == (1.0, 1.0) and multipliers("<lora:x:0.5>", ["0.5"]) == (0.5, 0.5)
    assert multipliers("t", ["1", "0.25"]) == (1.0, 0.25) and multipliers("t", ["te=2", "unet=0.5"]) == (2.0, 0.5)
    assert multipliers("t", ["0.3", "unet=0.7"]) == (0.3, 0.7)
    half = [pixels(txt2img(client, prompt=f"{PROMPT} <lora:random:{tag}>")[0]["images"][0])
            for tag in ("0.5", "1:0.5", "te=3:unet=0.5")]
    one = pixels(txt2img(client, prompt=f"{PROMPT} <lora:random:1>")[0]["images"][0])
    assert np.array_equal(half[0], half[1]) and np.array_equal(half[0], half[2]) and not np.array_equal(half[0], one)
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "<lora:random:1:1:8>", "steps": 1})
    assert r.status_code == 422 and "dyn" in r.json()["detail"]


def test_lora_hashes_are_the_web_uis_short_hashes(client, library):
    """modules/hashes.py's addnet_hash_safetensors: sha256 of a .safetensors file after its header; 12 digits."""
    raw = (library.folder / "copy.safetensors").read_bytes()
    expected = hashlib.sha256(raw[8 + int.from_bytes(raw[:8], "little"):]).hexdigest()[:12]
    assert library.shorthash("copy") == expected and library.shorthash("random") == expected
    _, info = txt2img(client, prompt=f"{PROMPT} <lora:random:0.5> <lora:copy:0.1>")
    assert infotext.parse(info["infotexts"][0])["Lora hashes"] == f"random: {expected}, copy: {expected}"
