"""The new concept: six pictures of a heart, a shape the shipped Stable Diffusion never saw.

The Shapes generator draws hearts only when asked (`data.shapes.concept_attributes`), so the
shipped models' data never held one. The instance pictures show hearts in six of the eight
colours; the held-out prompts ask for hearts in the other two, and in sizes and places the
six do not show together ("a small orange heart on the left"), so fidelity measures whether
the model learnt *heart* as a shape that combines with what it knew, not six pictures by heart.

A judge that reads hearts (the "concept_classifier": the attribute classifier with one more
shape class) scores both fidelity on the held-out prompts and drift: the fidelity on the
original concepts' prompts, before and after.
"""

from __future__ import annotations

import torch

from diffusion_notes.data.captions import canonical_caption
from diffusion_notes.data.shapes import COLOURS, concept_attributes, render
from diffusion_notes.evaluation.metrics import prompt_fidelity
from diffusion_notes.stable_diffusion.ldm import eval_prompts

CONCEPT = "heart"
N_INSTANCE = 6
INSTANCE_COLOURS = ("red", "yellow", "green", "blue", "purple", "white")
HELDOUT_COLOURS = tuple(c for c in COLOURS if c not in INSTANCE_COLOURS)  # orange, cyan
_INSTANCE_ITEMS = (0, 3, 5, 6, 9, 13)  # items of concept_attributes(seed=0) with six colours, places and sizes


def instance_attributes(n: int = N_INSTANCE) -> list[dict]:
    """The instance pictures' attributes: hearts in INSTANCE_COLOURS, one each, at fixed places."""
    if not 1 <= n <= N_INSTANCE:
        raise ValueError(f"n must be between 1 and {N_INSTANCE}, got {n}")
    out = []
    for i, colour in zip(_INSTANCE_ITEMS[:n], INSTANCE_COLOURS):
        attributes = concept_attributes(i, 0, CONCEPT, colours=(colour,))
        out.append(attributes)
    return out


def _worded(caption: str, word: str) -> str:
    """The caption with the concept's word replaced by `word` (textual inversion binds a word of its own)."""
    return caption.replace(f" {CONCEPT} ", f" {word} ")


def instance_images(n: int = N_INSTANCE, word: str = CONCEPT) -> tuple[torch.Tensor, list[str]]:
    """The n instance pictures (n, 3, 32, 32) in [-1, 1] and their canonical captions, the heart called `word`."""
    attributes = instance_attributes(n)
    return render(attributes), [_worded(canonical_caption(a), word) for a in attributes]


def heldout_prompts(n: int = 64, seed: int = 1, word: str = CONCEPT) -> tuple[list[str], list[dict]]:
    """n prompts that put the heart in a held-out colour with any size and place (none of the six pictures)."""
    attributes = [concept_attributes(10**6 + i, seed, CONCEPT, colours=HELDOUT_COLOURS) for i in range(n)]
    return [_worded(canonical_caption(a), word) for a in attributes], attributes


def original_prompts(n: int = 64) -> tuple[list[str], list[dict]]:
    """n prompts of the original concepts (unseen combinations of the training split): the drift test."""
    return eval_prompts("train", n)


@torch.no_grad()
def fidelity(pipe, judge, prompts: list[str], attributes: list[dict], steps: int = 20,
             guidance_scale: float = 4.0, seed: int = 0) -> dict:
    """`metrics.prompt_fidelity` of the pipeline's images for `prompts`, read by `judge` (rounded to 4 places)."""
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale,
                  generator=torch.Generator().manual_seed(seed)).images  # (n, 3, 32, 32) in [0, 1]
    scores = prompt_fidelity(images * 2 - 1, attributes, judge)
    return {k: round(v, 4) for k, v in scores.items()}


def concept_scores(pipe, judge, n: int = 64, word: str = CONCEPT) -> dict:
    """What the manifest records for a fine-tuned model: fidelity on held-out heart prompts and on the originals.

    "heart/<k>" on `heldout_prompts(n)`, "original/<k>" on `original_prompts(n)`, k in shape, colour_shape, all.
    """
    out = {}
    for name, (prompts, attributes) in (("heart", heldout_prompts(n, word=word)), ("original", original_prompts(n))):
        scores = fidelity(pipe, judge, prompts, attributes)
        out.update({f"{name}/{k}": scores[k] for k in ("shape", "colour_shape", "all")})
    return out
