"""The web UI's "LCM" as the Stable Diffusion web UI runs it, and <lora:lcm:1> with it.

The web UI's LCM (its `sd_samplers_lcm.py`) wraps the model in a k-diffusion denoiser over the 50
distillation levels alpha_bar(19), alpha_bar(39), ..., alpha_bar(999): for n steps it spaces times
evenly from 999 down to 19, turns each into a fractional index (t - 19) / 20 into those levels and
interpolates log sigma there (`get_sigmas`, `t_to_sigma`), calls the model at the distillation
timestep whose log sigma is nearest (`sigma_to_t`), reads x0 = x - sigma eps in the variance-
exploding scale, applies the consistency boundary c_skip x + c_out x0 at that timestep
(`get_scaled_out`), and steps x = denoised + sigma' z (`sample_lcm`). `reference_grid` and
`reference_sample` below write that down in float64 numpy and the variance-exploding scale; our
"LCM" (`lcm_webui`) runs in the DDPM scale and must give the same numbers.

Until the trained LCM-LoRA ships, "lcm" is a stand-in: an `LCMLoRA` of the shipped UNet with random
nonzero up matrices, shipped into a temporary weights folder as `training/ship.py` would.
"""

import base64
import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from diffusion_notes import pretrained
from diffusion_notes.device import make_generator, randn
from diffusion_notes.fewer_steps.students import LCMLoRA, LCMLoRAConfig
from diffusion_notes.foundations.grids import make_grid
from diffusion_notes.foundations.samplers import SAMPLER_ALIASES, sample
from diffusion_notes.practice.finetune.lora import lora_layers
from diffusion_notes.practice.finetune.lora_files import applied
from diffusion_notes.practice.webui import infotext, schedulers
from diffusion_notes.practice.webui.app import create_app
from diffusion_notes.practice.webui.generate import Settings, generate
from diffusion_notes.practice.webui.launch import lora_library
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState
from diffusion_notes.run_files import save_checkpoint, sha256
from diffusion_notes.stable_diffusion.ldm import ldm_schedule

STEPS = (1, 2, 4, 8)
SHAPE = (2, 4, 3, 3)
PROMPT = "a small red circle on the left"


# --- the web UI's LCM, written down from its code --------------------------------------------------------

def reference_grid(n: int, T: int = 1000, original: int = 50):
    """(sigmas (n + 1,), model timesteps (n,)) of the web UI's LCM for n steps, float64."""
    k = T // original
    alpha_bar = ldm_schedule().alphas_cumprod.float().double().numpy()[k - 1::k]  # (50,) at 19, 39, ..., 999
    log_levels = np.log(np.sqrt((1 - alpha_bar) / alpha_bar))  # ascending
    times = np.linspace(T - 1, k - 1, n)  # evenly from the top level's timestep to the lowest's
    index = np.clip((times - (k - 1)) / k, 0, original - 1)  # fractional index into the 50 levels
    log_sigma = np.interp(index, np.arange(original), log_levels)
    nearest = np.abs(log_sigma[None, :] - log_levels[:, None]).argmin(axis=0)
    return np.append(np.exp(log_sigma), 0.0), nearest * k + (k - 1)


def boundary(t):
    """c_skip, c_out at timestep t: sigma_data 0.5 and t scaled by 10, as the denoiser's get_scaled_out."""
    s = 10.0 * t
    return 0.25 / (s**2 + 0.25), s / np.sqrt(s**2 + 0.25)


def fake_model(x_t, t):
    """A deterministic stand-in eps model: 0.3 x + 0.0004 t + 0.1 sin x."""
    return 0.3 * x_t + 0.0004 * t.to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1))) + 0.1 * torch.sin(x_t)


def reference_sample(n: int, generator: torch.Generator):
    """sample_lcm in the variance-exploding scale from z * sigma_max: (each step's x_sigma, the result)."""
    sigmas, timesteps = reference_grid(n)
    x = randn(SHAPE, generator).double() * sigmas[0]
    seen = []
    for i in range(n):
        seen.append(x)
        t = torch.full((SHAPE[0],), int(timesteps[i]))
        eps = fake_model((x / np.sqrt(1 + sigmas[i] ** 2)).float(), t).double()  # the model sees c_in x
        c_skip, c_out = boundary(float(timesteps[i]))
        x = c_out * (x - sigmas[i] * eps) + c_skip * x
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * randn(SHAPE, generator).double()
    return seen, x


@pytest.mark.parametrize("n", STEPS)
def test_the_grid_is_the_web_uis(n):
    sigmas, timesteps = reference_grid(n)
    grid = make_grid("lcm_webui", n, ldm_schedule())
    assert grid.timesteps.tolist() == timesteps.tolist()
    torch.testing.assert_close(grid.sigmas, torch.from_numpy(sigmas), rtol=2e-6, atol=0)
    assert SAMPLER_ALIASES["LCM"].sampler == "lcm_webui"


def test_the_grid_ends_at_the_lowest_level_and_differs_from_diffusers():
    """The web UI's last call is at 19 for every n > 1; diffusers' at the n-th of 50 from the top."""
    schedule = ldm_schedule()
    sigma_19 = float(schedule.sigmas()[19])
    for n in (2, 4, 8, 50):
        grid = make_grid("lcm_webui", n, schedule)
        assert grid.timesteps[0] == 999 and grid.timesteps[-1] == 19
        assert float(grid.sigmas[-2]) == pytest.approx(sigma_19, rel=1e-6)
        last = int(make_grid("lcm", n, schedule).timesteps[-1])  # diffusers': index floor(50 (n - 1) / n) from the top
        assert last == 999 - 20 * (50 * (n - 1) // n) and (last == 19) == (n == 50)
    assert torch.equal(make_grid("lcm_webui", 1, schedule).timesteps, make_grid("lcm", 1, schedule).timesteps)
    assert not torch.equal(make_grid("lcm_webui", 4, schedule).timesteps, make_grid("lcm", 4, schedule).timesteps)
    # where (980 / (n - 1)) is a multiple of 20 the times are distillation timesteps and the levels the schedule's
    grid = make_grid("lcm_webui", 8, schedule)
    torch.testing.assert_close(grid.sigmas[:-1], schedule.sigmas()[grid.timesteps], rtol=1e-6, atol=0)


@pytest.mark.parametrize("n", STEPS)
def test_sampling_is_the_web_uis_step_by_step(n):
    ref_seen, ref_out = reference_sample(n, make_generator(3))
    sigmas, _ = reference_grid(n)
    seen = []
    out = sample(fake_model, SHAPE, sampler="LCM", num_inference_steps=n, schedule=ldm_schedule(),
                 generator=make_generator(3), callback=lambda i, t, x, x0: seen.append(x))
    assert len(seen) == n
    for i, (ours, theirs) in enumerate(zip(seen, ref_seen)):
        torch.testing.assert_close(ours.double(), theirs / np.sqrt(1 + sigmas[i] ** 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)


def test_lcm_takes_its_own_grid_only():
    assert schedulers.offered("LCM") == ["Automatic"]
    with pytest.raises(ValueError, match="takes the scheduler Automatic"):
        schedulers.webui_plan("LCM", 4, ldm_schedule(), scheduler="Karras")
    with pytest.raises(ValueError, match="use_karras_sigmas works with"):
        sample(fake_model, SHAPE, sampler="lcm_webui", use_karras_sigmas=True, num_inference_steps=4)


# --- <lora:lcm:1> in the web UI ----------------------------------------------------------------------------

CONFIG = LCMLoRAConfig(rank=4, alpha=4.0)


@pytest.fixture(scope="module")
def weights(pipe, tmp_path_factory):
    """A weights folder that ships the stand-in LCM-LoRA as "lcm" (recipe lcm_lora), as `ship` writes one."""
    folder = tmp_path_factory.mktemp("weights")
    student = LCMLoRA(CONFIG, pipe.unet)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(student.unet).values():
            layer.lora_B.weight.copy_(0.1 * torch.randn(layer.lora_B.weight.shape, generator=g))
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(CONFIG).items()}
    path = save_checkpoint(folder / "lcm.safetensors", student.lora_tensors(), {"recipe": "lcm_lora", "config": config})
    entry = {"recipe": "lcm_lora", "file": path.name, "sha256": sha256(path), "config": config,
             "train_command": "python -m diffusion_notes train lcm_lora",
             "ship_command": "python -m diffusion_notes ship runs/lcm_lora --name lcm"}
    (folder / pretrained.MANIFEST_NAME).write_text(json.dumps({"models": {"lcm": entry}}))
    return folder


@pytest.fixture(scope="module")
def library(pipe, weights):
    return lora_library(pipe.unet, weights_dir=weights)


def pixels(image):
    return np.asarray(image.convert("RGB"), dtype=int)


def test_the_lcm_lora_is_listed_and_loads_as_a_lora(pipe, library, weights):
    assert pretrained.shipped_adapters("lcm_lora", weights) == ["lcm"]
    assert library.names() == ["lcm"]
    network = library.get("lcm")
    assert {name.rsplit(".", 1)[-1] for name in network.layers} == set(CONFIG.targets)
    assert network.metadata["sampler"] == "LCM"


def direct(pipe, network, seed):
    """The pipeline with sampler LCM, guidance 1 and the LoRA merged: what <lora:lcm:1> must draw."""
    with applied(pipe.unet, [(network, 1.0)]):
        return pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, sampler="LCM", output_type="pil",
                    generator=torch.Generator().manual_seed(seed)).images[0]


def test_generate_with_lora_lcm_draws_the_pipelines_picture(pipe, library):
    settings = Settings(prompt=PROMPT + " <lora:lcm:1>", steps=4, cfg_scale=1.0, sampler_name="LCM", seed=6)
    result = generate(pipe, settings, model=("ldm_unet", "0123456789"), loras=library)
    expected = direct(pipe, library.get("lcm"), 6)
    assert np.abs(pixels(result.images[0]) - pixels(expected)).max() <= 1
    plain = generate(pipe, Settings(prompt=PROMPT, steps=4, cfg_scale=1.0, sampler_name="LCM", seed=6))
    assert np.abs(pixels(result.images[0]) - pixels(plain.images[0])).max() > 3  # the LoRA acts (0: not applied)
    parsed = infotext.parse(result.infotexts[0])
    assert parsed["Sampler"] == "LCM" and "Lora hashes" in parsed
    fields = infotext.to_settings(parsed)
    assert (fields["sampler_name"], fields["steps"], fields["cfg_scale"]) == ("LCM", 4, 1.0)
    assert fields["prompt"] == settings.prompt


@pytest.mark.slow
def test_the_api_draws_lcm_with_the_lora(pipe, library):
    state = WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet")), loras=library)
    with TestClient(create_app(state)) as client:
        assert "LCM" in [item["name"] for item in client.get("/sdapi/v1/samplers").json()]
        assert [item["name"] for item in client.get("/sdapi/v1/loras").json()] == ["lcm"]
        body = {"prompt": PROMPT + " <lora:lcm:1>", "steps": 4, "cfg_scale": 1, "seed": 9, "sampler_name": "LCM"}
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200
        image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
        assert np.abs(pixels(image) - pixels(direct(pipe, library.get("lcm"), 9))).max() <= 1
        text = json.loads(r.json()["info"])["infotexts"][0]
        assert "Sampler: LCM" in text and image.text["parameters"] == text
        back = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + r.json()["images"][0]})
        assert infotext.to_settings(back.json()["parameters"])["sampler_name"] == "LCM"
