"""samplers.py: timestep grids, the DDPM step and the sampling loop, against diffusers."""

import inspect

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from diffusion_notes.device import make_generator, randn
from diffusion_notes.foundations.grids import make_timesteps
from diffusion_notes.foundations.samplers import (
    SAMPLER_ALIASES,
    SAMPLERS,
    StepOutput,
    ddim_step,
    ddpm_step,
    karras_sigmas,
    sample,
    sigma_at,
)
from diffusion_notes.foundations.schedules import Schedule, make_schedule

DIFFUSERS_CONFIG = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
}
SHAPE = (2, 3, 4, 4)


def fake_model(x_t, t):
    """A deterministic stand-in for a network: eps = 0.1 x + 0.001 t."""
    return 0.1 * x_t + 0.001 * t.view(-1, *([1] * (x_t.ndim - 1)))


def diffusers_schedule(ref: DDPMScheduler) -> Schedule:
    """diffusers' own float32 numbers as a Schedule, to test the step formula on its own."""
    return Schedule("diffusers", ref.betas.double(), ref.alphas.double(), ref.alphas_cumprod.double())


def diffusers_sample(ref: DDPMScheduler, seed: int) -> torch.Tensor:
    """diffusers' DDPMPipeline loop, with the fake model."""
    g = make_generator(seed)
    x = randn_tensor(SHAPE, generator=g)
    for t in ref.timesteps:
        x = ref.step(fake_model(x, t.view(1)), t, x, generator=g).prev_sample
    return x


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 3, 10, 25, 48, 50, 61, 999, 1000])
def test_make_timesteps_matches_diffusers(spacing, n):
    ref = DDPMScheduler(timestep_spacing=spacing)
    ref.set_timesteps(n)
    expected = ref.timesteps[ref.timesteps >= 0]  # diffusers' trailing grid can end in -1 (n = 61)
    got = make_timesteps(n, 1000, spacing)
    assert got.dtype == torch.long and got.shape == (n,)
    assert torch.equal(got, expected)


def test_make_timesteps_values():
    assert make_timesteps(4, 1000).tolist() == [750, 500, 250, 0]
    assert make_timesteps(4, 1000, "trailing").tolist() == [999, 749, 499, 249]
    assert make_timesteps(4, 1000, "linspace").tolist() == [999, 666, 333, 0]


@pytest.mark.parametrize("n", [0, 1001, -3, 2.0])
def test_make_timesteps_rejects_bad_step_counts(n):
    with pytest.raises(ValueError, match=f"num_inference_steps must be between 1 and 1000, got {n}"):
        make_timesteps(n)


def test_make_timesteps_rejects_unknown_spacing():
    with pytest.raises(ValueError, match="leading, trailing, linspace, got 'uniform'"):
        make_timesteps(10, spacing="uniform")


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("n", [1000, 50])
def test_ddpm_step_matches_diffusers_at_every_step(kind, clip, n):
    ref = DDPMScheduler(clip_sample=clip, **DIFFUSERS_CONFIG[kind])
    ref.set_timesteps(n)
    schedule = make_schedule(kind)
    timesteps = make_timesteps(n).tolist()
    g_ours, g_ref = make_generator(0), make_generator(0)
    x = randn(SHAPE, make_generator(1))
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < n else -1
        eps = fake_model(x, torch.tensor([t]))
        noise = randn(SHAPE, g_ours) if t > 0 else None  # diffusers draws only when t > 0
        out = ddpm_step(x, eps, t, t_prev, schedule, noise=noise, clip_x0=1.0 if clip else None)
        expected = ref.step(eps, t, x, generator=g_ref)
        torch.testing.assert_close(out.x0_hat, expected.pred_original_sample, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.x_prev, expected.prev_sample, atol=1e-5, rtol=1e-4)
        x = expected.prev_sample  # compare each step from the same x_t


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("n", [1000, 50])
def test_sample_equals_the_diffusers_loop(kind, clip, n):
    ref = DDPMScheduler(clip_sample=clip, **DIFFUSERS_CONFIG[kind])
    ref.set_timesteps(n)
    expected = diffusers_sample(ref, seed=3)
    clip_x0 = 1.0 if clip else None
    # With diffusers' own float32 schedule the two loops are the same computation.
    same = sample(fake_model, SHAPE, num_inference_steps=n, schedule=diffusers_schedule(ref),
                  generator=make_generator(3), clip_x0=clip_x0)
    torch.testing.assert_close(same, expected, atol=1e-6, rtol=1e-6)
    # With our float64 schedule the one-ulp differences of diffusers' float32 cumprod
    # add up over a long trajectory of this (unstable) fake model: a looser tolerance.
    ours = sample(fake_model, SHAPE, num_inference_steps=n, schedule=make_schedule(kind),
                  generator=make_generator(3), clip_x0=clip_x0)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-3)


def test_batched_t_equals_per_example_steps():
    schedule = make_schedule("linear")
    g = make_generator(2)
    x, eps, noise = randn(SHAPE, g), randn(SHAPE, g), randn(SHAPE, g)
    t, t_prev = torch.tensor([500, 0]), torch.tensor([480, -1])
    batched = ddpm_step(x, eps, t, t_prev, schedule, noise=noise)
    for i in range(2):
        single = ddpm_step(x[i:i + 1], eps[i:i + 1], t[i].item(), t_prev[i].item(), schedule,
                           noise=noise[i:i + 1])
        torch.testing.assert_close(batched.x_prev[i:i + 1], single.x_prev)
        torch.testing.assert_close(batched.x0_hat[i:i + 1], single.x0_hat)


def test_last_step_adds_no_noise_and_returns_x0_hat():
    schedule = make_schedule("linear")
    x, eps = torch.randn(SHAPE), torch.randn(SHAPE)
    a = ddpm_step(x, eps, 0, -1, schedule, noise=torch.randn(SHAPE))
    b = ddpm_step(x, eps, 0, -1, schedule, noise=None)
    assert isinstance(a, StepOutput)
    torch.testing.assert_close(a.x_prev, b.x_prev)
    torch.testing.assert_close(a.x_prev, a.x0_hat)


def test_clip_x0_clamps_the_prediction():
    schedule = make_schedule("linear")
    x = torch.full(SHAPE, 5.0)
    out = ddpm_step(x, torch.zeros(SHAPE), 900, 899, schedule, noise=torch.zeros(SHAPE), clip_x0=1.0)
    assert out.x0_hat.max().item() == 1.0


def test_sample_is_reproducible_from_a_seed():
    kwargs = dict(num_inference_steps=20, schedule=make_schedule("linear"))
    a = sample(fake_model, SHAPE, generator=make_generator(0), **kwargs)
    b = sample(fake_model, SHAPE, generator=make_generator(0), **kwargs)
    c = sample(fake_model, SHAPE, generator=make_generator(1), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_callback_sees_every_step():
    calls = []
    x_T = torch.randn(SHAPE)

    def callback(i, t, x_t, x0_hat):
        calls.append((i, t, x_t.shape, x0_hat.shape, x_t))

    sample(fake_model, SHAPE, num_inference_steps=25, generator=make_generator(0),
           callback=callback, x_T=x_T)
    assert [c[0] for c in calls] == list(range(25))
    assert [c[1] for c in calls] == make_timesteps(25).tolist()
    assert all(c[2] == SHAPE and c[3] == SHAPE for c in calls)
    assert torch.equal(calls[0][4], x_T)  # x_t is the sample before the step


def test_perfect_denoiser_lands_on_the_single_data_point():
    # Data is one point x*; the optimal eps-model is then known in closed form.
    schedule = make_schedule("linear")
    x_star = torch.tensor([1.0, -2.0])
    alpha_bar = schedule.alphas_cumprod.float()

    def perfect(x_t, t):
        ab = alpha_bar[t][:, None]  # (B, 1)
        return (x_t - ab.sqrt() * x_star) / (1 - ab).sqrt()  # (B, 2)

    predictions = []
    out = sample(perfect, (64, 2), num_inference_steps=50, schedule=schedule,
                 generator=make_generator(0), callback=lambda i, t, x, x0_hat: predictions.append(x0_hat))
    torch.testing.assert_close(out, x_star.expand(64, 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(predictions[-1], x_star.expand(64, 2), atol=1e-4, rtol=0)


def test_sample_passes_cond_and_uses_the_device():
    seen = []

    def model(x_t, t, cond):
        seen.append((t.dtype, t.shape, t.device, cond))
        return torch.zeros_like(x_t)

    x = sample(model, SHAPE, num_inference_steps=3, cond="a red cube", device="cpu", progress=True)
    assert x.shape == SHAPE and x.device.type == "cpu" and len(seen) == 3
    assert seen[0] == (torch.long, (SHAPE[0],), torch.device("cpu"), "a red cube")


def test_every_sampler_has_the_shared_signature():
    expected = ["x_t", "eps", "t", "t_prev", "schedule", "noise", "clip_x0", "state"]
    assert list(SAMPLERS)[:5] == ["ddpm", "ddim", "euler", "euler_a", "dpmpp_2m"]
    for name, sampler in SAMPLERS.items():
        if sampler.step is None:  # a sampler without a flat step function (the loop needs none)
            continue
        parameters = inspect.signature(sampler.step).parameters
        assert list(parameters)[:8] == expected, name
        for extra in list(parameters.values())[8:]:  # sampler-specific options: keyword-only, defaulted
            assert extra.kind is inspect.Parameter.KEYWORD_ONLY and extra.default is not inspect.Parameter.empty


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampler="euler_fancy"),
         r"sampler must be one of ddpm, ddim, euler, euler_a, dpmpp_2m.* \(or a web-UI name: 'DDPM', "
         r"'DDIM', 'Euler', 'Euler a', 'DPM\+\+ 2M', 'DPM\+\+ 2M Karras'.*\), got 'euler_fancy'"),
        (dict(num_inference_steps=0), "num_inference_steps must be between 1 and 1000, got 0"),
        (dict(num_inference_steps=10, spacing="uniform"), "spacing must be one of"),
        (dict(num_inference_steps=10, x_T=torch.zeros(1, 2)), r"x_T must have shape \(2, 3, 4, 4\)"),
    ],
)
def test_sample_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(fake_model, SHAPE, **kwargs)


def test_sample_rejects_a_model_with_the_wrong_output_shape():
    with pytest.raises(ValueError, match="eps_model must return a tensor shaped like x_t"):
        sample(lambda x, t: x[:, :1], SHAPE, num_inference_steps=2)


def test_ddpm_step_rejects_bad_input():
    schedule = make_schedule("linear")
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match=r"\[0, 999\], got 1000"):
        ddpm_step(x, x, 1000, 999, schedule)
    with pytest.raises(ValueError, match="same shape"):
        ddpm_step(x, x[:1], 10, 9, schedule)
    with pytest.raises(ValueError, match=r"t_prev must be in \[-1, t - 1\]"):
        ddpm_step(x, x, 10, 10, schedule)


# --- the other samplers, the grid options and the checks on sample's arguments ---------------

ALL_SAMPLERS = ["ddpm", "ddim", "euler", "euler_a", "dpmpp_2m"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_inference_steps=1001), "num_inference_steps must be between 1 and 1000, got 1001"),
        (dict(sampler="euler", num_inference_steps=0), "num_inference_steps must be between 1 and 1000, got 0"),
        (dict(sampler="dpmpp_2m", num_inference_steps=1001), "between 1 and 1000, got 1001"),
        (dict(guidance_scale=-1.0), "guidance_scale must be a finite number >= 0"),
        (dict(guidance_scale=float("nan")), r"guidance_scale must be a finite number >= 0 .*got nan"),
        (dict(guidance_scale=float("inf")), "guidance_scale must be a finite number >= 0"),
        (dict(sampler="ddim", eta=-0.1), r"eta must be a number >= 0 \(0 = DDIM, 1 = DDPM's variance\), got -0.1"),
        (dict(sampler="euler", eta=0.5), "eta applies to the ddim sampler only"),
        (dict(sampler="ddim", use_karras_sigmas=True),
         r"use_karras_sigmas works with the euler(, | and )dpmpp_2m.* samplers, not 'ddim'"),
        (dict(sampler="euler_a", use_karras_sigmas=True), "not 'euler_a'"),
        (dict(sampler="DPM++ 2M Karras", use_karras_sigmas=False), "means use_karras_sigmas=True"),
        (dict(steps_offset=-1), "steps_offset must be an int >= 0, got -1"),
        (dict(num_inference_steps=1000, steps_offset=1), "past the last training step 999"),
        (dict(guidance_scale=3.0), "needs both a condition `cond` and an unconditional condition `uncond`"),
    ],
)
def test_sample_rejects_bad_options(kwargs, message):
    kwargs.setdefault("num_inference_steps", 5)
    with pytest.raises(ValueError, match=message):
        sample(fake_model, SHAPE, **kwargs)


def float_t_model(x_t, t):
    return 0.1 * x_t + 0.001 * t.to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_every_sampler_reports_every_step_and_is_reproducible(sampler):
    calls = []
    kwargs = dict(sampler=sampler, num_inference_steps=12, schedule=make_schedule("linear"))
    a = sample(float_t_model, SHAPE, generator=make_generator(0), progress=True,
               callback=lambda i, t, x, x0_hat: calls.append((i, t, x0_hat.shape)), **kwargs)
    b = sample(float_t_model, SHAPE, generator=make_generator(0), **kwargs)
    assert [c[0] for c in calls] == list(range(12)) and all(c[2] == SHAPE for c in calls)
    assert torch.equal(a, b) and torch.isfinite(a).all()


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_every_sampler_lands_on_a_single_data_point(sampler):
    # One data point x*: the optimal eps-model is known in closed form at any (fractional) t.
    schedule = make_schedule("scaled_linear")
    x_star = torch.tensor([1.0, -2.0])

    def perfect(x_t, t):
        alpha_bar = 1 / (1 + sigma_at(t.double().cpu(), schedule) ** 2)  # (B,)
        ab = alpha_bar.float()[:, None]  # (B, 1)
        return (x_t - ab.sqrt() * x_star) / (1 - ab).sqrt()  # (B, 2)

    out = sample(perfect, (16, 2), sampler=sampler, num_inference_steps=10, schedule=schedule,
                 generator=make_generator(0))
    torch.testing.assert_close(out, x_star.expand(16, 2), atol=1e-4, rtol=0)


def test_model_gets_float_timesteps_on_fractional_grids():
    seen = []

    def model(x_t, t):
        seen.append(t)
        return torch.zeros_like(x_t)

    sample(model, SHAPE, sampler="euler", num_inference_steps=25)
    assert seen[0].dtype == torch.float32 and seen[1][0].item() == pytest.approx(957.375)
    seen.clear()
    sample(model, SHAPE, sampler="DPM++ 2M Karras", num_inference_steps=25)
    assert seen[0].dtype == torch.long and len(seen) == 25


def test_aliases_name_the_same_samplers():
    for name, alias in SAMPLER_ALIASES.items():
        assert alias.sampler in SAMPLERS, name
    kwargs = dict(num_inference_steps=10, generator=None, x_T=torch.ones(SHAPE))
    torch.testing.assert_close(sample(fake_model, SHAPE, sampler="DPM++ 2M Karras", **kwargs),
                               sample(fake_model, SHAPE, sampler="dpmpp_2m", use_karras_sigmas=True, **kwargs))
    torch.testing.assert_close(sample(fake_model, SHAPE, sampler="Euler", **kwargs),
                               sample(fake_model, SHAPE, sampler="euler", **kwargs))


def test_karras_sigmas_closed_form():
    sigmas = karras_sigmas(0.1, 10.0, 5, rho=7.0)
    assert sigmas[0].item() == pytest.approx(10.0) and sigmas[-1].item() == pytest.approx(0.1)
    # evenly spaced in sigma^(1/rho)
    roots = sigmas ** (1 / 7)
    torch.testing.assert_close(roots.diff(), roots.diff()[:1].expand(4))


def test_sigma_at_interpolates_and_ends_at_zero():
    schedule = make_schedule("linear")
    sigmas = schedule.sigmas()
    assert sigma_at(10, schedule).item() == pytest.approx(sigmas[10].item())
    assert sigma_at(10.25, schedule).item() == pytest.approx(0.75 * sigmas[10].item() + 0.25 * sigmas[11].item())
    assert sigma_at(-1, schedule).item() == 0.0
    with pytest.raises(ValueError, match=r"t must be -1 or in \[0, 999\]"):
        sigma_at(1000, schedule)


def test_ddim_with_eta_one_has_ddpm_variance():
    schedule = make_schedule("linear")
    g = make_generator(3)
    x, eps, noise = randn(SHAPE, g), randn(SHAPE, g), randn(SHAPE, g)
    ddim = ddim_step(x, eps, 500, 480, schedule, noise=noise, eta=1.0)
    ddpm = ddpm_step(x, eps, 500, 480, schedule, noise=noise)
    torch.testing.assert_close(ddim.x_prev, ddpm.x_prev, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        ddim_step(x, eps, 500, 480, schedule, eta=-1.0)
