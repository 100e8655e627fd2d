"""The sampling protocol: make_grid -> prepare_step -> loop(model, x, grid, step), and where x_T starts.

`sample` is a front to `loop`; the loop's precomputed coefficients must give what the step
functions give at every grid point; Euler and Euler a must start from diffusers' x_T
(`init_noise_sigma`), so that one seed gives diffusers' sample.
"""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from diffusers.utils.torch_utils import randn_tensor

from diffusion_notes.device import make_generator, randn
from diffusion_notes.foundations.grids import make_grid
from diffusion_notes.foundations.guidance import CFGDenoiser
from diffusion_notes.foundations.samplers import (
    SAMPLERS,
    init_noise_scale,
    loop,
    prepare_step,
    sample,
)
from diffusion_notes.foundations.schedules import make_schedule

SHAPE = (4, 3)
SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
EULERS = {"euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler}


def fake_model(x_t, t):
    """A deterministic stand-in for a network: eps = 0.3 x + 0.0004 t (t may be fractional)."""
    return 0.3 * x_t + 0.0004 * t.to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))


def diffusers_pipeline_loop(ref, seed):
    """What a diffusers pipeline does: x_T = randn * init_noise_sigma, then scale_model_input / step."""
    g = make_generator(seed)
    x = randn_tensor(SHAPE, generator=g) * ref.init_noise_sigma
    for t in ref.timesteps:
        eps = fake_model(ref.scale_model_input(x, t), t.view(1))
        x = ref.step(eps, t, x, generator=g).prev_sample
    return x  # at sigma = 0 the sigma scale and the DDPM scale agree


@pytest.mark.parametrize("sampler", list(EULERS))
@pytest.mark.parametrize("spacing", [None, "leading", "trailing"])
@pytest.mark.parametrize("n", [10, 25])
def test_euler_from_a_seed_equals_diffusers_pipeline(sampler, spacing, n):
    """No x_T: the same generator gives diffusers' own sample with SD's betas (0.24% apart before the fix)."""
    config = dict(SD_BETAS, steps_offset=1)
    if spacing is not None:
        config["timestep_spacing"] = spacing
    ref = EULERS[sampler](**config)
    ref.set_timesteps(n)
    expected = diffusers_pipeline_loop(ref, seed=4)
    ours = sample(fake_model, SHAPE, sampler=sampler, num_inference_steps=n, schedule=make_schedule("scaled_linear"),
                  generator=make_generator(4), spacing=spacing, steps_offset=1)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_euler_karras_from_a_seed_equals_diffusers_pipeline():
    ref = EulerDiscreteScheduler(**SD_BETAS, steps_offset=1, use_karras_sigmas=True)
    ref.set_timesteps(20)
    ours = sample(fake_model, SHAPE, sampler="euler", use_karras_sigmas=True, num_inference_steps=20,
                  schedule=make_schedule("scaled_linear"), generator=make_generator(4), steps_offset=1)
    torch.testing.assert_close(ours, diffusers_pipeline_loop(ref, seed=4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler, cls", [("ddim", DDIMScheduler), ("dpmpp_2m", DPMSolverMultistepScheduler)])
def test_unit_init_noise_samplers_from_a_seed_equal_diffusers_pipeline(sampler, cls):
    """init_noise_sigma = 1: x_T is the seed's z itself, as before."""
    ref = cls(**SD_BETAS, steps_offset=1)
    ref.set_timesteps(20)
    options = dict(clip_x0=1.0) if sampler == "ddim" else {}  # DDIMScheduler's default clip_sample
    ours = sample(fake_model, SHAPE, sampler=sampler, num_inference_steps=20, schedule=make_schedule("scaled_linear"),
                  generator=make_generator(4), steps_offset=1, **options)
    torch.testing.assert_close(ours, diffusers_pipeline_loop(ref, seed=4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_init_noise_scale_is_diffusers_init_noise_sigma_in_the_ddpm_scale(spacing):
    for sampler, cls in EULERS.items():
        ref = cls(timestep_spacing=spacing, **SD_BETAS)
        ref.set_timesteps(20)
        grid = make_grid(sampler, 20, make_schedule("scaled_linear"), spacing)
        sigma_max = ref.sigmas.max().item()
        expected = ref.init_noise_sigma / (1 + sigma_max**2) ** 0.5  # x_sigma -> x_t
        assert init_noise_scale(sampler, spacing, grid) == pytest.approx(float(expected), rel=1e-6)
    for sampler in ("ddpm", "ddim", "dpmpp_2m"):  # init_noise_sigma = 1: unchanged
        assert init_noise_scale(sampler, spacing, make_grid(sampler, 20, make_schedule("linear"), spacing)) == 1.0


def test_a_given_x_T_is_used_as_it_is():
    x_T = randn(SHAPE, make_generator(1))
    seen = []
    sample(fake_model, SHAPE, sampler="euler", num_inference_steps=5, x_T=x_T,
           callback=lambda i, t, x, x0_hat: seen.append(x))
    assert torch.equal(seen[0], x_T)


@pytest.mark.parametrize("sampler", [name for name, s in SAMPLERS.items() if s.step is not None])
@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_loop_updates_equal_the_step_functions(sampler, kind):
    """At every grid point, the loop's update with precomputed coefficients is the step function's result."""
    schedule = make_schedule(kind)
    options = dict(eta=0.5) if sampler == "ddim" else {}
    grid = make_grid(sampler, 12, schedule)
    step = prepare_step(sampler, grid, schedule, **options)
    timesteps = grid.timesteps.tolist()
    g = make_generator(0)
    x = randn(SHAPE, g)
    state_loop, state_step = {}, {} if grid.sigmas is None else {"sigmas": grid.sigmas}
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        eps, noise = randn(SHAPE, g), randn(SHAPE, g)
        state_step["step_index"] = i
        expected = SAMPLERS[sampler].step(x, eps, t, t_prev, schedule, noise=noise, state=state_step, **options)
        got = step.update(x, eps, step.coefficients[i], noise=noise if step.draws_noise[i] else None,
                          state=state_loop)
        torch.testing.assert_close(got.x_prev, expected.x_prev, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.x0_hat, expected.x0_hat, rtol=1e-5, atol=1e-6)
        x = expected.x_prev


def test_loop_is_what_sample_runs():
    schedule = make_schedule("linear")
    model = CFGDenoiser(lambda x, t, c: fake_model(x, t) + 0.1 * c[:, None], torch.ones(4), torch.zeros(4), 3.0)
    grid = make_grid("euler_a", 10, schedule)
    x_T = randn(SHAPE, make_generator(2))
    by_loop = loop(model, x_T, grid, prepare_step("euler_a", grid, schedule), generator=make_generator(3))
    by_sample = sample(lambda x, t, c: fake_model(x, t) + 0.1 * c[:, None], SHAPE, sampler="euler_a",
                       num_inference_steps=10, schedule=schedule, x_T=x_T, generator=make_generator(3),
                       cond=torch.ones(4), uncond=torch.zeros(4), guidance_scale=3.0)
    assert torch.equal(by_loop, by_sample)


def test_a_sample_that_ends_in_nan_is_an_error():
    """DPM++ 2M on n = T steps repeats a timestep (h = 0, then 0 * inf): the loop says so, as chapter 2 expects."""
    from diffusion_notes.foundations.samplers import sample
    from diffusion_notes.foundations.schedules import make_schedule

    model = lambda x, t: 0.1 * x  # noqa: E731
    with pytest.raises(ValueError, match="NaN"):
        sample(model, (4, 2), sampler="dpmpp_2m", num_inference_steps=1000, schedule=make_schedule("linear"),
               generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(sample(model, (4, 2), sampler="dpmpp_2m", num_inference_steps=20,
                                 schedule=make_schedule("linear"), generator=torch.Generator().manual_seed(0))).all()
