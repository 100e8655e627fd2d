"""The API's contract with scripts written for the web UI: every field of its requests, read as it reads them.

The web UI's request fields are written out below from its modules/processing.py (v1.10: the
dataclass fields of StableDiffusionProcessing, StableDiffusionProcessingTxt2Img and
StableDiffusionProcessingImg2Img that __init__ takes, less modules/api/models.py's API_NOT_ALLOWED)
and the extra fields models.py adds to StableDiffusionTxt2ImgProcessingAPI and
StableDiffusionImg2ImgProcessingAPI, each with its type and default.
"""

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from diffusion_notes import pretrained
from diffusion_notes.practice.webui import api_requests, infotext
from diffusion_notes.practice.webui.api import create_api
from diffusion_notes.practice.webui.api_models import (
    A1111_FIELDS,
    OFF,
    OUR_DEFAULTS,
    Img2ImgRequest,
    Txt2ImgRequest,
)
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState

# StableDiffusionProcessing's fields (processing.py), less API_NOT_ALLOWED: name -> (type, default)
BASE = {
    "prompt": (str, ""), "negative_prompt": (str, ""), "styles": (list, None), "seed": (int, -1),
    "subseed": (int, -1), "subseed_strength": (float, 0), "seed_resize_from_h": (int, -1),
    "seed_resize_from_w": (int, -1), "sampler_name": (str, None), "scheduler": (str, None), "batch_size": (int, 1),
    "n_iter": (int, 1), "steps": (int, 50), "cfg_scale": (float, 7.0), "width": (int, 512), "height": (int, 512),
    "restore_faces": (bool, None), "tiling": (bool, None), "do_not_save_samples": (bool, False),
    "do_not_save_grid": (bool, False), "eta": (float, None), "denoising_strength": (float, None),
    "s_min_uncond": (float, None), "s_churn": (float, None), "s_tmax": (float, None), "s_tmin": (float, None),
    "s_noise": (float, None), "override_settings": (dict, None), "override_settings_restore_afterwards": (bool, True),
    "refiner_checkpoint": (str, None), "refiner_switch_at": (float, None), "disable_extra_networks": (bool, False),
    "firstpass_image": (str, None), "comments": (dict, None),
}
# models.py's additional_fields, the same for both requests (sampler_index's default is "Euler")
EXTRA = {"sampler_index": (str, "Euler"), "script_name": (str, None), "script_args": (list, []),
         "send_images": (bool, True), "save_images": (bool, False), "alwayson_scripts": (dict, {}),
         "force_task_id": (str, None), "infotext": (str, None)}
TXT2IMG = {**BASE, "enable_hr": (bool, False), "denoising_strength": (float, 0.75), "firstphase_width": (int, 0),
           "firstphase_height": (int, 0), "hr_scale": (float, 2.0), "hr_upscaler": (str, None),
           "hr_second_pass_steps": (int, 0), "hr_resize_x": (int, 0), "hr_resize_y": (int, 0),
           "hr_checkpoint_name": (str, None), "hr_sampler_name": (str, None), "hr_scheduler": (str, None),
           "hr_prompt": (str, ""), "hr_negative_prompt": (str, ""), **EXTRA}
IMG2IMG = {**BASE, "init_images": (list, None), "resize_mode": (int, 0), "denoising_strength": (float, 0.75),
           "image_cfg_scale": (float, None), "mask": (str, None), "mask_blur_x": (int, 4), "mask_blur_y": (int, 4),
           "mask_blur": (int, None), "mask_round": (bool, True), "inpainting_fill": (int, 0),
           "inpaint_full_res": (bool, True), "inpaint_full_res_padding": (int, 0), "inpainting_mask_invert": (int, 0),
           "initial_noise_multiplier": (float, None), "latent_mask": (str, None),
           "include_init_images": (bool, False), **EXTRA}
# a value of each type as a script may send it, and what the web UI's pydantic model makes of it
SAMPLES = {int: ("1", 1), float: ("7", 7.0), bool: ("true", True), str: ("x", "x"), list: ([], []), dict: ({}, {})}


@pytest.fixture(scope="module")
def state(pipe, tmp_path_factory):
    return WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet")), tmp_path_factory.mktemp("outputs"))


@pytest.fixture(scope="module")
def client(state):
    with TestClient(create_api(state)) as c:
        yield c


def post(client, body, path="txt2img"):
    r = client.post(f"/sdapi/v1/{path}", json={"prompt": "a small red circle", "steps": 2, "seed": 3, **body})
    assert r.status_code == 200, r.text
    return r.json(), json.loads(r.json()["info"])


def pixels(b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_the_table_covers_every_field_of_the_web_uis_requests():
    """modules/api/models.py: StableDiffusionTxt2ImgProcessingAPI and StableDiffusionImg2ImgProcessingAPI."""
    assert set(A1111_FIELDS) == set(TXT2IMG) | set(IMG2IMG)
    assert {status for status, _ in A1111_FIELDS.values()} <= {"honoured", "refused", "warned"}
    for name, (status, note) in A1111_FIELDS.items():
        if status != "honoured":  # its off values are known, and its default is one of them
            assert note and name in OFF, name
            assert (TXT2IMG.get(name) or IMG2IMG[name])[1] in OFF[name], name
    assert set(TXT2IMG) <= set(Txt2ImgRequest.model_fields) and set(IMG2IMG) <= set(Img2ImgRequest.model_fields)


@pytest.mark.parametrize("model, fields", [(Txt2ImgRequest, TXT2IMG), (Img2ImgRequest, IMG2IMG)])
def test_names_types_and_defaults_are_the_web_uis(model, fields):
    """processing.py's defaults, except the fields OUR_DEFAULTS names with a reason; a value of the field's type,
    as a script sends it ("3" for an int), is read as the web UI's pydantic model reads it."""
    for name, (kind, default) in fields.items():
        ours = model.model_fields[name].default
        if name in OUR_DEFAULTS:
            assert OUR_DEFAULTS[name][0] == default and ours != default, name
        else:
            assert ours == default, name
        sent, read = SAMPLES[kind]
        body = {"init_images": ["x"], name: sent} if model is Img2ImgRequest and name != "init_images" else {name: sent}
        if name == "init_images":
            body = {name: ["x"]}
            sent, read = ["x"], ["x"]
        value = getattr(model.model_validate(body), name)
        assert value == read and (kind is not float or type(value) is float), name


def test_coercion_and_the_error_body_are_the_web_uis(client):
    """api.py's api_middleware.handle_exception: {"error", "detail", "body", "errors"}; a GET on a POST route is 405."""
    body, info = post(client, {"steps": "2", "cfg_scale": 4, "batch_size": 1.0, "restore_faces": "false"})
    p = body["parameters"]
    assert (p["steps"], p["cfg_scale"], p["batch_size"], p["restore_faces"]) == (2, 4.0, 1, False)
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 2.5})
    assert r.status_code == 422 and set(r.json()) == {"error", "detail", "body", "errors"}
    assert "steps must be an int" in r.json()["detail"]
    r = client.get("/sdapi/v1/txt2img")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and set(r.json()) == {"error", "detail", "body",
                                                                                      "errors"}
    assert client.post("/sdapi/v1/samplers").status_code == 405


def test_every_field_we_cannot_honour_is_named_when_set():
    """Each warned field, at a value that is not off, appears in the warnings; its off values do not."""
    for name, (status, _) in A1111_FIELDS.items():
        if status != "warned":
            continue
        model = Img2ImgRequest if name in IMG2IMG and name not in TXT2IMG else Txt2ImgRequest
        extra = {"init_images": ["x"]} if model is Img2ImgRequest else {}
        on = {"comments": {"a": 1}, "restore_faces": True, "tiling": True}.get(name, 2)
        if name in ("refiner_switch_at",):
            extra["refiner_checkpoint"] = "other"
        if name.startswith("hr_") or name == "firstpass_image":
            extra["enable_hr"] = True
        on = "other" if model.model_fields[name].annotation in (str | None,) and name not in ("comments",) else on
        warned = api_requests.field_warnings(model.model_validate({**extra, name: on}))
        assert any(w.startswith(f"{name}=") for w in warned), (name, warned)
        for off in OFF[name]:
            if off is not None:
                quiet = api_requests.field_warnings(model.model_validate({**extra, name: off}))
                assert not any(w.startswith(f"{name}=") for w in quiet), (name, off)
    unknown = api_requests.field_warnings(Txt2ImgRequest.model_validate({"not_a_field": 1, "mask_blur": 3}))
    assert unknown == ["mask_blur has no effect in txt2img", "unknown field(s) ignored: not_a_field"]


def test_warnings_reach_the_answer_and_the_pictures_do_not_change(client):
    plain, _ = post(client, {})
    warned, info = post(client, {"restore_faces": True, "seed_resize_from_h": 64, "not_a_field": 1})
    assert np.array_equal(pixels(plain["images"][0]), pixels(warned["images"][0]))
    assert [w.split("=")[0].split(" ")[0] for w in info["warnings"]] == ["seed_resize_from_h", "restore_faces",
                                                                         "unknown"]


def test_api_jobs_save_only_when_asked_and_send_only_when_asked(client, state):
    """api.py's text2imgapi: do_not_save_samples = not save_images; images are [] unless send_images."""
    folder = state.outputs_dir / "txt2img-images"
    before = set(folder.glob("*.png")) if folder.exists() else set()
    post(client, {})
    assert (set(folder.glob("*.png")) if folder.exists() else set()) == before
    body, info = post(client, {"save_images": True, "send_images": False})
    written = set(folder.glob("*.png")) - before
    assert body["images"] == [] and len(written) == 1
    assert infotext.read(Image.open(written.pop()))[0] == info["infotexts"][0]


def test_override_settings_set_every_option_we_have_for_one_job(client, state):
    """processing.py reads these options for each job; override_settings changes them for that job only, or keeps
    them (override_settings_restore_afterwards false), as modules/processing.py's process_images does."""
    overrides = {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337, "randn_source": "CPU",
                 "use_old_scheduling": True, "s_churn": 0.5, "s_noise": 0.9, "sd_vae": "Automatic"}
    body, info = post(client, {"override_settings": overrides})
    p = body["parameters"]
    assert (p["clip_skip"], p["eta_noise_seed_delta"], p["randn_source"], p["old_prompt_editing"],
            p["s_churn"], p["s_noise"]) == (2, 31337, "CPU", True, 0.5, 0.9)
    assert post(client, {})[0]["parameters"]["clip_skip"] == 1  # restored afterwards
    assert post(client, {"clip_skip": 3, "override_settings": overrides})[0]["parameters"]["clip_skip"] == 3
    _, info = post(client, {"override_settings": {"show_progressbar": False}})
    assert info["warnings"] == ["override_settings: show_progressbar not applied (not options this server has)"]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "override_settings": {"sd_vae": "kl-f8.safetensors"}})
    assert r.status_code == 422 and "sd_vae" in r.json()["detail"]
    post(client, {"override_settings": {"eta_noise_seed_delta": 7}, "override_settings_restore_afterwards": False})
    assert state.options["eta_noise_seed_delta"] == 7 and post(client, {})[0]["parameters"]["eta_noise_seed_delta"] == 7
    client.post("/sdapi/v1/options", json={"eta_noise_seed_delta": 0})
    assert post(client, {})[0]["parameters"]["eta_noise_seed_delta"] == 0


def test_eta_options_apply_to_their_samplers():
    """sd_samplers_kdiffusion / sd_samplers_timesteps: eta_ancestral for ancestral samplers, eta_ddim for DDIM."""
    request = Txt2ImgRequest.model_validate({"sampler_name": "DDIM", "override_settings": {"eta_ddim": 0.3}})
    assert api_requests.build_job(request, None).settings.eta == 0.3
    request = Txt2ImgRequest.model_validate({"sampler_name": "Euler a", "override_settings": {"eta_ddim": 0.3}})
    assert api_requests.build_job(request, None).settings.eta is None
    request = Txt2ImgRequest.model_validate({"sampler_name": "Euler a", "override_settings": {"eta_ancestral": 0.5}})
    assert api_requests.build_job(request, None).settings.eta == 0.5


def test_infotext_fills_the_fields_the_request_leaves_out(client):
    """api.py's apply_infotext: a field the request sets keeps its value; the others come from the infotext."""
    text = 'a large blue square\nNegative prompt: red\nSteps: 3, Sampler: Euler a, CFG scale: 5.5, Seed: 7, ' \
           'Size: 32x32, Clip skip: 2, ENSD: 31337, Model hash: 0123456789, Model: other'
    body, info = post(client, {"infotext": text, "steps": 2})
    p = body["parameters"]
    assert (p["prompt"], p["negative_prompt"], p["steps"], p["sampler_name"], p["cfg_scale"], p["seed"]) == \
        ("a small red circle", "red", 2, "Euler a", 5.5, 3)
    assert (p["clip_skip"], p["eta_noise_seed_delta"]) == (2, 31337)
    r = client.post("/sdapi/v1/txt2img", json={"infotext": text, "steps": 2})
    assert json.loads(r.json()["info"])["prompt"] == "a large blue square" and r.json()["parameters"]["seed"] == 7


def test_the_xyz_plot_takes_the_web_uis_script_args(client):
    """scripts/xyz_grid.py: run(p, x_type, x_values, x_values_dropdown, y_type, ..., csv_mode), x_type an index
    into the tab's axis_options (txt2img: 6 is CFG Scale, 4 is Steps); the grid comes first, then (with
    include_lone_images) every cell, each what the same job alone draws."""
    args = [6, "2, 6", [], 4, "1, 2", [], 0, "", [], True, True, False, False, False, False, False, 0, False]
    body, info = post(client, {"script_name": "X/Y/Z plot", "script_args": args})
    assert len(body["images"]) == 5 and "Script: X/Y/Z plot, X Type: CFG Scale" in info["infotexts"][0]
    alone, _ = post(client, {"cfg_scale": 6, "steps": 2})
    assert np.array_equal(pixels(body["images"][4]), pixels(alone["images"][0]))
    for script_name, script_args, message in (("prompt matrix", [], "Script 'prompt matrix' not found"),
                                              ("x/y/z plot", [2, "1, 2"], "'Var. seed' is not offered"),
                                              ("x/y/z plot", [99, "1"], "out of range")):
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "script_name": script_name,
                                                   "script_args": script_args})
        assert r.status_code == 422 and message in r.json()["detail"]


def test_an_unknown_alwayson_script_is_a_422(client):
    """api.py's init_script_args: HTTPException(422) for an always-on script the server does not have."""
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "alwayson_scripts": {"ADetailer": {"args": [False]}}})
    assert r.status_code == 422 and "ADetailer" in r.json()["detail"]
    body, _ = post(client, {"alwayson_scripts": {"ControlNet": {"args": []}}})  # webuiapi's way to switch it off
    assert len(body["images"]) == 1


def test_infotext_ends_with_the_version(client):
    """processing.py's create_infotext puts "Version" last."""
    _, info = post(client, {})
    assert info["infotexts"][0].endswith(f"Version: {infotext.VERSION}")
    assert infotext.parse(info["infotexts"][0])["Version"] == infotext.VERSION


def test_firstphase_size_and_disabled_extra_networks(client):
    """processing.py: firstphase_width/height is the first pass's size; disable_extra_networks leaves tags unapplied."""
    request = Txt2ImgRequest.model_validate({"firstphase_width": 32, "firstphase_height": 32, "width": 64})
    assert (api_requests.build_job(request, None).settings.width,) == (32,)
    request = Txt2ImgRequest.model_validate({"prompt": "a heart <lora:nope:1>", "disable_extra_networks": True})
    assert api_requests.build_job(request, None).settings.prompt == "a heart "
