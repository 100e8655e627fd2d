"""ControlNet in the web UI: a "unit" (condition image, model, weight, start, end) and the UNet it steers.

The web UI's ControlNet extension takes, in a txt2img or img2img request,

    "alwayson_scripts": {"controlnet": {"args": [{"image": <base64 PNG>, "model": "controlnet",
                                                   "weight": 1.0, "guidance_start": 0.0, "guidance_end": 1.0}]}}

`ControlUnit` is one entry of "args"; `controlled_unet_call` wraps the UNet so that the web UI's
own denoiser (which calls unet(x, t, context) on the guided batch, prompt and negative rows
together) gets the ControlNet's residuals on every row, at the steps the unit's window allows
(the extension's balanced mode). The condition image is taken as given: no preprocessor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from diffusion_notes.practice.controlnet.pipeline import check_control, control_keep


@dataclass
class ControlUnit:
    """One ControlNet unit, named as the extension's API names its fields."""

    image: object  # a 32x32 PIL image (white strokes on black), or a (1, 3, 32, 32) tensor in [0, 1]
    model: str = "controlnet"
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    net: object = None  # the ControlNet `model` names, filled in by the web UI's generate

    def check(self, known=None) -> "ControlUnit":
        """Raise a ValueError for a bad weight or window, an unknown model, or a condition image that is not 32x32."""
        check_control(self.weight, self.guidance_start, self.guidance_end)
        if known is not None and self.model not in known:
            raise ValueError(f"unknown ControlNet model {self.model!r}; the models are {', '.join(known) or 'none'}")
        condition_image(self.image)
        return self

    def public(self) -> dict:
        return {"model": self.model, "weight": self.weight, "guidance_start": self.guidance_start,
                "guidance_end": self.guidance_end}


def condition_image(image, size: int = 32) -> torch.Tensor:
    """A unit's image -> (1, 3, size, size) in [0, 1]; a ValueError for the wrong size, channels or range."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL: any mode, read as RGB
        if tuple(image.size) != (size, size):
            raise ValueError(f"the ControlNet image must be {size}x{size} pixels, got {image.size[0]}x{image.size[1]}")
        image = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    if not torch.is_tensor(image) or not image.is_floating_point() or image.ndim != 4 \
            or tuple(image.shape) != (1, 3, size, size):
        raise ValueError(f"the ControlNet image must be a {size}x{size} image or a (1, 3, {size}, {size}) float tensor, "
                         f"got {tuple(image.shape) if torch.is_tensor(image) else type(image).__name__}")
    if image.min() < 0 or image.max() > 1 or torch.isnan(image).any():
        raise ValueError("the ControlNet image's values must lie in [0, 1]")
    return image


def controlled_unet_call(unet, units: list[tuple[ControlUnit, object]], timesteps: list, start_step: int = 0):
    """unet(x, t, context) with each (unit, its ControlNet)'s residuals added, at the steps its window keeps.

    `timesteps` is the sampler's whole grid; the window counts over the steps run (from `start_step`).
    """
    run = [float(t) for t in timesteps[start_step:]]
    plans = [(unit, net, dict(zip(run, control_keep(len(run), unit.guidance_start, unit.guidance_end))))
             for unit, net in units]
    conditions = [condition_image(unit.image).to(next(unet.parameters()).device) for unit, _ in units]

    def call(x, t, context):
        key = float(t.reshape(-1)[0])
        active = [(unit, net, cond) for (unit, net, keep), cond in zip(plans, conditions) if keep.get(key, 0.0)]
        if not active:
            return unet(x, t, context)
        downs, mid = None, None
        for unit, net, cond in active:  # several units: their residuals add up, as in diffusers' MultiControlNet
            d, m = net(x, t, context, cond)
            d, m = [r * unit.weight for r in d], m * unit.weight
            downs = d if downs is None else [a + b for a, b in zip(downs, d)]
            mid = m if mid is None else mid + m
        return unet(x, t, context, down_residuals=downs, mid_residual=mid)

    call.config = unet.config
    return call



def unit_from_panel(enabled: bool, upload, drawing, model: str, weight, start, end) -> ControlUnit | None:
    """The web UI panel's values -> a ControlUnit, or None when the panel is off.

    The condition is the uploaded image, else the drawing (an image editor's background and layers,
    flattened onto black); either is resized to 32x32, as the extension resizes to the model's size.
    """
    if not enabled:
        return None
    image = upload
    if image is None and isinstance(drawing, dict):
        image = drawing.get("composite")
        if image is None and drawing.get("background") is not None:
            image = drawing["background"]
    if image is None:
        raise ValueError("the ControlNet panel is on but has no condition image: upload one or draw one")
    flat = Image.new("RGB", image.size, (0, 0, 0))
    rgba = image.convert("RGBA")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    if flat.size != (32, 32):
        flat = flat.resize((32, 32), Image.BILINEAR)
    return ControlUnit(flat, model, float(weight), float(start), float(end))
