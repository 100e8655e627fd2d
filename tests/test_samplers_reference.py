"""Our DDIM, Euler, Euler ancestral and DPM-Solver++(2M) trajectories against diffusers' schedulers.

For a deterministic stand-in model (eps = a x + b t), our `sample` loop and
diffusers' `set_timesteps` / `scale_model_input` / `step` loop start from the
same x_T and must visit the same points. diffusers' Euler schedulers carry
x_sigma = x_t * sqrt(1 + sigma^2); their `scale_model_input` turns it back into
our x_t, so we compare our x_t with what diffusers hands the model at every
step, our x0_hat with its `pred_original_sample`, and the final samples.

Noise for the stochastic samplers (Euler ancestral, DDIM with eta > 0): both
loops get a generator seeded alike; diffusers draws one `randn_tensor` of the
sample's shape per step on the CPU, and so does our loop (through
`device.randn`), so both consume the same draws in the same order.
"""

import inspect

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from diffusion_notes.device import make_generator, randn
from diffusion_notes.foundations.grids import make_grid
from diffusion_notes.foundations.samplers import sample
from diffusion_notes.foundations.schedules import make_schedule

SHAPE = (4, 3)
SCHEDULERS = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}
CONFIGS = {
    "default": {},
    "sd1": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                set_alpha_to_one=False, clip_sample=False),
}
CASES = [(s, c, n, False) for s in SCHEDULERS for c in CONFIGS for n in (10, 25, 50)]
CASES += [(s, c, n, True) for s in ("euler", "dpmpp_2m") for c in CONFIGS for n in (10, 25, 50)]


def fake_model(x_t, t):
    """A deterministic stand-in for a network: eps = 0.3 x + 0.0004 t (t may be fractional)."""
    return 0.3 * x_t + 0.0004 * t.to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))


def make_reference(sampler, config, n, karras):
    cls = SCHEDULERS[sampler]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in CONFIGS[config].items() if k in accepted}
    if karras:
        kwargs["use_karras_sigmas"] = True
    ref = cls(**kwargs)
    ref.set_timesteps(n)
    return ref


def our_options(sampler, config, ref):
    """What diffusers' configuration means for our `sample`."""
    options = dict(schedule=make_schedule("linear" if config == "default" else "scaled_linear"),
                   steps_offset=ref.config.get("steps_offset", 0))
    if sampler == "ddim":
        options.update(set_alpha_to_one=ref.config.set_alpha_to_one,
                       clip_x0=ref.config.clip_sample_range if ref.config.clip_sample else None)
    return options


def run_reference(ref, x_T, generator, eta=None):
    """diffusers' pipeline loop, started at our x_T (converted to its scale); returns the trace."""
    sigmas = getattr(ref, "sigmas", None)
    euler = isinstance(ref, (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler))
    x = x_T * (1 + sigmas[0] ** 2) ** 0.5 if euler else x_T.clone()
    inputs, x0_hats = [], []
    for t in ref.timesteps:
        model_input = ref.scale_model_input(x, t)
        inputs.append(model_input)
        eps = fake_model(model_input, t.view(1))
        kwargs = dict(generator=generator) if isinstance(ref, EulerAncestralDiscreteScheduler) else {}
        if eta is not None:
            kwargs = dict(eta=eta, generator=generator)
        out = ref.step(eps, t, x, **kwargs)
        x0_hats.append(getattr(out, "pred_original_sample", None))
        x = out.prev_sample
    return inputs, x0_hats, x


def run_ours(sampler, n, x_T, generator, karras, **options):
    inputs, x0_hats, ts = [], [], []

    def record(i, t, x_t, x0_hat):
        inputs.append(x_t)
        x0_hats.append(x0_hat)
        ts.append(t)

    out = sample(fake_model, SHAPE, sampler=sampler, num_inference_steps=n, x_T=x_T, generator=generator,
                 callback=record, use_karras_sigmas=karras, **options)
    return inputs, x0_hats, ts, out


@pytest.mark.parametrize("sampler, config, n, karras", CASES)
def test_trajectory_equals_diffusers(sampler, config, n, karras):
    ref = make_reference(sampler, config, n, karras)
    x_T = randn(SHAPE, make_generator(1))
    ref_inputs, ref_x0, ref_out = run_reference(ref, x_T, make_generator(2))
    inputs, x0_hats, ts, out = run_ours(sampler, n, x_T, make_generator(2), karras,
                                        **our_options(sampler, config, ref))
    # Karras timesteps invert sigma(t); diffusers' float32 alpha_bar moves them by up to ~5e-4.
    torch.testing.assert_close(torch.tensor(ts, dtype=torch.float64), ref.timesteps.double(),
                               rtol=1e-4, atol=1e-3)
    assert len(inputs) == len(ref_inputs) == n
    for ours, theirs in zip(inputs, ref_inputs):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    for ours, theirs in zip(x0_hats, ref_x0):
        if theirs is not None:  # DPMSolverMultistepScheduler does not return it
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_with_eta_equals_diffusers(config, eta):
    ref = make_reference("ddim", config, 25, False)
    x_T = randn(SHAPE, make_generator(1))
    _, _, ref_out = run_reference(ref, x_T, make_generator(5), eta=eta)
    *_, out = run_ours("ddim", 25, x_T, make_generator(5), None, eta=eta, **our_options("ddim", config, ref))
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", list(SCHEDULERS))
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_grids_equal_diffusers_for_every_spacing(sampler, spacing):
    for n in (7, 10, 25):
        ref = SCHEDULERS[sampler](timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
        ref.set_timesteps(n)
        grid = make_grid(sampler, n, make_schedule("linear"), spacing, ref.config.steps_offset)
        torch.testing.assert_close(grid.timesteps.double(), ref.timesteps.double(), rtol=0, atol=1e-3)
        if grid.sigmas is not None:
            # sigma_1 = 0.014 is 1 - alpha_bar ~ 2e-4 over alpha_bar: diffusers' float32 keeps ~4 digits
            torch.testing.assert_close(grid.sigmas.float(), ref.sigmas.float(), rtol=2e-4, atol=0)
