"""Flow matching's sampler against diffusers' `FlowMatchEulerDiscreteScheduler`, and its loss and path.

diffusers' scheduler keeps sigmas in [0, 1] and timesteps t = 1000 sigma; its `step` is Euler,
x' = x + (sigma' - sigma) v. A deterministic stand-in velocity model (v = a x + b t + c sin x, plus
a condition term) is called by both loops at the same points.
"""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusion_notes.device import make_generator, randn
from diffusion_notes.fewer_steps.flow import (
    T_SCALE,
    flow_euler_step,
    flow_matching_loss,
    flow_sample,
    flow_sigmas,
    linear_path,
)

SHAPE = (2, 4, 3, 3)
CASES = [(n, shift) for n in (1, 4, 25) for shift in (1.0, 3.0)]


def fake_velocity(x, t, cond=None):
    """A deterministic stand-in for v_theta: 0.3 x + 0.0004 t + 0.1 sin x (+ cond, broadcast per example)."""
    v = 0.3 * x + 0.0004 * t.to(x.dtype).view(-1, *([1] * (x.ndim - 1))) + 0.1 * torch.sin(x)
    return v if cond is None else v + cond.view(-1, *([1] * (x.ndim - 1)))


def reference(n, shift):
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(n)
    return ref


def run_reference(n, shift, x1, velocity):
    """diffusers' pipeline loop from x1: (the model's inputs, the final sample)."""
    ref = reference(n, shift)
    x, inputs = x1.clone(), []
    for t in ref.timesteps:
        inputs.append(x)
        x = ref.step(velocity(x, t.expand(x.shape[0])), t, x).prev_sample
    return inputs, x


@pytest.mark.parametrize("n, shift", CASES)
def test_sigmas_equal_diffusers(n, shift):
    ref = reference(n, shift)
    sigmas = flow_sigmas(n, shift)
    assert sigmas.shape == ref.sigmas.shape == (n + 1,)
    torch.testing.assert_close(sigmas, ref.sigmas, rtol=0, atol=1e-6)
    torch.testing.assert_close(sigmas[:-1] * T_SCALE, ref.timesteps, rtol=0, atol=1e-4)
    assert sigmas[0] == 1 and sigmas[-1] == 0


@pytest.mark.parametrize("n, shift", CASES)
def test_euler_loop_equals_diffusers(n, shift):
    x1 = randn(SHAPE, make_generator(1))
    ref_inputs, ref_out = run_reference(n, shift, x1, fake_velocity)
    sigmas = flow_sigmas(n, shift).tolist()
    x = x1.clone()
    for i in range(n):
        torch.testing.assert_close(x, ref_inputs[i], rtol=0, atol=1e-5)
        t = torch.full((SHAPE[0],), sigmas[i] * T_SCALE)
        x = flow_euler_step(x, fake_velocity(x, t), sigmas[i], sigmas[i + 1])
    torch.testing.assert_close(x, ref_out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n, shift", CASES)
def test_flow_sample_equals_diffusers(n, shift):
    x1 = randn(SHAPE, make_generator(1))
    _, ref_out = run_reference(n, shift, x1, fake_velocity)
    seen = []
    out = flow_sample(fake_velocity, x1, n, shift=shift, callback=lambda i, sigma, x: seen.append(sigma))
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    assert seen == flow_sigmas(n, shift)[:-1].tolist()


@pytest.mark.parametrize("n, shift", [(4, 1.0), (25, 3.0)])
def test_guided_flow_sample_equals_diffusers_with_guided_velocity(n, shift):
    """Guidance combines velocities as it combines eps: v_u + s (v_c - v_u), each from its own condition."""
    x1 = randn(SHAPE, make_generator(1))
    cond, uncond, s = torch.tensor([0.5, -0.2]), torch.tensor([0.0, 0.0]), 4.0

    def guided(x, t):
        v_c, v_u = fake_velocity(x, t, cond), fake_velocity(x, t, uncond)
        return v_u + s * (v_c - v_u)

    _, ref_out = run_reference(n, shift, x1, guided)
    out = flow_sample(fake_velocity, x1, n, cond=cond, uncond=uncond, guidance_scale=s, shift=shift)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5)
    unguided = flow_sample(fake_velocity, x1, n, cond=cond, shift=shift)
    assert (out - unguided).abs().max() > 1e-2  # the guidance did something


def test_linear_path_ends():
    x0, x1 = randn(SHAPE, make_generator(1)), randn(SHAPE, make_generator(2))
    torch.testing.assert_close(linear_path(x0, x1, torch.zeros(SHAPE[0])), x0, rtol=0, atol=0)
    torch.testing.assert_close(linear_path(x0, x1, torch.ones(SHAPE[0])), x1, rtol=0, atol=0)
    half = linear_path(x0, x1, torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(half[0], (x0[0] + x1[0]) / 2)
    torch.testing.assert_close(half[1], 0.75 * x0[1] + 0.25 * x1[1])


def test_flow_matching_loss_is_zero_for_the_true_velocity():
    """A model that returns x1 - x0 exactly (it knows the pair) has loss 0; anything else has loss > 0."""
    x0, x1 = randn(SHAPE, make_generator(1)), randn(SHAPE, make_generator(2))
    sigma = torch.tensor([0.3, 0.8])
    calls = []

    def oracle(x, t):
        calls.append((x, t))
        return x1 - x0

    assert flow_matching_loss(oracle, x0, sigma=sigma, x1=x1).item() == 0
    x, t = calls[0]
    torch.testing.assert_close(x, linear_path(x0, x1, sigma))  # called at x_sigma ...
    torch.testing.assert_close(t, sigma * T_SCALE)  # ... and t = 1000 sigma
    off = flow_matching_loss(lambda x, t: x1 - x0 + 0.1, x0, sigma=sigma, x1=x1)
    torch.testing.assert_close(off, torch.tensor(0.01))
    assert flow_matching_loss(lambda x, t: x1, x0, sigma=sigma, x1=x1) > 0


def test_flow_matching_loss_draws_sigma_and_noise_from_the_generator():
    x0 = randn(SHAPE, make_generator(1))
    model = lambda x, t: 0.5 * x  # noqa: E731
    a = flow_matching_loss(model, x0, make_generator(7))
    b = flow_matching_loss(model, x0, make_generator(7))
    c = flow_matching_loss(model, x0, make_generator(8))
    assert a == b and a != c and a > 0


@pytest.mark.parametrize("n", [0, 1001, 2.0, True])
def test_bad_step_counts_raise(n):
    with pytest.raises(ValueError, match="number of steps"):
        flow_sigmas(n)
