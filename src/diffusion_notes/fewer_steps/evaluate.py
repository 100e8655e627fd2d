"""Quality against the number of steps, with 95% intervals, and how far n steps land from many.

`steps_quality` draws `per_prompt` pictures for each of `n_prompts` seen captions at each number
of steps and reads them with the attribute classifier: prompt fidelity (colour and shape right),
the Fréchet distance of classifier features to real pictures, and diversity (the mean pairwise
feature distance among one caption's pictures). Every interval is a bootstrap over captions
(`metrics.bootstrap_interval`), so one caption's pictures stay together; the Fréchet distance's
is bias-corrected (`metrics.bias_corrected_interval`).

`distance_to_many_steps` measures the other thing few steps give up: for a deterministic sampler,
the same starting noise solved in n steps and in many lands on two pictures; their root-mean-square
difference says how far n steps are from the ODE's own answer.
"""

from __future__ import annotations

import torch

from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.evaluation.metrics import (
    bias_corrected_interval,
    bootstrap_interval,
    classifier_features,
    diversity,
    fidelity_per_image,
    frechet_distance,
)
from diffusion_notes.stable_diffusion.evaluate import generate
from diffusion_notes.stable_diffusion.ldm import eval_prompts

STEPS = (1, 2, 4, 8, 25)


def quality_with_intervals(images: torch.Tensor, attributes: list[dict], per_prompt: int, real_feats: torch.Tensor,
                           classifier, n_resamples: int = 200, seed: int = 0) -> dict:
    """Fidelity, Fréchet distance and diversity of prompt-major images (N = captions x per_prompt), each with its
    95% bootstrap interval over captions: {"fidelity": (value, lo, hi), "frechet_distance": ..., "diversity": ...}."""
    n_groups = len(images) // per_prompt
    right = fidelity_per_image(images, attributes, classifier)["colour_shape"].double().reshape(n_groups, per_prompt)
    feats = classifier_features(classifier, images)  # (N, F)
    spread = torch.tensor([diversity(feats[i * per_prompt:(i + 1) * per_prompt]) for i in range(n_groups)])
    rows = torch.arange(len(images)).reshape(n_groups, per_prompt)  # (captions, per_prompt)
    fd = frechet_distance(real_feats, feats)
    fd_interval = bootstrap_interval(lambda idx: frechet_distance(real_feats, feats[rows[idx].reshape(-1)]),
                                     n_groups, n_resamples, seed=seed)
    return {
        "fidelity": (float(right.mean()), *bootstrap_interval(lambda idx: right[idx].mean(), n_groups,
                                                               1000, seed=seed)),
        "frechet_distance": (fd, *bias_corrected_interval(fd, fd_interval)),
        "diversity": (float(spread.mean()), *bootstrap_interval(lambda idx: spread[idx].mean(), n_groups,
                                                                 1000, seed=seed)),
    }


def steps_quality(pipe, classifier, steps=STEPS, *, n_prompts: int = 64, per_prompt: int = 4, seed: int = 0,
                  progress=None, **options) -> list[dict]:
    """For each number of steps n: {"steps": n, "fidelity", "frechet_distance", "diversity"} with intervals.

    The captions are `n_prompts` seen combinations (`eval_prompts("train", ...)`); the real pictures
    are as many others of the training split (seed 3). `options` go to the pipeline call
    (sampler, guidance_scale, ...); every n starts from the same noise.
    """
    prompts, attributes = eval_prompts("train", n_prompts)
    repeated = [a for a in attributes for _ in range(per_prompt)]
    real_feats = classifier_features(classifier, ShapesDataset("train", n_prompts * per_prompt, seed=3).images())
    out = []
    for n in steps:
        images = generate(pipe, prompts, seed=seed, num_inference_steps=n, num_images_per_prompt=per_prompt,
                          **options)  # (N, 3, 32, 32) in [-1, 1], prompt-major
        out.append({"steps": n, **quality_with_intervals(images, repeated, per_prompt, real_feats, classifier)})
        if progress is not None:
            progress(out[-1])
    return out


@torch.no_grad()
def distance_to_many_steps(pipe, steps=STEPS, many: int = 50, *, n_prompts: int = 64, seed: int = 0,
                           **options) -> dict:
    """{n: RMS difference, in [0, 1] pixels, between n-step and `many`-step pictures from the same noise}.

    Also the 95% interval over the pictures: {n: (rms, lo, hi)}. Meant for deterministic samplers
    (DDIM, DPM++ 2M, Euler on a flow), where both runs solve the same ODE from the same start.
    """
    prompts, _ = eval_prompts("train", n_prompts)
    reference = (generate(pipe, prompts, seed=seed, num_inference_steps=many, **options) + 1) / 2
    out = {}
    for n in steps:
        images = (generate(pipe, prompts, seed=seed, num_inference_steps=n, **options) + 1) / 2
        per_image = (images - reference).pow(2).flatten(1).mean(1)  # (N,) mean squared difference
        lo, hi = bootstrap_interval(lambda idx, v=per_image: v[idx].mean().sqrt(), len(per_image), 1000, seed=seed)
        out[n] = (float(per_image.mean().sqrt()), lo, hi)
    return out
