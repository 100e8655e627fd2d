"""The web UI's upscalers: latent modes that resize the latent, pixel upscalers that resize the picture.

    z = latent_upscale(z, (16, 16), "Latent")              # (B, 4, 8, 8) -> (B, 4, 16, 16), bilinear
    image = pixel_upscale(image, 2.0, "Lanczos")           # a 32x32 PIL image -> 64x64

A latent mode is one `torch.nn.functional.interpolate` call on the latent (the web UI's
`shared.latent_upscale_modes`). A pixel upscaler works on the decoded picture: "None" leaves it as
it is (the resize that follows does the work), "Lanczos" and "Nearest" resize it by the scale with
PIL's filter, then round the size down to a multiple of 8, as the web UI's `Upscaler.upscale` does.
The web UI's model upscalers (ESRGAN, SwinIR, ...) are networks trained on photographs; we ship none.
"""

from __future__ import annotations

import torch
from PIL import Image

# name -> (interpolate's mode, antialias)
LATENT_UPSCALE_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# name -> PIL filter of one upscale step (None: the picture is left as it is)
PIXEL_UPSCALERS = {"None": None, "Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}
UPSCALER_NAMES = [*LATENT_UPSCALE_MODES, *PIXEL_UPSCALERS]


def check_upscaler(name) -> str:
    """The name, or a ValueError that lists the upscalers."""
    if name not in LATENT_UPSCALE_MODES and name not in PIXEL_UPSCALERS:
        raise ValueError(f"unknown upscaler {name!r}; the upscalers are {', '.join(UPSCALER_NAMES)}")
    return name


def is_latent(name: str) -> bool:
    """Whether the upscaler resizes the latent (else the decoded picture)."""
    return check_upscaler(name) in LATENT_UPSCALE_MODES


def latent_upscale(z: torch.Tensor, size: tuple[int, int], name: str) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W) for size (H, W), with the latent mode `name`."""
    mode, antialias = LATENT_UPSCALE_MODES[name]
    return torch.nn.functional.interpolate(z, size=size, mode=mode, antialias=antialias)


def pixel_upscale(image: Image.Image, scale: float, name: str) -> Image.Image:
    """The picture enlarged by `scale` with a pixel upscaler, its sides rounded down to multiples of 8.

    The step repeats (at most 3 times) until the picture reaches that size; a final Lanczos resize
    brings it to exactly that size.
    """
    resample = PIXEL_UPSCALERS[check_upscaler(name)]
    width, height = int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)
    for _ in range(3):
        before = image.size
        if resample is not None:
            image = image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
        if image.size == before or (image.width >= width and image.height >= height):
            break
    return image if image.size == (width, height) else image.resize((width, height), resample=Image.LANCZOS)


def api_upscalers() -> list[dict]:
    """GET /sdapi/v1/upscalers: the pixel upscalers, as the web UI lists them."""
    return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
            for name in PIXEL_UPSCALERS]


def api_latent_upscale_modes() -> list[dict]:
    """GET /sdapi/v1/latent-upscale-modes."""
    return [{"name": name} for name in LATENT_UPSCALE_MODES]
