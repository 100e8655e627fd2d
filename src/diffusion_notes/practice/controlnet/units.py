"""ControlNet units and the UNet they steer: one wrapper for the pipeline and the web UI.

The web UI's ControlNet extension takes, in a txt2img or img2img request,

    "alwayson_scripts": {"controlnet": {"args": [{"image": <base64 PNG>, "model": "controlnet",
                                                   "weight": 1.0, "guidance_start": 0.0, "guidance_end": 1.0}]}}

`ControlUnit` is one entry of "args" (the condition image, the model, its weight and its window).
`ControlledUNet` wraps the UNet so that whoever calls unet(x, t, context) (the pipeline's guided
batch, the web UI's denoiser with its prompt and negative rows together) gets every unit's
residuals, times its weight, at the steps its window keeps; several units' residuals add up, as in
diffusers' MultiControlNet. The condition image is taken as given (the web UI's API runs the
extension's preprocessors and resize modes first: `preprocessors`).

A unit's control mode is the extension's: "Balanced" adds the residuals as trained; "My prompt is
more important" weights them by depth, 0.825 ** (K - k) for residual k of K (the middle block
keeps 1); "ControlNet is more important" weights them so and adds them to the prompt's rows only,
so the negative prompt's rows draw without the control and guidance pushes towards it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from diffusion_notes.practice.controlnet.model import controlnet_residuals

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")


@dataclass
class ControlUnit:
    """One ControlNet unit, named as the extension's API names its fields."""

    image: object  # a 32x32 PIL image (white strokes on black), or a (1, 3, 32, 32) tensor in [0, 1]
    model: str = "controlnet"
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    net: object = None  # the ControlNet `model` names, filled in by the web UI's generate
    control_mode: str = "Balanced"  # the extension's: one of CONTROL_MODES

    def check(self, known=None) -> ControlUnit:
        """Raise a ValueError for a bad weight, window or control mode, an unknown model, or an image not 32x32."""
        check_control(self.weight, self.guidance_start, self.guidance_end)
        if self.control_mode not in CONTROL_MODES:
            raise ValueError(f"control_mode must be one of {', '.join(CONTROL_MODES)}, got {self.control_mode!r}")
        if known is not None and self.model not in known:
            raise ValueError(f"unknown ControlNet model {self.model!r}; the models are {', '.join(known) or 'none'}")
        condition_image(self.image)
        return self

    def public(self) -> dict:
        return {"model": self.model, "weight": self.weight, "guidance_start": self.guidance_start,
                "guidance_end": self.guidance_end}


def check_control(scale, start, end) -> tuple[float, float, float]:
    """Raise a ValueError unless scale >= 0 and 0 <= start < end <= 1; return them as floats."""
    for name, value in (("controlnet_conditioning_scale", scale), ("control_guidance_start", start),
                        ("control_guidance_end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"{name} must be a number, got {value!r}")
    if scale < 0:
        raise ValueError(f"controlnet_conditioning_scale must be >= 0 (0 = no control, 1 = as trained), got {scale}")
    if not 0 <= start < end <= 1:
        raise ValueError(f"control_guidance_start and control_guidance_end must satisfy 0 <= start < end <= 1 "
                         f"(fractions of the steps), got start={start}, end={end}")
    return float(scale), float(start), float(end)


def control_keep(n: int, start: float, end: float) -> list[float]:
    r"""1.0 at the steps i of n where the ControlNet acts, else 0.0: diffusers' controlnet_keep.

    $$k_i = 1 - [\,i / n < \text{start} \ \text{or}\ (i + 1) / n > \text{end}\,]$$

    Book: eq-control-window
    Paper: Zhang et al. 2023, section 4 (the conditioning scale); diffusers' StableDiffusionControlNetPipeline
    """
    return [1.0 - float(i / n < start or (i + 1) / n > end) for i in range(n)]


def condition_tensor(image, size: int = 32) -> torch.Tensor:
    """A condition image (PIL, or a (3, H, W) / (B, 3, H, W) float tensor in [0, 1]) -> (B, 3, size, size) in [0, 1]."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        if tuple(image.size) != (size, size):
            raise ValueError(f"the condition image must be {size}x{size} pixels, got {image.size[0]}x{image.size[1]}")
        image = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    if not torch.is_tensor(image) or not image.is_floating_point():
        raise ValueError("the condition image must be a PIL image or a float tensor (3, H, W) or (B, 3, H, W) in [0, 1]")
    return image[None] if image.ndim == 3 else image


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


def soft_injection_scales(n: int) -> list[float]:
    r"""(n + 1) depth weights for n skip residuals and the middle one: the extension's soft injection.

    $$w_k = 0.825^{\,n - k},\quad k = 0, \dots, n$$
    """
    return [0.825 ** (n - k) for k in range(n + 1)]


class ControlledUNet:
    """unet(x, t, context) plus the residuals of every unit whose window keeps the step (Zhang et al. 2023, Fig. 3).

    r = sum over units u of  w_u k_u(i) ControlNet_u(x, t, context, c_u)      (k_u: `control_keep`)

    `timesteps` are the steps run (img2img: the grid from its start), so a window counts over those.
    `context` is (B, M, D_c), or a dict {"context": (B, M, D_c), "weight": (B,)} whose row weights
    also multiply the residuals (the pipeline's guess mode gives its negative rows 0). A unit's image
    has 1 row, or one per row of the prompt batch (repeated over a guided batch's halves). In guess
    mode the residuals are weighted by depth (`model.guess_mode_scales`), as diffusers' guess_mode.
    `images` is the number of pictures when the rows past them are the negative prompt's (the web
    UI's denoiser puts them last); a unit in "ControlNet is more important" mode leaves those out.
    """

    def __init__(self, unet, units: list[ControlUnit], timesteps: list, guess_mode: bool = False,
                 images: int | None = None):
        self.unet, self.units, self.guess_mode, self.images = unet, units, guess_mode, images
        device = next(unet.parameters()).device
        run = [float(t) for t in timesteps]
        self.keep = [dict(zip(run, control_keep(len(run), u.guidance_start, u.guidance_end))) for u in units]
        self.conditions = [u.net.check_condition(condition_tensor(u.image, u.net.config.condition_size)).to(device)
                           for u in units]  # (1 or N, 3, H, W) each

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context) -> torch.Tensor:
        context, rows = (context["context"], context["weight"]) if isinstance(context, dict) else (context, None)
        key, down, mid = float(t.reshape(-1)[0]), None, None
        for unit, keep, condition in zip(self.units, self.keep, self.conditions):
            s = unit.weight * keep.get(key, 0.0)
            if s == 0:
                continue
            if len(condition) not in (1, len(x)):
                condition = condition.repeat(len(x) // len(condition), 1, 1, 1)  # (B, 3, H, W)
            d, m = controlnet_residuals(unit.net, x, t, context, condition, self._rows(unit, x, rows) * s,
                                        self.guess_mode)
            if unit.control_mode != "Balanced":
                *w, w_mid = soft_injection_scales(len(d))
                d, m = [r * wk for r, wk in zip(d, w)], m * w_mid
            down = d if down is None else [a + b for a, b in zip(down, d)]  # several units add up
            mid = m if mid is None else mid + m
        return self.unet(x, t, context, down_residuals=down, mid_residual=mid)

    def _rows(self, unit: ControlUnit, x: torch.Tensor, rows):
        """The unit's weight on each row: the context's row weights, and 0 on the negative rows in "ControlNet" mode."""
        if unit.control_mode != "ControlNet is more important" or self.images is None or len(x) <= self.images:
            return 1.0 if rows is None else rows
        mask = torch.ones(len(x), dtype=x.dtype, device=x.device)
        mask[len(x) - self.images:] = 0  # (N,): the last `images` rows are the negative prompt's
        return mask if rows is None else rows * mask
