"""An infotext as AUTOMATIC1111 1.10 writes it redraws the same picture, through PNG Info and the API.

The infotext uses the rules a reader relies on to reproduce a picture: prompt editing, a variation
seed, `Schedule type: Karras`, `Clip skip: 2`, `ENSD: 31337`, `RNG: NV` and hires fix. Each of its
keys must reach the job (the web UI's `infotext_utils.parse_generation_parameters` and
`apply_infotext`): read straight into Settings, pasted through PNG Info, or sent as the API's
`infotext` field, the job is the same job and draws the same pixels, and the picture's own infotext
carries every key again.
"""

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from diffusion_notes import pretrained
from diffusion_notes.practice.webui import infotext
from diffusion_notes.practice.webui.api import create_api
from diffusion_notes.practice.webui.generate import Settings, generate
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState

# as A1111 1.10's create_infotext orders them (its "Version" is its own)
A1111_TEXT = (
    "a small [red:blue:3] circle on the left\n"
    "Negative prompt: a square\n"
    "Steps: 6, Sampler: Euler a, Schedule type: Karras, CFG scale: 4, Seed: 1234, Size: 32x32, "
    "Variation seed: 99, Variation seed strength: 0.3, Denoising strength: 0.5, Clip skip: 2, ENSD: 31337, "
    "RNG: NV, Hires upscale: 2, Hires steps: 3, Hires upscaler: Latent, Version: v1.10.0"
)
EXPECTED = dict(prompt="a small [red:blue:3] circle on the left", negative_prompt="a square", steps=6,
                sampler_name="Euler a", scheduler="Karras", cfg_scale=4.0, seed=1234, width=32, height=32, subseed=99,
                subseed_strength=0.3, denoising_strength=0.5, clip_skip=2, eta_noise_seed_delta=31337,
                randn_source="NV", enable_hr=True, hr_scale=2.0, hr_second_pass_steps=3, hr_upscaler="Latent")


@pytest.fixture(scope="module")
def client(pipe, tmp_path_factory):
    state = WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet")), tmp_path_factory.mktemp("outputs"))
    with TestClient(create_api(state)) as c:
        yield c


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_every_key_of_the_infotext_reaches_the_job():
    """infotext_utils.parse_generation_parameters: each key to its field (hires fix on, from its keys)."""
    fields = infotext.to_settings(infotext.parse(A1111_TEXT))
    assert {k: fields.get(k) for k in EXPECTED} == EXPECTED


def test_png_info_and_the_api_redraw_the_same_pixels(pipe, client):
    fields = {k: v for k, v in infotext.to_settings(infotext.parse(A1111_TEXT)).items()
              if k in Settings.__dataclass_fields__}
    direct = generate(pipe, Settings(**fields))
    assert direct.images[0].size == (64, 64)  # hires fix, scale 2
    direct_pixels = np.asarray(direct.images[0])
    # PNG Info: the infotext read back from a PNG that carries it, its parameters sent to txt2img
    carrier = base64.b64encode(infotext.png_bytes(Image.new("RGB", (32, 32)), A1111_TEXT)).decode()
    read = client.post("/sdapi/v1/png-info", json={"image": carrier}).json()
    assert read["info"] == A1111_TEXT
    pasted = {k: v for k, v in infotext.to_settings(read["parameters"]).items() if k in Settings.__dataclass_fields__}
    through_png_info = client.post("/sdapi/v1/txt2img", json=pasted).json()
    # the API's infotext field: the fields the request leaves out come from the infotext
    through_infotext = client.post("/sdapi/v1/txt2img", json={"infotext": A1111_TEXT}).json()
    for answer in (through_png_info, through_infotext):
        assert np.array_equal(pixels(answer["images"][0]), direct_pixels)
    # the redrawn picture's infotext carries every key again (all but the web UI's own "Version")
    again = infotext.parse(json.loads(through_infotext["info"])["infotexts"][0])
    original = {k: v for k, v in infotext.parse(A1111_TEXT).items() if k != "Version"}
    assert {k: again.get(k) for k in original} == original
