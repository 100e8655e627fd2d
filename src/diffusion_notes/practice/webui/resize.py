"""img2img's resize modes: how an input picture of any size becomes width x height.

    image = resize_image(1, photo, 64, 32)     # crop and resize: fill 64x32, cut the excess at the centre

0 "Just resize" stretches the picture to width x height. 1 "Crop and resize" scales it, keeping its
aspect ratio, until it covers the frame, and cuts what sticks out on both sides equally. 2 "Resize and
fill" scales it until it fits inside the frame and fills the two empty bands by stretching the
picture's outermost row (or column). 3 "Just resize (latent upscale)" leaves the picture as it is:
its latent is resized instead (`latent_resize`). Each rule is the web UI's `images.resize_image`.
"""

from __future__ import annotations

import torch
from PIL import Image

from diffusion_notes.practice.webui.upscalers import PIXEL_UPSCALERS, check_upscaler, pixel_upscale

RESIZE_MODES = {0: "Just resize", 1: "Crop and resize", 2: "Resize and fill", 3: "Just resize (latent upscale)"}


def check_resize_mode(mode) -> int:
    if isinstance(mode, bool) or mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {', '.join(f'{k} ({v})' for k, v in RESIZE_MODES.items())}, "
                         f"got {mode!r}")
    return mode


def _resize(image: Image.Image, width: int, height: int, upscaler: str) -> Image.Image:
    """To width x height: Lanczos, after a pixel upscaler if the picture grows and one is named."""
    if upscaler == "None" or image.mode == "L":
        return image.resize((width, height), resample=Image.LANCZOS)
    scale = max(width / image.width, height / image.height)
    if scale > 1:
        image = pixel_upscale(image, scale, upscaler)
    return image if image.size == (width, height) else image.resize((width, height), resample=Image.LANCZOS)


def fitted_size(mode: int, size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """The size the picture is scaled to before it is centred in the frame: mode 1 covers it, mode 2 fits in it."""
    w, h = size
    ratio, src_ratio = width / height, w / h
    wider = ratio > src_ratio if mode == 1 else ratio < src_ratio  # the frame's width is the picture's
    taller = ratio <= src_ratio if mode == 1 else ratio >= src_ratio
    return (width if wider else w * height // h), (height if taller else h * width // w)


def resize_image(mode: int, image: Image.Image, width: int, height: int, upscaler: str = "None") -> Image.Image:
    """The picture as width x height with resize mode 0, 1 or 2 (mode 3 returns it unchanged)."""
    check_resize_mode(mode)
    if check_upscaler(upscaler) not in PIXEL_UPSCALERS:
        raise ValueError(f"a picture is resized with a pixel upscaler ({', '.join(PIXEL_UPSCALERS)}), got {upscaler!r}")
    if mode == 3:
        return image
    if mode == 0:
        return _resize(image, width, height, upscaler)
    src_w, src_h = fitted_size(mode, image.size, width, height)
    resized = _resize(image, src_w, src_h, upscaler)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == 2 and src_h < height:  # bands above and below: the top and bottom rows, stretched
        band = height // 2 - src_h // 2
        out.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
        out.paste(resized.resize((width, band), box=(0, src_h, width, src_h)), box=(0, band + src_h))
    elif mode == 2 and src_w < width:  # bands left and right: the outermost columns, stretched
        band = width // 2 - src_w // 2
        out.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
        out.paste(resized.resize((band, height), box=(src_w, 0, src_w, height)), box=(band + src_w, 0))
    return out


def latent_resize(z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Mode 3: the input's latent (B, C, h', w') resized bilinearly to (B, C, height, width)."""
    return torch.nn.functional.interpolate(z, size=(height, width), mode="bilinear")
