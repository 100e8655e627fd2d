"""A concept the frozen model can already draw: one word for a look, a colour, size and place that go together.

The heart is a shape the shipped UNet never drew, and one new row of the text encoder's table
cannot teach it one. A *look* is different: "sunny" stands for large, yellow, in the top right,
three attributes the UNet draws whenever the caption spells them out. The instance pictures show
the look on four shapes ("a sunny circle", "a sunny square", ...); the held-out prompts ask for it
on the two shapes the pictures never show ("a sunny cross", "a sunny star"), so the judge finds
the look only if the word carries the colour, size and place and leaves the shape to the caption.
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion_notes.data.shapes import CELL, COLOURS, POSITIONS, SHAPES, SIZE_RADII, SIZES, render
from diffusion_notes.data.tokenizer import tokenize
from diffusion_notes.evaluation.metrics import prompt_fidelity
from diffusion_notes.practice.finetune.concept import N_INSTANCE, original_prompts
from diffusion_notes.stable_diffusion.ldm import encode_latents

WORD = "sunny"
LOOK = {"colour": "yellow", "size": "large", "position": "top right"}
INSTANCE_SHAPES = ("circle", "square", "triangle", "diamond")
HELDOUT_SHAPES = ("cross", "star")


def look_object(shape: str, rng: np.random.Generator) -> dict:
    """One object of `shape` with the look's colour, size and cell, jittered inside the cell as the dataset does."""
    cell, radius = POSITIONS.index(LOOK["position"]), SIZE_RADII[LOOK["size"]]
    row, col = divmod(cell, 3)
    dx, dy = rng.uniform(-(CELL / 2 - radius - 0.5), CELL / 2 - radius - 0.5, size=2)
    return {"shape": shape, "shape_index": SHAPES.index(shape), "colour": LOOK["colour"],
            "colour_index": COLOURS.index(LOOK["colour"]), "size": LOOK["size"],
            "size_index": SIZES.index(LOOK["size"]),
            "position": LOOK["position"], "position_index": cell, "row": row, "col": col,
            "x": float((col + 0.5) * CELL + dx), "y": float((row + 0.5) * CELL + dy)}


def _scenes(shapes: tuple[str, ...], n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, 11])
    return [{"n_objects": 1, "relation": None, "relation_index": None,
             "objects": [look_object(shapes[i % len(shapes)], rng)]} for i in range(n)]


def instance_images(n: int = N_INSTANCE, word: str = WORD) -> tuple[torch.Tensor, list[str]]:
    """n instance pictures (n, 3, 32, 32) in [-1, 1]: the look on INSTANCE_SHAPES in turn, "a <word> <shape>"."""
    if not 1 <= n <= N_INSTANCE:
        raise ValueError(f"n must be between 1 and {N_INSTANCE}, got {n}")
    scenes = _scenes(INSTANCE_SHAPES, n, seed=0)
    return render(scenes), [f"a {word} {s['objects'][0]['shape']}" for s in scenes]


@torch.no_grad()
def instance_batch(vae, scale_factor: float, n: int, generator: torch.Generator, word: str = WORD) -> dict:
    """{"z0": (n, 4, 8, 8), "ids": (n, 77)}: the instance pictures' latents (a fresh sample of q(z|x)) and captions."""
    images, captions = instance_images(n, word)
    z0 = encode_latents(vae, images.to(next(vae.parameters()).device), scale_factor, generator)
    return {"z0": z0, "ids": tokenize(captions)}


def heldout_prompts(n: int = 64, word: str | None = WORD) -> tuple[list[str], list[dict]]:
    """n prompts "a <word> cross" / "a <word> star" and their scenes; word=None spells the look out instead."""
    scenes = _scenes(HELDOUT_SHAPES, n, seed=1)
    spelled = f"{LOOK['size']} {LOOK['colour']} {{}} in the {LOOK['position']}"
    return [f"a {word} {s['objects'][0]['shape']}" if word else "a " + spelled.format(s["objects"][0]["shape"])
            for s in scenes], scenes


@torch.no_grad()
def look_scores(pipe, judge, n: int = 64, word: str | None = WORD, steps: int = 20, seed: int = 0) -> dict:
    """What the manifest records: the judge on the held-out look prompts ("look/<k>") and on the originals.

    k: colour, size, position, shape and all (every attribute right: the look found on the asked-for shape).
    """
    out = {}
    for name, (prompts, scenes) in (("look", heldout_prompts(n, word)), ("original", original_prompts(n))):
        images = pipe(prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed)).images
        scores = prompt_fidelity(images * 2 - 1, scenes, judge)  # images (n, 3, 32, 32) in [0, 1]
        keys = ("colour", "size", "position", "shape", "all") if name == "look" else ("all",)
        out.update({f"{name}/{k}": round(scores[k], 4) for k in keys})
    return out
