"""Our "lcm" sampler against diffusers' `LCMScheduler`: the grid, every step, the final sample.

diffusers' scheduler is built with its defaults (scaled_linear 0.00085..0.012, Stable Diffusion
v1's betas, as `ldm_schedule()`), and clip_sample=False. A deterministic stand-in model (eps =
a x + b t) is called by both loops at the same points; the scheduler draws one CPU `randn_tensor`
of the sample's shape after every step but the last, and so do `sample`/`loop` from a generator
seeded alike, so both consume the same draws in the same order. The flat `lcm_step` is run on
the same grid with those draws handed to it.

Tolerance: 1e-5 absolute plus 1e-6 relative. At t = 999, x0_hat = (x_t - sqrt(1 - alpha_bar) eps) /
sqrt(alpha_bar) is about 15 x_t, and our float32 alpha_bar (rounded from float64) and diffusers'
(a float32 cumprod) differ there by 4e-7 relative: a few float32 ulps of values near 30.
"""

import pytest
import torch
from diffusers import LCMScheduler

from diffusion_notes.device import make_generator, randn
from diffusion_notes.foundations.grids import make_grid
from diffusion_notes.foundations.samplers import lcm, prepare_step, sample
from diffusion_notes.foundations.samplers.lcm import lcm_step
from diffusion_notes.stable_diffusion.ldm import ldm_schedule

SHAPE = (2, 4, 3, 3)
STEPS = (1, 2, 4, 8)


def fake_model(x_t, t):
    """A deterministic stand-in for a consistency model's eps: 0.3 x + 0.0004 t + 0.1 sin(x)."""
    return 0.3 * x_t + 0.0004 * t.to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1))) + 0.1 * torch.sin(x_t)


def reference(n):
    ref = LCMScheduler(clip_sample=False)
    ref.set_timesteps(n)
    return ref


def run_reference(n, x_T, generator):
    """diffusers' LCM pipeline loop from x_T: (inputs, denoised, final)."""
    ref = reference(n)
    x, inputs, denoised = x_T.clone(), [], []
    for t in ref.timesteps:
        inputs.append(x)
        out = ref.step(fake_model(x, t.view(1).expand(x.shape[0])), t, x, generator=generator)
        denoised.append(out.denoised)
        x = out.prev_sample
    return inputs, denoised, x


def test_scheduler_config_is_ldm_schedule():
    """The reference's betas are ours: otherwise the comparisons below compare different schedules."""
    ref = LCMScheduler(clip_sample=False)
    torch.testing.assert_close(ref.alphas_cumprod.double(), ldm_schedule().alphas_cumprod.double(),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", STEPS)
def test_grid_equals_diffusers(n):
    grid = make_grid("lcm", n, ldm_schedule())
    assert torch.equal(grid.timesteps.long(), reference(n).timesteps)
    assert grid.sigmas is None


@pytest.mark.parametrize("n", [51, 100, 1000])
def test_more_than_50_steps_raise(n):
    with pytest.raises(ValueError, match="at most 50"):
        make_grid("lcm", n, ldm_schedule())
    with pytest.raises(ValueError, match="at most 50"):
        sample(fake_model, SHAPE, sampler="lcm", num_inference_steps=n, schedule=ldm_schedule())


def test_fifty_steps_is_the_whole_distillation_grid():
    """n = 50 visits every timestep the consistency model was distilled on, from the top."""
    grid = make_grid("lcm", 50, ldm_schedule())
    assert torch.equal(grid.timesteps.long(), reference(50).timesteps)
    assert grid.timesteps.tolist() == list(range(999, 0, -20))


@pytest.mark.parametrize("n", STEPS)
def test_sample_equals_diffusers_step_by_step(n):
    x_T = randn(SHAPE, make_generator(1))
    ref_inputs, ref_denoised, ref_out = run_reference(n, x_T, make_generator(2))
    inputs, denoised = [], []

    def record(i, t, x_t, x0_hat):
        inputs.append(x_t)
        denoised.append(x0_hat)

    out = sample(fake_model, SHAPE, sampler="lcm", num_inference_steps=n, schedule=ldm_schedule(),
                 x_T=x_T, generator=make_generator(2), callback=record)
    assert len(inputs) == len(ref_inputs) == n
    for ours, theirs in zip(inputs, ref_inputs):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-5)
    for ours, theirs in zip(denoised, ref_denoised):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("n", STEPS)
def test_flat_step_equals_diffusers_step_by_step(n):
    """`lcm_step(x_t, eps, t, t_prev)` on the grid's pairs, with the scheduler's noise draws handed to it."""
    x_T = randn(SHAPE, make_generator(1))
    ref_inputs, ref_denoised, ref_out = run_reference(n, x_T, make_generator(2))
    timesteps = make_grid("lcm", n, ldm_schedule()).timesteps.tolist()
    generator, x = make_generator(2), x_T.clone()
    for i, t in enumerate(timesteps):
        torch.testing.assert_close(x, ref_inputs[i], rtol=1e-6, atol=1e-5)
        t_prev = timesteps[i + 1] if i + 1 < n else -1
        noise = randn(SHAPE, generator) if t_prev >= 0 else None  # where the scheduler draws
        eps = fake_model(x, torch.full((SHAPE[0],), t))
        x, x0_hat = lcm_step(x, eps, t, t_prev, ldm_schedule(), noise=noise)
        torch.testing.assert_close(x0_hat, ref_denoised[i], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(x, ref_out, rtol=1e-6, atol=1e-5)


def test_flat_step_takes_per_example_timesteps():
    """A batch whose examples sit at different timesteps: each row is its own single-example step."""
    x = randn(SHAPE, make_generator(3))
    noise = randn(SHAPE, make_generator(4))
    t, t_prev = torch.tensor([999, 499]), torch.tensor([759, 259])
    eps = fake_model(x, t)
    batch = lcm_step(x, eps, t, t_prev, ldm_schedule(), noise=noise)
    for b in range(SHAPE[0]):
        row = lcm_step(x[b:b + 1], eps[b:b + 1], int(t[b]), int(t_prev[b]), ldm_schedule(), noise=noise[b:b + 1])
        torch.testing.assert_close(batch.x_prev[b:b + 1], row.x_prev, rtol=0, atol=1e-6)
        torch.testing.assert_close(batch.x0_hat[b:b + 1], row.x0_hat, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", STEPS)
def test_loop_draws_noise_where_diffusers_does(n):
    """Fresh noise after every step but the last: the last step returns the consistency estimate."""
    grid = make_grid("lcm", n, ldm_schedule())
    step = prepare_step("lcm", grid, ldm_schedule())
    assert step.draws_noise == [True] * (n - 1) + [False]


def test_boundary_condition():
    """f(x, 0) = x: c_skip(0) = 1, c_out(0) = 0; diffusers' scalings at the grid's timesteps."""
    c_skip, c_out = lcm.lcm_boundary(torch.tensor([0]))
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    ref = reference(50)
    for t in ref.timesteps:
        ours = lcm.lcm_boundary(t)
        theirs = ref.get_scalings_for_boundary_condition_discrete(t)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a.float(), torch.as_tensor(b).float(), rtol=1e-6, atol=1e-9)
