"""How well pictures follow their condition: where (IoU), what (shape kept) and colour, on unseen scenes.

The scenes are training-split combinations drawn with seed 1 (items the ControlNet never saw),
one object each unless `where` says otherwise:

    "grid"     the dataset's places and sizes (a cell, jittered inside it; radius 3 or 4.5 px)
    "offgrid"  anywhere on the canvas, at the dataset's radii
    "sizes"    the dataset's places, at radii between the two the dataset has (3.2 to 4.3 px)
    "small"    anywhere, at radii of 2 to 2.5 px: smaller than any the dataset has
    "two"      two objects in two cells, as the dataset draws them

and the caption names no position ("none"), the object's cell ("same") or another cell ("other"):
only the condition then says where. Per picture: the IoU of the drawn region with the
condition's; "shape", whether the judge reads the condition's shapes; "colour", whether it reads
the caption's colours; for two objects, "placed", whether it reads each shape in the cell of its own
outline (the shape check alone does not see two shapes swapped). The judge is passed in (the shipped
Shapes classifier).
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion_notes.data.shapes import IMAGE_SIZE, SIZE_RADII, ShapesDataset
from diffusion_notes.evaluation.metrics import fidelity_per_image, mean_interval
from diffusion_notes.practice.controlnet.conditions import condition_region, drawn_region, iou, make_condition
from diffusion_notes.practice.controlnet.scenes import CAPTION_KINDS, place, scene_caption

EVAL_STEPS = 20  # DPM++ 2M steps per evaluation picture
WHERE = ("grid", "offgrid", "sizes", "small", "two")
RADII = {"offgrid": None, "sizes": (3.2, 4.3), "small": (2.0, 2.5)}  # None: the dataset's radius for the size word


def _scene(dataset: ShapesDataset, i: int, where: str, rng: np.random.Generator) -> dict:
    """Scene i of the evaluation set `where` (see the module docstring)."""
    scene = dataset.attributes(i)
    if where in ("grid", "two"):
        return scene
    obj = scene["objects"][0]
    lo, hi = RADII[where] or (SIZE_RADII[obj["size"]],) * 2
    radius = float(rng.uniform(lo, hi))
    x, y = (obj["x"], obj["y"]) if where == "sizes" else rng.uniform(radius + 1, IMAGE_SIZE - radius - 1, size=2)
    return {**scene, "objects": [place(obj, x, y, radius)]}


def eval_set(n: int = 48, kind: str = "outline", caption: str = "same", where: str = "grid") -> dict:
    """n unseen scenes: captions of kind `caption`, conditions (n, 3, 32, 32) of `kind`, regions (n, 32, 32).

    Returns {"captions", "attributes", "condition", "region", "caption_kind", "where"}.
    """
    if where not in WHERE:
        raise ValueError(f"where must be one of {WHERE}, got {where!r}")
    if caption not in CAPTION_KINDS:
        raise ValueError(f"caption must be one of {CAPTION_KINDS}, got {caption!r}")
    dataset = ShapesDataset("train", n, seed=1, p_two_objects=1.0 if where == "two" else 0.0)
    rng = np.random.default_rng([1, WHERE.index(where)])
    attributes = [_scene(dataset, i, where, rng) for i in range(n)]
    words = np.random.default_rng([1, WHERE.index(where), CAPTION_KINDS.index(caption)])
    captions = [scene_caption(a, caption, words) for a in attributes]
    return {"captions": captions, "attributes": attributes, "condition": make_condition(attributes, kind),
            "region": condition_region(attributes), "caption_kind": caption, "where": where}


def scores(images: torch.Tensor, items: dict, judge) -> dict:
    """Per picture (n,): "iou" with the condition's region, "shape" and "colour" as the judge reads them (the
    multisets of the scene's), and "placed": every shape read in the cell of the outline it belongs to."""
    right = fidelity_per_image(images * 2 - 1, items["attributes"], judge)
    read = judge.predict_attributes(images * 2 - 1)
    placed = [sorted((o["shape"], o["position"]) for o in a["objects"]) == sorted((o["shape"], o["position"])
                                                                                for o in r["objects"])
              for a, r in zip(items["attributes"], read)]
    return {"iou": iou(drawn_region(images), items["region"]).double(), "shape": right["shape"].double(),
            "colour": right["colour"].double(), "placed": torch.tensor(placed, dtype=torch.float64)}


@torch.no_grad()
def follow(pipe, items: dict, classifier, *, control: bool = True, seed: int = 0, **options) -> dict:
    """Draw one picture per item (with its condition, or without: the plain pipeline) and score it.

    Returns the means "iou", "shape", "colour", the per-picture scores under "each", and "images" (n, 3, 32, 32).
    """
    options.setdefault("num_inference_steps", EVAL_STEPS)
    generator = torch.Generator().manual_seed(seed)
    image = items["condition"] if control else None
    images = pipe(items["captions"], image=image, generator=generator, **options).images  # (n, 3, 32, 32)
    each = scores(images, items, classifier)
    return {**{k: float(v.mean()) for k, v in each.items()}, "each": each, "images": images}


def summary(result: dict, prefix: str, interval: bool = False, placed: bool = False) -> dict:
    """A `follow` result as manifest metrics: prefix/iou, prefix/shape, prefix/colour (and the IoU's 95% interval,
    and prefix/placed)."""
    out = {f"{prefix}/{k}": round(result[k], 4) for k in ("iou", "shape", "colour") + (("placed",) * placed)}
    if interval:
        _, lo, hi = mean_interval(result["each"]["iou"])
        out[f"{prefix}/iou_low"], out[f"{prefix}/iou_high"] = round(lo, 4), round(hi, 4)
    return out


def evaluate_controlnet(pipe, classifier, n: int = 48) -> dict:
    """The manifest's metrics (scale 1, 20 steps, n scenes each).

    kind/caption/{iou,shape,colour} for outline and mask with each caption kind, and canny with none;
    without/caption/... the plain pipeline; where/... outlines elsewhere than the grid, with no position in the
    caption, and the IoU's 95% interval.
    """
    out = {}
    for kind, captions in (("outline", CAPTION_KINDS), ("mask", CAPTION_KINDS), ("canny", ("none",))):
        for caption in captions:
            out.update(summary(follow(pipe, eval_set(n, kind, caption), classifier), f"{kind}/{caption}", True))
    for caption in ("none", "same"):
        out.update(summary(follow(pipe, eval_set(n, "outline", caption), classifier, control=False),
                           f"without/{caption}", True))
    for where in WHERE[1:]:  # two objects: also whether each shape is in its own outline's cell
        out.update(summary(follow(pipe, eval_set(n, "outline", "none", where), classifier), where, True,
                           placed=where == "two"))
    return out
