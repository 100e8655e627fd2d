"""Seeds as the web UI makes them: image i of a job uses seed + i, a variation seed is mixed in by slerp.

Every image has its own CPU generator, seeded with its own seed, that draws its starting noise and
then the fresh noise of every step of an ancestral sampler. So image i of a batch is the image a
batch of one draws with seed + i, on any device and at any batch size.
"""

from __future__ import annotations

import random

import torch

MAX_SEED = 2**32 - 1


def resolve_seed(seed) -> int:
    """-1 (or None) means a random seed, as in the web UI; else an int in [0, 2^32 - 1]."""
    if seed is None or seed == -1:
        return random.randrange(MAX_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be -1 (random) or an int in [0, {MAX_SEED}], got {seed!r}")
    return seed


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    r"""Spherical interpolation of two noise tensors at fraction t (the web UI's variation strength).

    $$\mathrm{slerp}(t, a, b) = \frac{\sin((1-t)\Omega)}{\sin\Omega} a + \frac{\sin(t\Omega)}{\sin\Omega} b,
      \qquad \cos\Omega = \frac{a \cdot b}{\|a\|\,\|b\|}$$

    The equation of `unclip.decoder.slerp` (Chapter 7's eq-slerp), in the web UI's variant, kept so
    that a variation seed gives the web UI's noise. It differs on purpose: (1) a and b are whole noise
    tensors, not unit vectors, so the angle comes from the normalised tensors while the mix is of the
    tensors themselves (two N(0, I) draws give a draw of about the same norm, not a shrunken average);
    (2) the angle and both weights are computed once, as float64 scalars; (3) nearly parallel tensors
    (cos > 0.9995) are mixed linearly, where the unit-vector slerp clamps the cosine instead.
    """
    a, b = low.flatten(), high.flatten()
    cos = float((a / a.norm()) @ (b / b.norm()))
    if abs(cos) > 0.9995:
        return (1 - t) * low + t * high
    omega = torch.acos(torch.tensor(cos, dtype=torch.float64))
    so = torch.sin(omega)
    return (float(torch.sin((1 - t) * omega) / so) * low + float(torch.sin(t * omega) / so) * high)


class ImageRNG:
    """One CPU generator per image: the start noise (mixed with its variation seed) and each step's noise."""

    def __init__(self, shape: tuple, seeds: list[int], subseeds: list[int] | None = None,
                 subseed_strength: float = 0.0):
        self.shape = tuple(shape)  # one image's latent shape, (C, h, w)
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.subseeds = subseeds if subseeds is not None else [0] * len(seeds)
        self.subseed_strength = float(subseed_strength)

    def first(self) -> torch.Tensor:
        """x_T before scaling, (B, C, h, w): each image's N(0, I), slerped toward its variation seed's."""
        noise = [torch.randn((1, *self.shape), generator=g) for g in self.generators]  # B x (1, C, h, w)
        if self.subseed_strength > 0:
            for b, subseed in enumerate(self.subseeds):
                other = torch.randn((1, *self.shape), generator=torch.Generator().manual_seed(subseed))
                noise[b] = slerp(self.subseed_strength, noise[b], other)
        return torch.cat(noise)

    def next(self, i: int | None = None) -> torch.Tensor:
        """Fresh N(0, I) for step i, (B, C, h, w), each image's from its own generator (`samplers.loop`'s noise)."""
        return torch.cat([torch.randn((1, *self.shape), generator=g) for g in self.generators])
