r"""Seeds as the web UI makes them: image i of a job uses seed + i, a variation seed is mixed in by slerp.

    rng = ImageRNG((4, 8, 8), seeds=[7, 8], randn_source="NV")
    x_T = rng.next()     # (2, 4, 8, 8): the first call gives the starting noise
    z = rng.next()       # (2, 4, 8, 8): every later call gives one step's fresh noise

Every image has its own generator, seeded with its own seed. Its first draw is the image's starting
noise (slerped toward its variation seed's noise); its later draws are the fresh noise of every step
of an ancestral sampler. So image i of a batch is the image a batch of one draws with seed + i. A
non-zero `eta_noise_seed_delta` (ENSD) re-seeds each image's generator with seed + ENSD once the
starting noise is drawn: the start stays the seed's, the step noise changes.

Where the numbers come from is the "Random number generator source" (`randn_source`):
- "GPU" (the web UI's default): the device's own generator. On a CPU that is the CPU's; on Apple's
  MPS it is also the CPU's, as in the web UI; on CUDA it is cuRAND's, and gives other numbers.
- "CPU": the CPU's generator on every device.
- "NV": Philox4x32-10 with cuRAND's Box-Muller, computed on the CPU (`rng_philox`), so a seed drawn
  on an NVIDIA GPU gives the same noise on any device.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from diffusion_notes.practice.webui.rng_philox import PhiloxGenerator

MAX_SEED = 2**32 - 1
RANDN_SOURCES = ("GPU", "CPU", "NV")  # the web UI's "Random number generator source", its default first
NEAR_PARALLEL = 0.9995  # rng.slerp's threshold on the mean cosine


def resolve_seed(seed) -> int:
    """-1 (or None) means a random seed, as in the web UI; else an int in [0, 2^32 - 1]."""
    if seed is None or seed == -1:
        return random.randrange(MAX_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be -1 (random) or an int in [0, {MAX_SEED}], got {seed!r}")
    return seed


def job_seeds(seed: int, subseed: int, subseed_strength: float, total: int) -> tuple[list[int], list[int]]:
    """Each image's (seed, variation seed) of a job of `total` images: seed + i and subseed + i.

    While a variation strength is set, every image keeps the job's seed and only the variation seed
    counts up, so a batch shows variations of one picture.
    """
    seeds = [seed + (i if subseed_strength == 0 else 0) for i in range(total)]
    return seeds, [subseed + i for i in range(total)]


def check_randn_source(source) -> str:
    """The noise source's name, or a ValueError that lists the web UI's three."""
    if source not in RANDN_SOURCES:
        raise ValueError(f"randn_source must be one of {', '.join(RANDN_SOURCES)}, got {source!r}")
    return source


def check_ensd(delta) -> int:
    """eta_noise_seed_delta: an int in [0, 2^32 - 1] (0 leaves the step noise on the image's seed)."""
    if isinstance(delta, bool) or not isinstance(delta, int) or not 0 <= delta <= MAX_SEED:
        raise ValueError(f"eta_noise_seed_delta must be an int in [0, {MAX_SEED}], got {delta!r}")
    return delta


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    r"""The web UI's variation-seed mix of two noise tensors at strength t, one angle per row of dim 1.

    $$\cos\Omega = \sum_{\text{dim } 1} \frac{a}{\|a\|} \frac{b}{\|b\|}, \qquad
      \mathrm{slerp}(t, a, b) = \frac{\sin((1-t)\Omega)}{\sin\Omega} a + \frac{\sin(t\Omega)}{\sin\Omega} b$$

    The norms and the sum run along dim 1 only. For one image's (C, H, W) noise that gives one angle
    per (channel, column): C x W angles, each between two columns of H numbers. The weights multiply
    the tensors themselves, not their normalised copies, so two N(0, I) draws give a draw of about
    the same norm. When the mean cosine passes 0.9995 the two are mixed linearly, as `(1 - t) b + t a`:
    the weights of that branch are swapped against the slerp's, as the web UI writes it.
    Chapter 7's `unclip.decoder.slerp` is the textbook form: unit vectors and one angle.
    Paper: Shoemake 1985 (slerp); the web UI's `modules/rng.py`, `slerp`
    """
    cos = ((low / low.norm(dim=1, keepdim=True)) * (high / high.norm(dim=1, keepdim=True))).sum(1)  # dim 1 summed
    if cos.mean() > NEAR_PARALLEL:
        return t * low + (1 - t) * high
    omega = torch.acos(cos)  # one angle per row
    so = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / so).unsqueeze(1) * low + (torch.sin(t * omega) / so).unsqueeze(1) * high


def noise_device(source: str, device) -> torch.device:
    """Where a torch generator draws for `source`: the CPU, or the device itself for "GPU" (not on MPS)."""
    device = torch.device(device)
    return device if check_randn_source(source) == "GPU" and device.type != "mps" else torch.device("cpu")


def create_generator(seed: int, source: str = "GPU", device="cpu"):
    """A generator seeded with `seed`: a torch.Generator where the source draws, or Philox for "NV"."""
    if check_randn_source(source) == "NV":
        return PhiloxGenerator(seed)
    return torch.Generator(noise_device(source, device)).manual_seed(int(seed))


def randn(generator, shape: tuple, device="cpu") -> torch.Tensor:
    """The next N(0, I) of `shape` from `generator`, float32, on `device`."""
    if isinstance(generator, PhiloxGenerator):
        return torch.from_numpy(np.ascontiguousarray(generator.randn(shape))).to(device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


class ImageRNG:
    """One generator per image: the first `next()` gives the starting noise, each later one a step's noise.

    shape is one image's latent shape (C, h, w). `subseeds` and `subseed_strength` mix each image's
    starting noise toward its variation seed's; `eta_noise_seed_delta` re-seeds the step noise with
    seed + delta; `randn_source` and `device` say where the numbers are drawn and where they go.
    """

    def __init__(self, shape: tuple, seeds: list[int], subseeds: list[int] | None = None,
                 subseed_strength: float = 0.0, *, eta_noise_seed_delta: int = 0, randn_source: str = "GPU",
                 device="cpu"):
        self.shape = tuple(shape)  # one image's latent shape, (C, h, w)
        self.seeds = list(seeds)
        self.subseeds = subseeds
        self.subseed_strength = float(subseed_strength)
        self.eta_noise_seed_delta = check_ensd(eta_noise_seed_delta)
        self.source, self.device = check_randn_source(randn_source), torch.device(device)
        self.generators = [create_generator(s, self.source, self.device) for s in self.seeds]
        self.is_first = True

    def first(self) -> torch.Tensor:
        """x_T before scaling, (B, C, h, w): each image's first draw, slerped toward its variation seed's."""
        noise = []
        for b, generator in enumerate(self.generators):
            x = randn(generator, self.shape)  # (C, h, w)
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[b] if b < len(self.subseeds) else 0
                other = randn(create_generator(subseed, self.source, self.device), self.shape)  # (C, h, w)
                x = slerp(self.subseed_strength, x, other)
            noise.append(x)
        if self.eta_noise_seed_delta:
            self.generators = [create_generator(s + self.eta_noise_seed_delta, self.source, self.device)
                               for s in self.seeds]
        return torch.stack(noise).to(self.device)  # (B, C, h, w)

    def next(self, i: int | None = None) -> torch.Tensor:
        """(B, C, h, w): the starting noise on the first call, then fresh N(0, I) from each image's generator.

        `i`, the step index the sampler loop passes, is not used: the noise depends on how many draws
        came before, as in the web UI.
        """
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([randn(g, self.shape) for g in self.generators]).to(self.device)  # (B, C, h, w)
