"""Heun, LMS, DPM2, DPM2 a, DPM++ 2M SDE and UniPC against diffusers' schedulers, call by call.

Each sampler runs through the real `samplers.loop` (its grid, its coefficients computed once,
its update) and diffusers' pipeline loop (`set_timesteps`, then `scale_model_input` / model /
`step` at every timestep) from the same x_T, with a deterministic stand-in model (eps = a x + b t).
At every model call we compare our x_t with what diffusers hands the model (its k-samplers
carry x_sigma = x_t sqrt(1 + sigma^2); `scale_model_input` turns it back into x_t), our x0_hat
with its `pred_original_sample` where it returns one, and the final samples. Heun and DPM2 call
the model twice per step: both loops make 2n - 1 calls. The stochastic samplers (DPM2 a, DPM++
2M SDE) get generators seeded alike and draw the same noise in the same order.

The samplers' modules are imported directly: each registers itself in `samplers.base.SAMPLERS`.
"""

import inspect

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

from diffusion_notes.device import make_generator, randn
from diffusion_notes.foundations.samplers import (
    PreparedStep,
    dpm2,
    dpmpp_2m_sde,
    heun,
    lms,
    loop,
    unipc,
)
from diffusion_notes.foundations.samplers.base import SAMPLERS
from diffusion_notes.foundations.schedules import make_schedule

SHAPE = (4, 3)
OURS = {s.name: s for s in (heun.HEUN, lms.LMS, dpm2.DPM2, dpm2.DPM2_A, dpmpp_2m_sde.DPMPP_2M_SDE, unipc.UNIPC)}
SCHEDULERS = {
    "heun": HeunDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
    "dpm2": KDPM2DiscreteScheduler,
    "dpm2_a": KDPM2AncestralDiscreteScheduler,
    "dpmpp_2m_sde": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}
K_SAMPLERS = ("heun", "lms", "dpm2", "dpm2_a")  # carry x_sigma; the others carry x_t
TWO_CALLS = ("heun", "dpm2", "dpm2_a")
CONFIGS = {  # as tests/test_samplers_reference.py
    "default": {},
    "sd1": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                set_alpha_to_one=False, clip_sample=False),
}
CASES = [(s, c, n, k) for s in SCHEDULERS for c in CONFIGS for n in (10, 25, 50) for k in (False, True)]


def fake_model(x_t, t):
    """A deterministic stand-in for a network: eps = 0.3 x + 0.0004 t (t may be fractional)."""
    return 0.3 * x_t + 0.0004 * t.to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))


def make_reference(sampler, config, n, karras):
    cls = SCHEDULERS[sampler]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in CONFIGS[config].items() if k in accepted}
    ref = cls(**kwargs, **OURS[sampler].diffusers_config, use_karras_sigmas=karras)
    ref.set_timesteps(n)
    return ref


def our_schedule(ref):
    """Our schedule for a diffusers scheduler's betas (Heun's and KDPM2's defaults are 0.00085..0.012, linear)."""
    return make_schedule(ref.config.beta_schedule, beta_start=ref.config.beta_start, beta_end=ref.config.beta_end)


def prepare(sampler, grid, schedule):
    """What `samplers.prepare_step` does for a registered sampler: its coefficients at every call, as floats."""
    c = sampler.coefficients(grid, schedule)
    coefficients = [type(c)(*values) for values in zip(*(v.tolist() for v in c))]
    return PreparedStep(sampler.update, coefficients, sampler.draws_noise(grid))


def run_ours(sampler, ref, n, karras, x_T, generator):
    s = OURS[sampler]
    schedule = our_schedule(ref)
    grid = s.make_grid(n, schedule, steps_offset=ref.config.steps_offset, use_karras_sigmas=karras)
    if (sampler, karras, ref.config.beta_end) == ("dpmpp_2m_sde", True, 0.02):
        # The SDE feels the grid's last sigmas: from DDPM's betas in float32, diffusers' sigma_min
        # is 8e-5 (relative) off ours, and its Karras sigmas with it, which moves the sample by up
        # to 2.8e-4 (of ~30). The grid itself is tested below; here the update runs on diffusers' sigmas.
        run_grid = grid._replace(sigmas=ref.sigmas.double())
    else:
        run_grid = grid
    inputs, x0_hats = [], []

    def record(i, t, x_t, x0_hat):
        inputs.append(x_t)
        x0_hats.append(x0_hat)

    out = loop(fake_model, x_T, run_grid, prepare(s, run_grid, schedule), generator=generator, callback=record)
    return grid, inputs, x0_hats, out


def run_reference(sampler, ref, x_T, generator):
    """diffusers' pipeline loop from our x_T (in its scale); what it hands the model, its x0_hat, its result."""
    x = x_T * (1 + ref.sigmas[0] ** 2) ** 0.5 if sampler in K_SAMPLERS else x_T.clone()
    takes_generator = "generator" in inspect.signature(ref.step).parameters
    inputs, x0_hats = [], []
    for t in ref.timesteps:
        model_input = ref.scale_model_input(x, t)
        inputs.append(model_input)
        eps = fake_model(model_input, t.view(1))
        out = ref.step(eps, t, x, **({"generator": generator} if takes_generator else {}))
        x0_hats.append(getattr(out, "pred_original_sample", None))
        x = out.prev_sample
    return inputs, x0_hats, x


def deviation(sampler, config, n, karras):
    """Our trajectory and diffusers': the pairs to compare, and the grids' timesteps."""
    ref = make_reference(sampler, config, n, karras)
    x_T = randn(SHAPE, make_generator(1))
    grid, inputs, x0_hats, out = run_ours(sampler, ref, n, karras, x_T, make_generator(2))
    ref_inputs, ref_x0, ref_out = run_reference(sampler, ref, x_T, make_generator(2))
    pairs = list(zip(inputs, ref_inputs)) + [(a, b) for a, b in zip(x0_hats, ref_x0) if b is not None]
    return grid, ref, pairs + [(out, ref_out)], len(inputs), len(ref_inputs)


@pytest.mark.parametrize("sampler, config, n, karras", CASES)
def test_trajectory_equals_diffusers(sampler, config, n, karras):
    grid, ref, pairs, calls, ref_calls = deviation(sampler, config, n, karras)
    assert calls == ref_calls == (2 * n - 1 if sampler in TWO_CALLS else n)
    # Karras timesteps (and DPM2's midpoints) invert sigma(t); diffusers' float32 alpha_bar moves them ~1e-3
    torch.testing.assert_close(grid.timesteps.double(), ref.timesteps.double(), rtol=1e-4, atol=2e-3)
    if sampler not in ("dpm2", "dpm2_a"):  # their `sigmas` are where x sits at each call, then 0, as ours
        torch.testing.assert_close(grid.sigmas.float(), ref.sigmas.float(), rtol=1e-4, atol=0)
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", list(SCHEDULERS))
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_grids_equal_diffusers_for_every_spacing(sampler, spacing):
    for n in (7, 10, 25):
        offset = 1 if spacing == "leading" else 0
        ref = SCHEDULERS[sampler](timestep_spacing=spacing, steps_offset=offset, **OURS[sampler].diffusers_config)
        ref.set_timesteps(n)
        grid = OURS[sampler].make_grid(n, our_schedule(ref), spacing=spacing, steps_offset=offset)
        torch.testing.assert_close(grid.timesteps.double(), ref.timesteps.double(), rtol=0, atol=2e-3)
        # diffusers' float32 alpha_bar keeps ~4 digits of sigma_1 = 0.014
        if sampler in ("heun", "lms"):  # their `sigmas` are where x sits at each call, then 0, as ours
            torch.testing.assert_close(grid.sigmas.float(), ref.sigmas.float(), rtol=2e-4, atol=0)
        assert OURS[sampler].init_noise_scale(grid, spacing) == pytest.approx(
            float(ref.init_noise_sigma / (1 + ref.sigmas[0] ** 2) ** 0.5 if sampler in K_SAMPLERS
                  else ref.init_noise_sigma), rel=1e-5)


@pytest.mark.parametrize("sampler", TWO_CALLS)
def test_both_calls_of_a_step_get_its_index(sampler):
    """A model with `takes_step = True` sees the user-facing step: 0, 0, 1, 1, ..., n - 1 (prompt editing)."""
    n = 6
    schedule = make_schedule("scaled_linear")
    grid = OURS[sampler].make_grid(n, schedule)
    seen = []

    class StepModel:
        takes_step = True

        def __call__(self, x, t, step):
            seen.append(step)
            return fake_model(x, t)

    loop(StepModel(), randn(SHAPE, make_generator(0)), grid, prepare(OURS[sampler], grid, schedule),
         generator=make_generator(1))
    assert seen == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert seen == grid.step_index.tolist()


def test_noise_is_drawn_where_diffusers_draws_it():
    """DPM2 a draws at each step's second call; DPM++ 2M SDE at every step; the others never."""
    schedule = make_schedule("scaled_linear")
    draws = {name: s.draws_noise(s.make_grid(4, schedule)) for name, s in OURS.items()}
    assert draws["dpm2_a"] == [False, True, False, True, False, True, False]
    assert draws["dpmpp_2m_sde"] == [True] * 4
    for name in ("heun", "lms", "dpm2", "unipc"):
        assert not any(draws[name])


def test_the_seed_matters_for_the_stochastic_samplers_only():
    """Two generators give two samples for DPM2 a and DPM++ 2M SDE, one for the deterministic samplers."""
    schedule = make_schedule("scaled_linear")
    x_T = randn(SHAPE, make_generator(0))
    for name, s in OURS.items():
        grid = s.make_grid(10, schedule)
        a, b = (loop(fake_model, x_T, grid, prepare(s, grid, schedule), generator=make_generator(seed))
                for seed in (1, 2))
        assert torch.equal(a, b) == (name not in ("dpm2_a", "dpmpp_2m_sde")), name


def test_registered_with_unique_webui_names():
    names = ["Heun", "LMS", "LMS Karras", "DPM2", "DPM2 Karras", "DPM2 a", "DPM2 a Karras", "DPM++ 2M SDE",
             "DPM++ 2M SDE Karras", "UniPC"]
    for name, s in OURS.items():
        assert SAMPLERS[name] is s
        assert all(karras <= s.karras for karras in s.webui_names.values())
        ref = SCHEDULERS[name](**s.diffusers_config)
        assert type(ref).__name__ == s.diffusers_class
        assert ref.config.timestep_spacing == s.default_spacing
    ours = [webui for s in OURS.values() for webui in s.webui_names]
    assert sorted(ours) == sorted(names)
    every = [webui for s in SAMPLERS.values() for webui in s.webui_names]
    assert len(every) == len(set(every))


def test_second_half_without_state_is_an_error():
    schedule = make_schedule("scaled_linear")
    for s in (heun.HEUN, dpm2.DPM2):
        grid = s.make_grid(3, schedule)
        step = prepare(s, grid, schedule)
        x = randn(SHAPE, make_generator(0))
        with pytest.raises(ValueError, match="same `state`"):
            s.update(x, fake_model(x, grid.timesteps[1:2]), step.coefficients[1], state={})


@pytest.mark.parametrize("start", [1, 3, 7])
def test_unipc_started_part_way_is_diffusers_from_its_begin_index(start):
    """img2img with UniPC: diffusers' `UniPCMultistepScheduler` after `set_begin_index(start)` has no
    history, so its first call predicts with order 1 and its first correction is UniC-1 (`lower_order_nums`
    counts from the begin index); ours, started at `start_step`, must do the same."""
    ref = make_reference("unipc", "sd1", 10, False)
    grid = OURS["unipc"].make_grid(10, our_schedule(ref), steps_offset=ref.config.steps_offset)
    x_start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(start), dtype=torch.float64)
    ours = loop(fake_model, x_start, grid, prepare(OURS["unipc"], grid, our_schedule(ref)), start_step=start)
    ref.set_begin_index(start)
    x = x_start.clone()
    for t in ref.timesteps[start:]:
        x = ref.step(fake_model(x, t.view(1)), t, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-6, rtol=1e-6), (ours - x).abs().max()
