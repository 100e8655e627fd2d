"""Classifier guidance: the formula, the gradient it follows, and guided sampling with an exact classifier."""

import math

import pytest
import torch

from diffusion_notes.foundations import diffusion, samplers
from diffusion_notes.foundations.guidance import (
    ClassifierGuidedDenoiser,
    classifier_guidance,
    classifier_log_prob_grad,
)
from diffusion_notes.foundations.oracle import ideal_eps_model
from diffusion_notes.foundations.schedules import make_schedule

SCHEDULE = make_schedule("scaled_linear")


class LinearClassifier(torch.nn.Module):
    """logits = x W^T + b, ignoring t; its log-softmax gradient is W_y - sum_k p_k W_k."""

    def __init__(self, seed=0, num_classes=3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(num_classes, 2, generator=g))
        self.b = torch.nn.Parameter(torch.randn(num_classes, generator=g))

    def forward(self, x, t):
        return x @ self.W.T + self.b  # (B, K)


class ExactTwoPointClassifier:
    """p(y | x_t) for data {centres[0] (class 0), centres[1] (class 1)}, equally likely, at timestep t."""

    def __init__(self, centres):
        self.centres = centres  # (2, 2)

    def __call__(self, x_t, t):
        ab = SCHEDULE.alphas_cumprod[t].to(x_t)[:, None, None]  # (B, 1, 1)
        sq = (x_t[:, None, :] - ab.sqrt() * self.centres[None]).pow(2).sum(-1)  # (B, 2)
        return -sq / (2 * (1 - ab[:, :, 0]))  # (B, 2) logits


def test_formula_against_a_hand_computation():
    eps = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    grad = torch.tensor([[1.0, 2.0], [-4.0, 0.5]])
    alpha_bar = torch.tensor([[0.36], [0.64]])  # sqrt(1 - ab) = 0.8 and 0.6
    expected = torch.tensor([[0.5 - 3 * 0.8 * 1.0, -1.0 - 3 * 0.8 * 2.0],
                             [2.0 + 3 * 0.6 * 4.0, 0.0 - 3 * 0.6 * 0.5]])
    torch.testing.assert_close(classifier_guidance(eps, grad, alpha_bar, 3.0), expected)
    torch.testing.assert_close(classifier_guidance(eps, grad, 0.5, 0.0), eps)


def test_formula_errors():
    eps = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="same shape"):
        classifier_guidance(eps, torch.zeros(2, 3), 0.5, 1.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        classifier_guidance(eps, eps, 0.5, -1.0)
    with pytest.raises(ValueError, match="alpha_bar_t"):
        classifier_guidance(eps, eps, 0.0, 1.0)


def test_gradient_matches_the_closed_form_of_a_linear_classifier():
    clf = LinearClassifier()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    t = torch.full((6,), 300)
    with torch.no_grad():  # as inside a sampler
        grad = classifier_log_prob_grad(clf, x, t, y)
        p = torch.softmax(clf(x, t), dim=1)  # (B, K)
        expected = clf.W[y] - p @ clf.W  # (B, 2)
    torch.testing.assert_close(grad, expected)


def test_the_guided_step_raises_the_class_log_probability():
    """eps_hat - eps points against grad log p, so x0_hat moves along it and log p(y | x) goes up."""
    clf = LinearClassifier(seed=2)
    g = torch.Generator().manual_seed(3)
    x_t, eps = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    y, t = torch.arange(8) % 3, torch.full((8,), 500)
    grad = classifier_log_prob_grad(clf, x_t, t, y)
    ab = SCHEDULE.alphas_cumprod[500].item()
    shift = (diffusion.x0_from_eps(x_t, t, classifier_guidance(eps, grad, ab, 2.0), SCHEDULE)
             - diffusion.x0_from_eps(x_t, t, eps, SCHEDULE))  # (B, 2): what guidance does to x0_hat
    torch.testing.assert_close(shift, 2.0 * (1 - ab) / math.sqrt(ab) * grad, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        log_p = torch.log_softmax(clf(x_t, t), 1).gather(1, y[:, None])
        log_p_moved = torch.log_softmax(clf(x_t + 1e-2 * shift, t), 1).gather(1, y[:, None])
    assert (log_p_moved > log_p).all()


def test_denoiser_at_scale_zero_is_the_model_and_passes_the_condition():
    calls = []

    def model(x_t, t, cond=None):
        calls.append(cond)
        return 0.1 * x_t

    x_t, t = torch.ones(4, 2), torch.full((4,), 10)
    y = torch.zeros(4, dtype=torch.long)
    out = ClassifierGuidedDenoiser(model, LinearClassifier(), y, SCHEDULE, 0.0)(x_t, t)
    torch.testing.assert_close(out, 0.1 * x_t)
    ClassifierGuidedDenoiser(model, LinearClassifier(), y, SCHEDULE, 1.0, cond=y)(x_t, t)
    assert calls[0] is None and calls[1] is y


def test_denoiser_on_a_fractional_grid_uses_the_interpolated_alpha_bar():
    clf = LinearClassifier(seed=4)
    x_t = torch.randn(3, 2, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2])
    guided = ClassifierGuidedDenoiser(lambda x, t: torch.zeros_like(x), clf, y, SCHEDULE, 1.5)
    at_int = guided(x_t, torch.full((3,), 400))
    at_float = guided(x_t, torch.full((3,), 400.0))
    torch.testing.assert_close(at_float, at_int, rtol=1e-5, atol=1e-6)


def test_exact_classifier_and_exact_eps_give_conditional_samples_at_scale_one():
    """With the true p_t(y | x_t) and the true eps of p(x), guidance at s = 1 samples from p(x | y)."""
    centres = torch.tensor([[1.5, 0.0], [-1.5, 0.0]])
    eps_model = ideal_eps_model(centres, SCHEDULE)  # the exact unconditional model of the two points
    y = torch.zeros(200, dtype=torch.long)  # ask for class 0 everywhere
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(6))

    def share_in_class(scale):
        model = ClassifierGuidedDenoiser(eps_model, ExactTwoPointClassifier(centres), y, SCHEDULE, scale)
        x = samplers.sample(model, (200, 2), sampler="ddim", num_inference_steps=50, schedule=SCHEDULE, x_T=x_T)
        return ((x - centres[0]).norm(dim=1) < 0.1).float().mean().item()

    unguided, guided = share_in_class(0.0), share_in_class(1.0)
    assert 0.3 < unguided < 0.7  # half the points go to each centre
    assert guided > 0.97
