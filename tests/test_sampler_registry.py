"""One object per sampler: a sampler's module registers it, and every path reads the registry.

A toy sampler registered here, in this file alone, must be one that `sample`, `make_grid`,
`prepare_step`, the diffusers bridge and the web UI's list (its dropdown, `/sdapi/v1/samplers`)
know at once, and gone from all of them when it is taken out again.
"""

from typing import NamedTuple

import pytest
import torch

from diffusion_notes.device import make_generator, randn
from diffusion_notes.foundations.diffusion import alpha_bar_pair
from diffusion_notes.foundations.grids import DEFAULT_SPACING, KARRAS_SAMPLERS, Grid, make_grid, make_timesteps
from diffusion_notes.foundations.samplers import (
    SAMPLER_ALIASES,
    SAMPLERS,
    UPDATES,
    Sampler,
    StepOutput,
    init_noise_scale,
    prepare_step,
    register,
    sample,
)
from diffusion_notes.foundations.samplers.common import timestep_pairs
from diffusion_notes.foundations.schedules import make_schedule

SHAPE = (3, 2)


class JumpCoefficients(NamedTuple):
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    sqrt_alpha_bar_prev: torch.Tensor
    sqrt_one_minus_alpha_bar_prev: torch.Tensor


def jump_update(x_t, eps, c, *, noise=None, clip_x0=None, state=None):
    """Predict x0, then noise it to t_prev with the same eps: deterministic DDIM, written again."""
    x0_hat = (x_t - c.sqrt_one_minus_alpha_bar * eps) / c.sqrt_alpha_bar
    return StepOutput(c.sqrt_alpha_bar_prev * x0_hat + c.sqrt_one_minus_alpha_bar_prev * eps, x0_hat)


def jump_coefficients(grid, schedule, *, dtype=torch.float32, **options):
    alpha_bar, alpha_bar_prev = (a.to(dtype) for a in alpha_bar_pair(*timestep_pairs(grid), schedule))
    return JumpCoefficients(alpha_bar.sqrt(), (1 - alpha_bar).sqrt(),
                            alpha_bar_prev.sqrt(), (1 - alpha_bar_prev).sqrt())


TOY = Sampler(
    name="toy_jump",
    make_grid=lambda n, schedule, *, spacing, steps_offset=0, **options: Grid(
        make_timesteps(n, schedule.num_train_timesteps, spacing, steps_offset), None),
    coefficients=jump_coefficients,
    update=jump_update,
    default_spacing="trailing",
    diffusers_class="DDIMScheduler",
    diffusers_config={"clip_sample": False, "set_alpha_to_one": True},
    webui_names={"Toy jump": False},
)


@pytest.fixture
def toy():
    register(TOY)
    try:
        yield TOY
    finally:
        del SAMPLERS[TOY.name]


def fake_model(x_t, t):
    return 0.2 * x_t + 0.0005 * t.to(x_t.dtype)[:, None]


def test_a_registered_sampler_is_known_everywhere_at_once(toy):
    from fastapi.testclient import TestClient

    from diffusion_notes.practice.checkpoints.schedulers import diffusers_scheduler
    from diffusion_notes.practice.webui import generate
    from diffusion_notes.practice.webui.api import create_api

    schedule = make_schedule("linear")
    grid = make_grid("toy_jump", 10, schedule)  # its own default spacing
    assert grid.timesteps.tolist() == make_timesteps(10, 1000, "trailing").tolist()
    assert DEFAULT_SPACING["toy_jump"] == "trailing" and "toy_jump" not in KARRAS_SAMPLERS
    assert UPDATES["toy_jump"] is jump_update and init_noise_scale("toy_jump", None, grid) == 1.0
    assert prepare_step("toy_jump", grid, schedule).draws_noise == [False] * 10
    # sample, by our name and by the web UI's: the same run as deterministic DDIM on the same grid
    x_T = randn(SHAPE, make_generator(0))
    ours = sample(fake_model, SHAPE, sampler="toy_jump", num_inference_steps=10, schedule=schedule, x_T=x_T)
    by_ui_name = sample(fake_model, SHAPE, sampler="Toy jump", num_inference_steps=10, schedule=schedule, x_T=x_T)
    ddim = sample(fake_model, SHAPE, sampler="ddim", num_inference_steps=10, schedule=schedule, x_T=x_T,
                  spacing="trailing")
    assert torch.equal(ours, by_ui_name)
    torch.testing.assert_close(ours, ddim, rtol=1e-5, atol=1e-6)
    # the web UI's list, its name mapping, its API and the diffusers bridge
    assert SAMPLER_ALIASES["Toy jump"].sampler == "toy_jump" and "Toy jump" in generate.SAMPLER_ALIASES
    assert generate.sampler_name("toy_jump") == "Toy jump"
    names = [s["name"] for s in TestClient(create_api(None)).get("/sdapi/v1/samplers").json()]
    assert names[-1] == "Toy jump" and "DPM++ 2M Karras" in names
    assert type(diffusers_scheduler("toy_jump", schedule)).__name__ == "DDIMScheduler"


def test_a_sampler_taken_out_is_gone_everywhere(toy):
    del SAMPLERS[toy.name]
    try:
        assert "Toy jump" not in SAMPLER_ALIASES and "toy_jump" not in DEFAULT_SPACING
        with pytest.raises(ValueError, match="sampler must be one of ddpm, ddim"):
            make_grid("toy_jump", 10, make_schedule("linear"))
        with pytest.raises(ValueError, match="or a web-UI name"):
            sample(fake_model, SHAPE, sampler="Toy jump", num_inference_steps=10)
    finally:
        SAMPLERS[toy.name] = toy  # the fixture takes it out


def test_web_ui_names_are_unique_across_the_registry():
    names = [name for s in SAMPLERS.values() for name in s.webui_names]
    assert len(names) == len(set(names)) and list(SAMPLER_ALIASES) == names
    # every sampler shows in the web UI but diffusers' LCMScheduler: the web UI's "LCM" runs on its own grid
    assert [s.name for s in SAMPLERS.values() if not s.webui_names] == ["lcm"]
    assert SAMPLER_ALIASES["LCM"].sampler == "lcm_webui"
    twin = Sampler(name="euler_twin", make_grid=TOY.make_grid, coefficients=TOY.coefficients, update=TOY.update,
                   default_spacing="linspace", diffusers_class="EulerDiscreteScheduler", webui_names={"Euler": False})
    with pytest.raises(ValueError, match="the web-UI name 'Euler' of 'euler_twin' is 'euler''s already"):
        register(twin)
    assert "euler_twin" not in SAMPLERS
    with pytest.raises(ValueError, match="already registered"):
        register(SAMPLERS["ddim"])


def test_every_sampler_field_is_its_own():
    """Each registered sampler's grid, coefficients and update work on their own, on its default grid."""
    schedule = make_schedule("scaled_linear")
    for name, s in SAMPLERS.items():
        assert s.name == name and s.default_spacing in ("leading", "trailing", "linspace"), name
        grid = make_grid(name, 6, schedule)
        step = prepare_step(name, grid, schedule)
        assert len(step.coefficients) == len(step.draws_noise) == len(grid.timesteps), name
        assert init_noise_scale(name, None, grid) > 0, name
