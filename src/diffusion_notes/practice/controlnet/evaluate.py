"""How well pictures follow their condition: IoU against the renderer's region, and colour fidelity.

The conditions are made from held-back Shapes items (the training split's combinations,
drawn with seed 1: items the ControlNet never saw). The judge is passed in.
"""

from __future__ import annotations

import torch

from diffusion_notes.evaluation.metrics import prompt_fidelity
from diffusion_notes.practice.controlnet.conditions import KINDS, condition_region, drawn_region, iou, make_condition
from diffusion_notes.stable_diffusion.ldm import eval_prompts

EVAL_STEPS = 20  # DPM++ 2M steps per evaluation picture


def eval_set(n: int = 48, kind: str = "outline") -> dict:
    """n unseen (caption, attributes, condition (n, 3, 32, 32), region (n, 32, 32)) for condition `kind`.

    The items are `ldm.eval_prompts("train", n)`'s: training-split combinations drawn with seed 1.
    """
    captions, attributes = eval_prompts("train", n)
    return {"captions": captions, "attributes": attributes, "condition": make_condition(attributes, kind),
            "region": condition_region(attributes)}


@torch.no_grad()
def follow(pipe, items: dict, classifier, *, control: bool = True, seed: int = 0, **options) -> dict:
    """Draw one picture per item (with its condition, or without: the plain pipeline) and score it.

    Returns {"iou": mean IoU of the drawn region against the condition's, "colour": the classifier's
    colour fidelity, "images": (n, 3, 32, 32) in [0, 1]}.
    """
    options.setdefault("num_inference_steps", EVAL_STEPS)
    generator = torch.Generator().manual_seed(seed)
    image = items["condition"] if control else None
    images = pipe(items["captions"], image=image, generator=generator, **options).images  # (n, 3, 32, 32)
    scores = iou(drawn_region(images), items["region"])  # (n,)
    colour = prompt_fidelity(images * 2 - 1, items["attributes"], classifier)["colour"]
    return {"iou": float(scores.mean()), "colour": float(colour), "images": images}


def evaluate_controlnet(pipe, classifier, n: int = 48) -> dict:
    """The manifest's metrics: IoU and colour fidelity with the ControlNet (each kind, scale 1) and without."""
    out = {}
    for kind in KINDS:
        items = eval_set(n, kind)
        with_control = follow(pipe, items, classifier)
        out[f"{kind}/iou"], out[f"{kind}/colour"] = round(with_control["iou"], 4), round(with_control["colour"], 4)
    without = follow(pipe, items, classifier, control=False)
    out["without/iou"], out["without/colour"] = round(without["iou"], 4), round(without["colour"], 4)
    return out
