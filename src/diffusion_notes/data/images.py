"""Pictures in and out of the pipelines: PIL images and [0, 1] tensors, and prompts given as a string or a list."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_pil(images: torch.Tensor) -> list:
    """(N, 3, H, W) in [0, 1] -> N PIL images."""
    array = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)  # (N, H, W, 3)
    return [Image.fromarray(a) for a in array]


def prompt_list(prompt, name: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise ValueError(f"{name} must be a string or a non-empty list of strings, got {prompt!r}")


def check_image_input(image, size: int = 32) -> torch.Tensor:
    """A PIL image, or a tensor (3, H, W) / (B, 3, H, W) in [0, 1], -> (B, 3, size, size) in [-1, 1].

    Raises a ValueError that says what is expected for anything else.
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        if tuple(image.size) != (size, size):
            raise ValueError(f"the init image must be {size}x{size} pixels, got {image.size[0]}x{image.size[1]}")
        image = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        raise ValueError("the init image must be a PIL image or a float tensor (3, H, W) or (B, 3, H, W) in [0, 1]")
    given = tuple(image.shape)
    image = image[None] if image.ndim == 3 else image
    if image.ndim != 4 or image.shape[1:] != (3, size, size):
        raise ValueError(f"the init image must have shape (3, {size}, {size}) or (B, 3, {size}, {size}), "
                         f"got {given}")
    if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise ValueError(f"the init image's values must lie in [0, 1], got [{image.min():.3g}, {image.max():.3g}]")
    return image * 2 - 1
