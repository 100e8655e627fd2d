"""The quality measurements of Part III: prompt fidelity, samplers' Fréchet distance, the guidance sweep.

Everything runs the text-to-image pipeline on captions the model never saw as
training captions (seen combinations: `ShapesDataset("train", seed=1)`; held-out
combinations: `ShapesDataset("heldout")`) and reads the images with the
attribute classifier (`metrics`). The real images of those same captions are
the reference for the Fréchet distance and recall.
"""

from __future__ import annotations

import torch

from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.evaluation.metrics import (
    classifier_features,
    diversity,
    frechet_distance,
    precision_recall,
    prompt_fidelity,
)
from diffusion_notes.stable_diffusion.ldm import DEFAULT_GUIDANCE_SCALE, eval_prompts
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline


def generate(pipe, prompts: list[str], *, batch_size: int = 256, seed: int = 0, **options) -> torch.Tensor:
    """Images for `prompts` in batches, (N, 3, 32, 32) in [-1, 1]; batch b uses generator seed + b."""
    out = []
    for b, i in enumerate(range(0, len(prompts), batch_size)):
        g = torch.Generator().manual_seed(seed + b)
        out.append(pipe(prompts[i:i + batch_size], generator=g, **options).images * 2 - 1)
    return torch.cat(out)


def fidelity(pipe, classifier, split: str = "train", n: int = 200, *, seed: int = 0, **options) -> dict:
    """prompt_fidelity of n images, one per caption of `split` ("train" = seen combinations, "heldout").

    Besides prompt_fidelity's keys, "one_object/colour_shape" and "two_objects/colour_shape" split the
    score by the number of objects the caption asks for (about 70% and 30% of captions): two objects
    test binding, each colour on its own shape.
    """
    prompts, attributes = eval_prompts(split, n)
    images = generate(pipe, prompts, seed=seed, **options)
    out = prompt_fidelity(images, attributes, classifier)
    for k, name in ((1, "one_object"), (2, "two_objects")):
        idx = [i for i, a in enumerate(attributes) if len(a["objects"]) == k]
        if idx:
            part = prompt_fidelity(images[idx], [attributes[i] for i in idx], classifier)
            out[f"{name}/colour_shape"], out[f"{name}/n"] = part["colour_shape"], len(idx)
    return out


def sampler_quality(pipe, classifier, configs: dict[str, dict], n: int = 300, *, seed: int = 0,
                    guidance_scale: float = DEFAULT_GUIDANCE_SCALE) -> dict[str, dict]:
    """For each named sampler config ({"sampler": ..., "num_inference_steps": ...}): FD, precision, recall, fidelity.

    The reference is the real images of the same n captions (seen combinations).
    """
    prompts, attributes = eval_prompts("train", n)
    real = ShapesDataset("train", n, seed=1).images()  # the images those captions describe
    real_feats = classifier_features(classifier, real)
    rows = {}
    for name, config in configs.items():
        images = generate(pipe, prompts, seed=seed, guidance_scale=guidance_scale, **config)
        feats = classifier_features(classifier, images)
        rows[name] = {"frechet_distance": frechet_distance(real_feats, feats),
                      **precision_recall(real_feats, feats),
                      "fidelity": prompt_fidelity(images, attributes, classifier)["colour_shape"]}
    rows["real (other images)"] = {
        "frechet_distance": frechet_distance(real_feats, classifier_features(
            classifier, ShapesDataset("train", n, seed=2).images()))}
    return rows


def guidance_sweep(pipe, classifier, scales, n_prompts: int = 32, per_prompt: int = 8, *, split: str = "train",
                   seed: int = 0, n_objects: int | None = None, **options) -> list[dict]:
    """For each guidance scale: fidelity (colour and shape right), diversity within a prompt, recall.

    n_prompts captions, per_prompt images each. Diversity is the mean pairwise
    distance of classifier features among one prompt's images (averaged over
    prompts); recall (Kynkäänniemi et al. 2019) asks how much of the real
    images' feature manifold (as many real images of the split) the samples cover.
    n_objects=1 or 2 keeps only captions that ask for that many objects.
    """
    prompts, attributes = eval_prompts(split, n_prompts if n_objects is None else 8 * n_prompts)
    if n_objects is not None:
        keep = [i for i, a in enumerate(attributes) if len(a["objects"]) == n_objects][:n_prompts]
        if len(keep) < n_prompts:
            raise ValueError(f"found only {len(keep)} captions with {n_objects} objects; ask for fewer prompts")
        prompts, attributes = [prompts[i] for i in keep], [attributes[i] for i in keep]
    real_images = ShapesDataset(split, n_prompts * per_prompt, seed=3 if split == "train" else 4).images()
    real_feats = classifier_features(classifier, real_images)
    rows = []
    for scale in scales:
        images = generate(pipe, prompts, seed=seed, guidance_scale=float(scale), num_images_per_prompt=per_prompt,
                          **options)  # (n_prompts * per_prompt, 3, 32, 32), prompt-major
        repeated = [a for a in attributes for _ in range(per_prompt)]
        feats = classifier_features(classifier, images)
        within = [diversity(feats[i * per_prompt:(i + 1) * per_prompt]) for i in range(n_prompts)]
        right = prompt_fidelity(images, repeated, classifier)
        rows.append({"guidance_scale": float(scale),
                     "fidelity": right["colour_shape"],
                     "all_attributes": right["all"],
                     "diversity": sum(within) / len(within),
                     "recall": precision_recall(real_feats, feats)["recall"]})
    return rows


@torch.no_grad()
def evaluate_ldm(unet, vae, clip, scale_factor: float, classifier, n: int = 200,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE, steps: int = 25, sampler: str = "dpmpp_2m",
                 pipeline=None) -> dict:
    """Prompt fidelity of 25-step DPM++ 2M samples on n seen and n held-out combinations (written to the manifest).

    `pipeline` is the pipeline class (default `LatentDiffusionPipeline`, which takes `sampler`).
    """
    pipe = (pipeline or LatentDiffusionPipeline)(unet.eval(), vae, clip, scale_factor)
    options = {} if pipeline is not None else {"sampler": sampler}
    out = {}
    for split, name in (("train", "seen"), ("heldout", "heldout")):
        prompts, attributes = eval_prompts(split, n)
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale,
                      generator=torch.Generator().manual_seed(0), **options).images  # (n, 3, 32, 32) in [0, 1]
        fidelity = prompt_fidelity(images * 2 - 1, attributes, classifier)
        out.update({f"{name}/{k}": round(v, 4) for k, v in fidelity.items() if k in ("colour", "shape", "colour_shape", "all")})
    out.update(guidance_scale=guidance_scale, steps=steps, sampler=sampler if pipeline is None else "flow euler")
    return out
