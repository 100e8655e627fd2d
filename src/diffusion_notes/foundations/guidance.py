r"""Classifier-free guidance: train with the condition sometimes dropped, sample with two predictions.

Training (`drop_condition`): replace each example's condition by a "null"
condition with probability p, so one network learns both eps(x_t, t, c) and
eps(x_t, t, null).

Sampling (`cfg_combine`): push the prediction away from the unconditional one,

    eps_hat = eps_uncond + s * (eps_cond - eps_uncond)

Two conventions for the same thing:

    diffusers, Stable Diffusion, the web UIs:  guidance_scale s      (s = 1: no guidance, s = 0: unconditional)
    Ho & Salimans 2022, GLIDE:                 guidance weight w     eps_hat = (1 + w) eps_cond - w eps_uncond

so s = 1 + w: SD's default s = 7.5 is w = 6.5, and w = 0 is plain conditional sampling.
`guided_eps` evaluates both predictions in ONE model call on a batch of 2B. `CFGDenoiser`
wraps a conditional model into the plain `model(x_t, t) -> eps` every sampler's loop calls,
and picks one 2B call or two B calls by the batch size (`MAX_GUIDED_BATCH`).

Classifier guidance (Dhariwal & Nichol 2021), the method classifier-free guidance replaced, is here
beside it: `classifier_guidance` shifts an (unconditional) prediction along the gradient of a
separately trained noisy-input classifier, `eps_hat = eps - s sqrt(1 - alpha_bar_t) grad log p_phi(y | x_t)`,
and `ClassifierGuidedDenoiser` wraps a model and a classifier into the same `model(x_t, t) -> eps`.
"""

from __future__ import annotations

import math

import torch

from diffusion_notes.foundations.schedules import Schedule, broadcast_at, expand_like
from diffusion_notes.foundations.sigmas import sigma_at
from diffusion_notes.rng import per_item_rand


def check_guidance_scale(guidance_scale) -> float:
    """Return the scale as a float; ValueError unless it is a finite number >= 0."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not (
        math.isfinite(guidance_scale) and guidance_scale >= 0
    ):
        raise ValueError(
            "guidance_scale must be a finite number >= 0 (1 = no guidance, 0 = unconditional), "
            f"got {guidance_scale!r}"
        )
    return float(guidance_scale)


def drop_condition(cond, p: float, null, generator: torch.Generator | None = None):
    """Replace each row of `cond` by `null` with probability p: condition dropout for guidance training.

    `cond` is (B,) labels, (B, ...) embeddings, or a dict of such tensors that are dropped together
    (a caption's pooled embedding, token states and mask); `null` is the null label (an int), a null
    embedding shaped like one row, cond[0], or a dict with one such row per key. One uniform number
    per row is drawn from `generator` (on its device, then moved), as
    `torch.rand(B, generator=generator) < p`. Returns a new tensor (or dict); `cond` is unchanged.
    The uniforms are per item (`rng.per_item_rand`): in a data-parallel step each process draws
    them for the whole global batch and keeps its own rows, so it drops exactly the rows one process would.
    DALL-E 2 drops the text 10% (prior) or 50% (decoder) of the time; GLIDE and SD about 10%.

    Book: eq-cfg-dropout
    Paper: Ho & Salimans 2022 (Classifier-Free Diffusion Guidance), Algorithm 1
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if isinstance(cond, dict):
        if not isinstance(null, dict) or set(null) != set(cond):
            raise ValueError(f"null must be a dict with the keys of cond, {sorted(cond)}, got "
                             f"{sorted(null) if isinstance(null, dict) else type(null).__name__}")
        sizes = {v.shape[0] for v in cond.values() if isinstance(v, torch.Tensor) and v.ndim}
        if len(sizes) != 1:
            raise ValueError(f"every tensor of cond must have the same batch size, got {sorted(sizes)}")
        drop = _drop_rows(sizes.pop(), p, generator)  # (B,)
        return {key: _replace_rows(value, drop, null[key]) for key, value in cond.items()}
    if not isinstance(cond, torch.Tensor) or cond.ndim < 1:
        raise ValueError("cond must be a tensor with a batch dimension, (B,) labels or (B, ...) embeddings")
    return _replace_rows(cond, _drop_rows(cond.shape[0], p, generator), null)


def _drop_rows(batch_size: int, p: float, generator) -> torch.Tensor:
    return per_item_rand(batch_size, generator) < p  # (B,), one uniform per item (all N in a data-parallel shard)


def _replace_rows(cond: torch.Tensor, drop: torch.Tensor, null) -> torch.Tensor:
    null = torch.as_tensor(null, dtype=cond.dtype, device=cond.device)
    if null.shape != cond.shape[1:]:
        raise ValueError(
            f"null must be shaped like one row of cond, {tuple(cond.shape[1:])}, got {tuple(null.shape)}"
        )
    drop = drop.to(cond.device).view(-1, *([1] * (cond.ndim - 1)))  # (B, 1, ...)
    return torch.where(drop, null, cond)


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale) -> torch.Tensor:
    r"""The guided noise prediction, in diffusers' convention (scale s = 1 + w).

    $$\hat\epsilon = \epsilon_\text{uncond} + s\,(\epsilon_\text{cond} - \epsilon_\text{uncond})
                   = (1 + w)\,\epsilon_\text{cond} - w\,\epsilon_\text{uncond}$$

    s = 1 gives eps_cond, s = 0 gives eps_uncond, s > 1 extrapolates past eps_cond.
    `scale` may be a float or a tensor that broadcasts against eps (one scale per example).

    Book: eq-cfg-eps
    Book: eq-cfg-score
    Paper: Ho & Salimans 2022, eq. 6 (with w = s - 1); Nichol et al. 2022 (GLIDE), eq. 2 (s)
    """
    if eps_uncond.shape != eps_cond.shape:
        raise ValueError(
            f"eps_uncond and eps_cond must have the same shape, got {tuple(eps_uncond.shape)} "
            f"and {tuple(eps_cond.shape)}"
        )
    return eps_uncond + scale * (eps_cond - eps_uncond)


def concat_conditions(cond, uncond):
    """Stack cond on top of uncond along dim 0: tensors, tuples/lists of tensors, or dicts of tensors."""
    if isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor):
        if cond.shape != uncond.shape:
            raise ValueError(
                f"cond and uncond must have the same shape, got {tuple(cond.shape)} and {tuple(uncond.shape)}"
            )
        return torch.cat([cond, uncond.to(cond.device)], dim=0)  # (2B, ...)
    if isinstance(cond, (tuple, list)) and isinstance(uncond, (tuple, list)) and len(cond) == len(uncond):
        return type(cond)(concat_conditions(c, u) for c, u in zip(cond, uncond))
    if isinstance(cond, dict) and isinstance(uncond, dict) and cond.keys() == uncond.keys():
        return {key: concat_conditions(cond[key], uncond[key]) for key in cond}
    raise ValueError(
        "cond and uncond must both be tensors, tuples/lists of tensors of the same length, or dicts "
        f"of tensors with the same keys; got {type(cond).__name__} and {type(uncond).__name__}"
    )


# One 2B call or two B calls? One call is the cheaper while the 2B batch is small: it pays the
# per-call overhead once. But on a CPU a large batch's activations outgrow the cache, and then two
# calls on B cost less than one on 2B. Off the CPU the rule always batches, as diffusers does (a GPU
# is not measured here).
# Measured with the chapters' toy MLP (width 96, one thread, 512 KiB of L2 per core), one model call
# on 2B rows against two on B, relative to one on B (`python benchmarks/samplers.py --crossover`):
#     B =  500: 1.85x against 2.03x      B = 1500: 2.13x against 2.19x
#     B = 1000: 1.92x against 2.10x      B = 1750: 2.27x against 2.02x
#     B = 1250: 2.18x against 2.16x      B = 2000: 2.18x against 2.07x    (one run, fastest of 80)
# The two cross near B = 1250-1500 on an idle machine, near B = 1000 with another process running;
# so one call up to 2B = 2048 rows. (A rule on rows, not elements: image models reach it only at
# batches far beyond what a CPU samples, and keep their one call.)
MAX_GUIDED_BATCH = 2048


class CFGDenoiser:
    """Classifier-free guidance as a model: `CFGDenoiser(model, cond, uncond, s)(x_t, t)` is the guided eps.

    It turns `model(x_t, t, cond)` into the `model(x_t, t) -> eps` that every sampler's loop calls:

        guidance_scale == 1:  model(x_t, t, cond) (or model(x_t, t) when cond is None); uncond unused
        otherwise:            cfg_combine(eps_uncond, eps_cond, s), the two predictions made by
                              ONE call on 2B examples (x_t and t repeated, `concat_conditions(cond,
                              uncond)` stacked once, here) or by TWO calls on B examples

    The rule: one call unless x_t is on the CPU and 2B > `max_batch` (default `MAX_GUIDED_BATCH`,
    measured; None: always one call). Both give the same numbers, to float rounding.
    """

    def __init__(self, model, cond=None, uncond=None, guidance_scale: float = 1.0,
                 max_batch: int | None = MAX_GUIDED_BATCH):
        self.model, self.cond, self.uncond = model, cond, uncond
        self.guidance_scale = check_guidance_scale(guidance_scale)
        self.max_batch = max_batch
        self.both = None
        if self.guidance_scale != 1.0:
            if cond is None or uncond is None:
                raise ValueError(
                    f"guidance_scale={self.guidance_scale} needs both a condition `cond` and an unconditional "
                    "condition `uncond` (e.g. the null label); use guidance_scale=1 for unguided sampling"
                )
            self.both = concat_conditions(cond, uncond)  # (2B, ...): cond on top of uncond

    def batches(self, x_t: torch.Tensor) -> bool:
        """Whether the two predictions come from one call on 2B examples (else two calls on B)."""
        return self.max_batch is None or x_t.device.type != "cpu" or 2 * x_t.shape[0] <= self.max_batch

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model, cond, s = self.model, self.cond, self.guidance_scale
        if s == 1.0:
            return model(x_t, t) if cond is None else model(x_t, t, cond)
        if not self.batches(x_t):
            return cfg_combine(model(x_t, t, self.uncond), model(x_t, t, cond), s)  # (B, ...)
        B = x_t.shape[0]
        eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), self.both)  # (2B, ...)
        if eps.shape[0] != 2 * B:
            raise ValueError(f"eps_model must return 2B = {2 * B} rows for a guided call, got {eps.shape[0]}")
        eps_cond, eps_uncond = eps.chunk(2, dim=0)  # (B, ...) each
        return cfg_combine(eps_uncond, eps_cond, s)


def guided_eps(eps_model, x_t: torch.Tensor, t: torch.Tensor, cond=None, uncond=None, guidance_scale=1.0):
    """eps_model's prediction at (x_t, t), guided by cond against uncond with one model call.

    guidance_scale == 1: the conditional call only, eps_model(x_t, t, cond) (or
    eps_model(x_t, t) when cond is None). Otherwise x_t and t are repeated to 2B,
    cond and uncond concatenated (`concat_conditions`), the model is called once
    and its output split into eps_cond (first B rows) and eps_uncond (last B) for
    `cfg_combine`. t is a (B,) tensor. (`CFGDenoiser` with max_batch=None.)
    """
    return CFGDenoiser(eps_model, cond, uncond, guidance_scale, max_batch=None)(x_t, t)


# --- classifier guidance: an explicit classifier's gradient instead of a second prediction ---------


def classifier_guidance(eps: torch.Tensor, grad_log_p: torch.Tensor, alpha_bar_t, scale) -> torch.Tensor:
    r"""The classifier-guided noise prediction: move eps against the gradient of log p_phi(y | x_t).

    $$\hat\epsilon = \epsilon - s\,\sqrt{1 - \bar\alpha_t}\;\nabla_{x_t}\log p_\phi(y \mid x_t, t)$$

    Since eps = -sqrt(1 - alpha_bar_t) grad log p_t(x_t) (`diffusion.score_from_eps`), eps_hat is the scaled
    score of p_t(x_t) p_phi(y | x_t)^s. s = 0 gives eps back. `alpha_bar_t` is a float or a tensor that
    broadcasts against eps, (B, 1, ...); `scale` a number >= 0 (or such a tensor, one scale per example).

    Book: eq-classifier-guidance
    Paper: Dhariwal & Nichol 2021 (Diffusion Models Beat GANs on Image Synthesis), Sec. 4.2, Algorithm 2
    """
    if eps.shape != grad_log_p.shape:
        raise ValueError(
            f"eps and grad_log_p must have the same shape, got {tuple(eps.shape)} and {tuple(grad_log_p.shape)}"
        )
    if not isinstance(scale, torch.Tensor):
        scale = check_guidance_scale(scale)
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=eps.dtype, device=eps.device)
    if ((alpha_bar_t <= 0) | (alpha_bar_t > 1)).any():
        raise ValueError(f"alpha_bar_t must be in (0, 1], got {alpha_bar_t.flatten()[:4].tolist()}")
    return eps - scale * (1 - alpha_bar_t).sqrt() * grad_log_p


def classifier_log_prob_grad(classifier, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x log p_phi(y | x_t, t) for each example, by autograd through `classifier(x_t, t) -> logits`.

    `classifier` returns (B, K) logits; y is (B,) class indices. Works inside `torch.no_grad()` (the
    samplers run there): the gradient is taken in its own `torch.enable_grad()` block. Returns (B, ...).
    """
    if y.shape != (x_t.shape[0],):
        raise ValueError(f"y must hold one class index per example, shape ({x_t.shape[0]},), got {tuple(y.shape)}")
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        logits = classifier(x, t)  # (B, K)
        if logits.ndim != 2 or logits.shape[0] != x_t.shape[0]:
            raise ValueError(f"classifier must return (B, K) logits with B = {x_t.shape[0]}, got {tuple(logits.shape)}")
        log_p = torch.log_softmax(logits, dim=1).gather(1, y.to(logits.device)[:, None])  # (B, 1)
        (grad,) = torch.autograd.grad(log_p.sum(), x)  # each row's log p depends on its own x only
    return grad  # (B, ...)


def _alpha_bar_at(t: torch.Tensor, schedule: Schedule, like: torch.Tensor) -> torch.Tensor:
    """alpha_bar at integer t, or at fractional t (Euler/Karras grids) through sigma = sqrt((1 - ab) / ab)."""
    if not t.is_floating_point():
        return broadcast_at(schedule.alphas_cumprod, t, like)  # (B, 1, ...)
    sigma = sigma_at(t.cpu(), schedule).reshape(-1)  # (B,)
    return expand_like(1 / (1 + sigma**2), like).to(like)  # (B, 1, ...)


class ClassifierGuidedDenoiser:
    """Classifier guidance as a model: `ClassifierGuidedDenoiser(model, classifier, y, schedule, s)(x_t, t)`.

    Each call makes one prediction, `model(x_t, t)` (or `model(x_t, t, cond)` when `cond` is given: a
    conditional model can be guided too), takes the classifier's gradient for the classes y
    (`classifier_log_prob_grad`) and combines them with `classifier_guidance`. Pass it to
    `samplers.sample` or `samplers.loop` as the eps model; t may be integer or fractional.
    """

    def __init__(self, model, classifier, y: torch.Tensor, schedule: Schedule, guidance_scale: float = 1.0,
                 cond=None):
        self.model, self.classifier, self.y, self.schedule, self.cond = model, classifier, y, schedule, cond
        self.guidance_scale = check_guidance_scale(guidance_scale)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.model(x_t, t) if self.cond is None else self.model(x_t, t, self.cond)  # (B, ...)
        if self.guidance_scale == 0.0:
            return eps
        grad = classifier_log_prob_grad(self.classifier, x_t, t, self.y)  # (B, ...)
        alpha_bar = _alpha_bar_at(t, self.schedule, x_t)  # (B, 1, ...)
        return classifier_guidance(eps, grad, alpha_bar, self.guidance_scale)
