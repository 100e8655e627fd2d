"""stable_diffusion/denoise.py: the one latent denoising path, and the two img2img start conventions."""

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

from diffusion_notes.device import make_generator, randn
from diffusion_notes.foundations.grids import make_grid, noise_to_grid_point
from diffusion_notes.foundations.samplers import loop, prepare_step, sample
from diffusion_notes.stable_diffusion.denoise import denoise, make_plan, strength_start, webui_start
from diffusion_notes.stable_diffusion.ldm import ldm_schedule

SHAPE = (2, 4, 8, 8)


def fake_model(x_t, t):
    """A deterministic stand-in for a network: eps = 0.1 x + 0.001 t."""
    return 0.1 * x_t + 0.001 * t.view(-1, *([1] * (x_t.ndim - 1))).float()


@pytest.mark.parametrize("n", [1, 4, 7, 10, 25, 50])
def test_strength_start_is_diffusers_img2img_rule(n):
    """The steps run are those diffusers' StableDiffusionImg2ImgPipeline.get_timesteps keeps."""
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(n)
    stub = SimpleNamespace(scheduler=scheduler)
    for strength in (0.0, 0.1, 0.3, 0.45, 0.5, 0.8, 0.99, 1.0):
        _, steps_run = StableDiffusionImg2ImgPipeline.get_timesteps(stub, n, strength, "cpu")
        assert n - strength_start(n, strength) == steps_run, (n, strength)


def test_webui_start_runs_int_strength_times_steps_plus_one():
    """The web UI (A1111's img2img) runs t_enc + 1 steps, t_enc = int(min(d, 0.999) n): d = 0 still runs one."""
    assert [webui_start(20, d) for d in (0.0, 0.5, 0.75, 1.0)] == [19, 9, 4, 0]
    for n in (1, 5, 20, 37):
        for d in (0.0, 0.05, 0.33, 0.5, 0.999, 1.0):
            assert n - webui_start(n, d) == int(min(d, 0.999) * n) + 1


@pytest.mark.parametrize("sampler", ["ddim", "euler_a", "Euler", "dpmpp_2m"])
def test_txt2img_is_sample_from_the_same_seed(sampler):
    """x_T = first * the sampler's initial noise scale, then the loop: what `samplers.sample` draws and runs."""
    schedule, n = ldm_schedule(), 6
    expected = sample(fake_model, SHAPE, sampler=sampler, num_inference_steps=n, schedule=schedule,
                      generator=make_generator(3))
    g = make_generator(3)
    first = randn(SHAPE, g)
    z = denoise(fake_model, make_plan(sampler, n, schedule), first, generator=g)
    assert torch.equal(z, expected)


@pytest.mark.parametrize("sampler", ["ddim", "euler_a", "dpmpp_2m"])
@pytest.mark.parametrize("convention", [strength_start, webui_start])
def test_img2img_starts_at_the_noised_input_and_runs_the_rest(sampler, convention):
    schedule, n, strength = ldm_schedule(), 10, 0.55
    z0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    start = convention(n, strength)
    assert start == {strength_start: 5, webui_start: 4}[convention]
    g = make_generator(5)
    first = randn(SHAPE, g)
    grid = make_grid(sampler, n, schedule)
    x_start = noise_to_grid_point(z0, first, grid, start, schedule).float()
    expected = sample(fake_model, SHAPE, sampler=sampler, num_inference_steps=n, schedule=schedule,
                      x_T=x_start, start_step=start, generator=g)
    g = make_generator(5)
    seen = []
    z = denoise(fake_model, make_plan(sampler, n, schedule), randn(SHAPE, g), z0=z0, start_step=start, generator=g,
                callback=lambda i, *_: seen.append(i))
    assert torch.equal(z, expected) and seen == list(range(start, n))


def test_a_noise_source_and_an_after_step_hook_go_to_the_loop():
    """The web UI's way: its own noise(i) per step and a blend after each step, as `samplers.loop` takes them."""
    schedule, n = ldm_schedule(), 5
    plan = make_plan("Euler a", n, schedule)
    z0, first = torch.zeros(SHAPE), torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))

    def noise(i):
        return torch.full(SHAPE, 0.01 * i)

    def after_step(i, x):
        return x.clamp(-0.5, 0.5)

    start = webui_start(n, 0.7)
    step = prepare_step("euler_a", plan.grid, schedule)
    x = noise_to_grid_point(z0, first, plan.grid, start, schedule).float()
    expected = loop(fake_model, x, plan.grid, step, noise=noise, after_step=after_step, start_step=start)
    z = denoise(fake_model, plan, first, z0=z0, start_step=start, noise=noise, after_step=after_step)
    assert torch.equal(z, expected)


def test_a_start_at_the_end_returns_the_input_and_bad_starts_raise():
    plan = make_plan("ddim", 4, ldm_schedule())
    z0 = torch.randn(SHAPE)
    assert denoise(fake_model, plan, torch.randn(SHAPE), z0=z0, start_step=4) is z0
    with pytest.raises(ValueError, match=r"start_step must be an int in \[0, 4\], got 5"):
        denoise(fake_model, plan, torch.randn(SHAPE), z0=z0, start_step=5)
    with pytest.raises(ValueError, match="needs z0"):
        denoise(fake_model, plan, torch.randn(SHAPE), start_step=2)


def test_plan_takes_diffusers_options_and_checks_eta():
    schedule = ldm_schedule()
    assert make_plan("DPM++ 2M Karras", 5, schedule).grid.sigmas.tolist() == \
        make_grid("dpmpp_2m", 5, schedule, use_karras_sigmas=True).sigmas.tolist()
    assert make_plan("ddim", 5, schedule, spacing="trailing").grid.timesteps[0] == 999
    assert make_plan("euler", 5, schedule).init_scale < 1 and make_plan("ddim", 5, schedule).init_scale == 1
    with pytest.raises(ValueError, match="eta applies to the ddim sampler only"):
        make_plan("euler", 5, schedule, eta=0.5)
    with pytest.raises(ValueError, match="eta must be a number >= 0"):
        make_plan("ddim", 5, schedule, eta=-1)


@pytest.mark.parametrize("sampler", ["heun", "dpm2"])
def test_img2img_with_two_calls_a_step_starts_where_its_step_begins(sampler):
    """Heun and DPM2 visit 2n - 1 points; step k begins at point 2k, where diffusers' img2img starts them."""
    n, schedule = 5, ldm_schedule()
    plan = make_plan(sampler, n, schedule)
    assert len(plan.grid.timesteps) == 2 * n - 1
    start = strength_start(n, 0.6)  # redo 3 of the 5 steps: start at step 2, point 4
    seen = []

    def model(x, t, step):
        seen.append(step)
        return torch.zeros_like(x)

    model.takes_step = True
    z0, first = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    starts = []
    denoise(model, plan, first, z0=z0, start_step=start, callback=lambda i, t, x, x0: starts.append((i, x.clone())))
    assert seen == [2, 2, 3, 3, 4]  # steps 2-4, each step's two calls handed the same step
    i, x_start = starts[0]
    assert i == 4 and torch.equal(x_start, noise_to_grid_point(z0, first, plan.grid, 4, schedule).float())
