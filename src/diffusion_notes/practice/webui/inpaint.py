"""Inpainting as the web UI runs it: the mask, the masked content, the blend at every model call, the paste.

    job = prepare(settings, image)                      # the picture to encode, its mask, where to paste back
    z = denoise_masked(model, plan, noise, z0, job, settings, start_step=s)   # x0-hat blended at every call
    images = job.paste(pipe.decode_latents(z))          # the input's pixels back outside the mask

The order is the web UI's (`processing.py`, `StableDiffusionProcessingImg2Img.init` and `.sample`):

1. The mask is made single-channel (an RGBA mask's alpha, thresholded at 128 when `mask_round`),
   inverted for "Inpaint not masked", and blurred along x, then along y, by a Gaussian of standard
   deviation `mask_blur_x` and `mask_blur_y` pixels over 2 int(2.5 sigma + 0.5) + 1 taps (OpenCV's).
2. "Whole picture": the image and the mask are resized to the job's size. "Only masked": the
   mask's bounding box grown by the padding (`crop_region`), widened to the job's aspect ratio
   (`expand_crop_region`), is cut from the image and the mask, and both are resized to the job's size.
3. Masked content: "fill" paints the masked pixels with blurred colours of their surroundings
   before encoding (`fill`); "latent noise" and "latent nothing" replace the masked latent cells
   by the seed's noise or by zeros (`masked_content`); "original" keeps the picture.
4. The latent mask m is the mask resized to the latent's size (PIL's bicubic) and rounded to 0 or 1.
5. At every model call the denoised estimate is blended with the clean init latent,
   x0-hat <- m x0-hat + (1 - m) z0 (`MaskBlend`); after the last step the latent is blended once more.
6. The decoded picture is pasted under the input: "whole picture" with the mask doubled (a
   blurred edge is redrawn where the mask is at least half), "only masked" with the blurred mask,
   after the crop is shrunk back into its place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from diffusion_notes.foundations.samplers.base import get
from diffusion_notes.foundations.sigmas import sigma_at
from diffusion_notes.practice.webui.seeds import ImageRNG
from diffusion_notes.stable_diffusion.denoise import denoise

LANCZOS = Image.Resampling.LANCZOS
FILLS = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}  # inpainting_fill -> "Masked content"
# The web UI runs these samplers through its timestep denoiser, which blends the model's input x_t
# with the clean latent before the call (`mask_before_denoising`); all others blend x0-hat after it.
BLEND_BEFORE = ("DDIM", "PLMS", "UniPC")


def check(settings) -> None:
    """The inpainting options, or a ValueError that says what is allowed."""
    if settings.mask is not None and not hasattr(settings.mask, "convert"):
        raise ValueError("mask must be an image")
    fill = settings.inpainting_fill
    if isinstance(fill, bool) or fill not in FILLS:
        raise ValueError(f"inpainting_fill must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing), "
                         f"got {fill!r}")
    for name in ("mask_blur_x", "mask_blur_y"):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64):
            raise ValueError(f"{name} must be None (use mask_blur) or an int between 0 and 64, got {value!r}")
    if not isinstance(settings.mask_round, bool):
        raise ValueError(f"mask_round must be true or false, got {settings.mask_round!r}")


def blur_sizes(settings) -> tuple[int, int]:
    """(mask_blur_x, mask_blur_y): each its own value, or mask_blur where it is None."""
    x, y = settings.mask_blur_x, settings.mask_blur_y
    return (settings.mask_blur if x is None else x), (settings.mask_blur if y is None else y)


# -- 1. the mask ---------------------------------------------------------------------------------------

def kernel_size(sigma: int) -> int:
    """The taps of the web UI's mask blur of standard deviation sigma: 2 int(2.5 sigma + 0.5) + 1."""
    return 2 * int(2.5 * sigma + 0.5) + 1


def gaussian_blur(mask: np.ndarray, sigma: int, axis: int) -> np.ndarray:
    """(H, W) uint8 blurred along one axis, as cv2.GaussianBlur with a (k, 1) or (1, k) kernel.

    The taps are exp(-i^2 / (2 sigma^2)), i = -(k-1)/2 ... (k-1)/2, normalised to sum 1; the border is
    mirrored without repeating the edge pixel (OpenCV's default, BORDER_REFLECT_101); the result is
    rounded to uint8 (OpenCV's fixed-point arithmetic can differ by 1 from this rounding).
    """
    k = kernel_size(sigma)
    i = np.arange(k) - (k - 1) / 2
    taps = np.exp(-(i**2) / (2 * sigma**2))
    taps /= taps.sum()
    pad = [(0, 0), (0, 0)]
    pad[axis] = (k // 2, k // 2)
    padded = np.pad(mask.astype(np.float64), pad, mode="reflect")  # (H + 2r, W) or (H, W + 2r)
    n = mask.shape[axis]
    out = sum(w * np.take(padded, np.arange(j, j + n), axis=axis) for j, w in enumerate(taps))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def binary_mask(mask: Image.Image, rounded: bool = True) -> Image.Image:
    """The mask as "L": an RGBA mask with transparency is its alpha (thresholded at 128 if `rounded`),
    anything else its luminance (the web UI's `create_binary_mask`)."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        alpha = mask.getchannel("A")
        return alpha.point(lambda a: 255 if a > 128 else 0) if rounded else alpha
    return mask.convert("L")


def blurred_mask(settings) -> Image.Image:
    """The job's mask at its own size: binary, inverted if asked, blurred along x then y ("L")."""
    mask = binary_mask(settings.mask, settings.mask_round)
    if settings.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    for axis, sigma in zip((1, 0), blur_sizes(settings)):
        if sigma > 0:
            mask = Image.fromarray(gaussian_blur(np.asarray(mask), sigma, axis))
    return mask


# -- 2. the crop of "only masked", and the web UI's resizes ------------------------------------------------

def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The masked pixels' box (x1, y1, x2, y2) grown by `padding` and kept inside the image; None for a
    blank mask (`masking.get_crop_region_v2`)."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def _widen(c1: int, c2: int, desired: float, limit: int) -> tuple[int, int]:
    """One side of `expand_crop_region`: grow [c1, c2) to `desired`, half each way, shifted back inside [0, limit]."""
    diff = int(desired - (c2 - c1))
    c1, c2 = c1 - diff // 2, c2 + diff - diff // 2
    if c2 >= limit:
        c1, c2 = c1 - (c2 - limit), limit
    if c1 < 0:
        c1, c2 = 0, c2 - c1
    return c1, min(c2, limit)


def expand_crop_region(box, width: int, height: int, image_width: int, image_height: int) -> tuple:
    """The box widened (or heightened) to the job's aspect ratio width / height (`masking.expand_crop_region`)."""
    x1, y1, x2, y2 = box
    ratio = width / height
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _widen(y1, y2, (x2 - x1) / ratio, image_height)
    else:
        x1, x2 = _widen(x1, x2, (y2 - y1) * ratio, image_width)
    return x1, y1, x2, y2


def resize_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """`images.resize_image` mode 1: cover width x height keeping the aspect ratio, centred, the excess cut."""
    ratio, src_ratio = width / height, image.width / image.height
    w = width if ratio > src_ratio else image.width * height // image.height
    h = height if ratio <= src_ratio else image.height * width // image.width
    out = Image.new(image.mode, (width, height))
    out.paste(image.resize((w, h), LANCZOS), (width // 2 - w // 2, height // 2 - h // 2))
    return out


def resize_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """`images.resize_image` mode 2: fit inside width x height, centred, the empty bands filled by
    stretching the picture's edge rows (or columns)."""
    ratio, src_ratio = width / height, image.width / image.height
    w = width if ratio < src_ratio else image.width * height // image.height
    h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((w, h), LANCZOS)
    out = Image.new(image.mode, (width, height))
    out.paste(resized, (width // 2 - w // 2, height // 2 - h // 2))
    band = height // 2 - h // 2 if ratio < src_ratio else width // 2 - w // 2
    if band > 0 and ratio < src_ratio:
        out.paste(resized.resize((width, band), box=(0, 0, width, 0)), (0, 0))
        out.paste(resized.resize((width, band), box=(0, h, width, h)), (0, band + h))
    elif band > 0 and ratio > src_ratio:
        out.paste(resized.resize((band, height), box=(0, 0, 0, height)), (0, 0))
        out.paste(resized.resize((band, height), box=(w, 0, w, height)), (band + w, 0))
    return out


def just_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """`images.resize_image` mode 0 (Lanczos), the img2img default."""
    return image if image.size == (width, height) else image.resize((width, height), LANCZOS)


# -- 3. and 4. masked content and the latent mask ------------------------------------------------------------

def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """"fill": the masked pixels painted with their surroundings' colours (`masking.fill`).

    The unmasked pixels, premultiplied by 1 - mask, are blurred with radii 256, 64, 16, 4, 2 and 0
    and the layers composited over each other (1, 1, 2, 4, 2 and 1 times), so each masked pixel takes
    the colour of the nearest unmasked ones and the unmasked pixels stay as they were.
    """
    keep = Image.new("RGBa", image.size)
    keep.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    out = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        layer = keep.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(layer)
    return out.convert("RGB")


def latent_mask(mask, size, rounded: bool = True) -> torch.Tensor:
    """The latent mask m (1, 1, h, w), 1 = redraw: the pixel mask resized to the latent's size (PIL's
    bicubic, as the web UI resizes it) and, if `rounded`, rounded to 0 or 1 (np.around).

    `mask` is an "L" image or a (1, 1, H, W) tensor in [0, 1]; `size` is h (square) or (h, w).
    """
    if isinstance(mask, torch.Tensor):
        mask = Image.fromarray((mask[0, 0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
    h, w = (size, size) if isinstance(size, int) else size
    small = mask.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    m = np.asarray(small, dtype=np.float32)[..., 0] / 255  # (h, w)
    if rounded:
        m = np.around(m)
    return torch.from_numpy(m)[None, None]  # (1, 1, h, w)


def masked_content(z0: torch.Tensor, m: torch.Tensor, inpainting_fill: int, noise: torch.Tensor | None = None):
    """The init latent the run starts from and blends with: "latent noise" puts `noise` under the
    mask, z0 (1 - m) + noise m; "latent nothing" zeros, z0 (1 - m); "fill" and "original" keep z0."""
    if inpainting_fill == 2:
        return z0 * (1 - m) + noise * m
    if inpainting_fill == 3:
        return z0 * (1 - m)
    return z0


# -- 5. the blend --------------------------------------------------------------------------------------------

def blend(current: torch.Tensor, z0: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The web UI's `apply_blend`: current m + z0 (1 - m), the model's part under the mask, the input's outside."""
    return current * m + z0 * (1 - m)


def blended_eps(x: torch.Tensor, eps: torch.Tensor, z0: torch.Tensor, m: torch.Tensor, sigma: float):
    r"""The eps that makes a sampler see x0-hat blended with z0, at noise level sigma.

    x is in the DDPM scale, x = (x0 + sigma eps) / sqrt(1 + sigma^2), so x0-hat = x sqrt(1 + sigma^2)
    - sigma eps (k-diffusion's `CompVisDenoiser`); the blended x0-hat' = m x0-hat + (1 - m) z0 comes
    back as eps' = (x sqrt(1 + sigma^2) - x0-hat') / sigma:

    $$\epsilon' = m\,\epsilon + (1 - m)\,\frac{x\sqrt{1 + \sigma^2} - z_0}{\sigma}$$
    """
    return m * eps + (1 - m) * (x * math.sqrt(1 + sigma**2) - z0) / sigma


class MaskBlend:
    """model(x, t[, step]) -> eps of an inner model, with the web UI's blend at every call.

    After the call (k-diffusion's samplers): x0-hat is blended with the clean latent z0, and the
    eps that gives it is returned (`blended_eps`). Before it (`before=True`, the web UI's DDIM, PLMS
    and UniPC): the model sees blend(x, z0, m) and its eps is returned as it is.
    Each call's sigma is the grid's at the timestep t it is called with. A consistency sampler (LCM)
    returns c_skip x + c_out x0-hat (its coefficients hold c_skip and c_out), and the web UI blends
    that: z0 is then read as the x0-hat that gives it, (z0 - c_skip x) / c_out, so the sampler sees z0.
    """

    def __init__(self, model, z0: torch.Tensor, m: torch.Tensor, plan, before: bool = False):
        self.model, self.z0, self.m, self.before = model, z0, m.to(z0), before
        self.takes_step = getattr(model, "takes_step", False)
        grid = plan.grid
        sigmas = grid.sigmas[:-1] if grid.sigmas is not None else None
        if sigmas is None:
            sigmas = sigma_at(grid.timesteps, plan.schedule)
        as_called = grid.timesteps.to(torch.float32 if grid.timesteps.is_floating_point() else torch.long)
        self.sigma = dict(zip(as_called.tolist(), sigmas.tolist()))  # t as the loop passes it -> sigma
        c = get(plan.sampler).coefficients(grid, plan.schedule)
        self.boundary = None  # t -> (c_skip, c_out) of a consistency sampler (`samplers.lcm`), in the DDPM scale
        if hasattr(c, "c_skip"):
            self.boundary = dict(zip(as_called.tolist(), zip(c.c_skip.tolist(), c.c_out.tolist())))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: int | None = None) -> torch.Tensor:
        inner = (lambda x_in: self.model(x_in, t, step=step)) if self.takes_step else (lambda x_in: self.model(x_in, t))
        if self.before:
            return inner(blend(x, self.z0, self.m))
        sigma, z0 = self.sigma[t[0].item()], self.z0
        if self.boundary is not None:
            c_skip, c_out = self.boundary[t[0].item()]
            z0 = (z0 - c_skip * x) / c_out  # (B, C, h, w)
        return blended_eps(x, inner(x), z0, self.m, sigma)


def denoise_masked(model, plan, first: torch.Tensor, z0: torch.Tensor, job: Inpainting, settings, seeds,
                   **options) -> torch.Tensor:
    """`denoise` for an inpainting job: the masked content, the blend at every call, the last blend.

    "latent noise" draws the noise of `seeds` (the job's first batch's, as the web UI draws it once).
    """
    m = latent_mask(job.mask, tuple(z0.shape[-2:]), settings.mask_round).to(z0)  # (1, 1, h, w)
    noise = None
    if settings.inpainting_fill == 2:
        noise = ImageRNG(tuple(z0.shape[1:]), seeds, seeds, 0.0).first().to(z0)  # (B, C, h, w)
    z0 = masked_content(z0, m, settings.inpainting_fill, noise)
    blended = MaskBlend(model, z0, m, plan, before=settings.sampler_name in BLEND_BEFORE)
    z = denoise(blended, plan, first, z0=z0, **options)
    return blend(z, z0, m)


# -- 2. and 6. the job's pictures ------------------------------------------------------------------------------

def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)  # (3, H, W)


@dataclass
class Inpainting:
    """One inpainting job's pictures: what to encode, the mask the latent mask is made from, and the paste."""

    init: torch.Tensor  # (1, 3, height, width) in [0, 1]: the picture (or its crop) to encode, filled if asked
    mask: Image.Image | None  # "L", width x height: the (blurred, cropped) mask; None: "only masked" found no mask
    overlay: Image.Image | None  # "RGBA": the input at its size, opaque where it is kept
    paste_to: tuple | None  # "only masked": (x, y, w, h) of the crop in the input

    def paste(self, images: torch.Tensor) -> torch.Tensor:
        """Decoded (B, 3, height, width) in [0, 1] -> the job's pictures: the crop shrunk back into place
        ("only masked"), then the input laid over it (the web UI's `uncrop` and `apply_overlay`)."""
        if self.overlay is None:
            return images
        out = []
        for picture in (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8):
            image = Image.fromarray(picture).convert("RGBA")
            if self.paste_to is not None:
                x, y, w, h = self.paste_to
                image = Image.new("RGBA", self.overlay.size)
                image.paste(resize_crop(Image.fromarray(picture), w, h), (x, y))
            image.alpha_composite(self.overlay)
            out.append(_tensor(image))
        return torch.stack(out)  # (B, 3, H, W)


def _overlay(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The input with alpha 255 - mask: what is laid over the decoded picture."""
    overlay = Image.new("RGBa", image.size)
    overlay.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    return overlay.convert("RGBA")


def prepare(settings, image: Image.Image, resize=just_resize) -> Inpainting:
    """The pictures of an inpainting job from its input `image` (any size) and `settings.mask`.

    `resize(image, width, height)` is the img2img resize of "whole picture" (the web UI's resize mode;
    Lanczos by default); "only masked" works on the input at its own size.
    """
    width, height = settings.width, settings.height
    image = image.convert("RGB")
    mask = blurred_mask(settings)  # "L", the mask's own size
    if settings.inpaint_full_res:
        if mask.size != image.size:
            mask = resize(mask, *image.size)
        overlay_mask = mask
        box = crop_region(mask, settings.inpaint_full_res_padding)
        if box is None:  # the web UI: a blank mask turns "only masked" into plain img2img
            return Inpainting(_tensor(resize(image, width, height))[None], None, None, None)
        box = expand_crop_region(box, width, height, mask.width, mask.height)
        x1, y1, x2, y2 = box
        mask = resize_fill(mask.crop(box), width, height)
        overlay = _overlay(image, overlay_mask)
        image, paste_to = resize_fill(image.crop(box), width, height), (x1, y1, x2 - x1, y2 - y1)
    else:
        image, mask = resize(image, width, height), resize(mask, width, height)
        doubled = Image.fromarray(np.clip(np.asarray(mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8))
        overlay, paste_to = _overlay(image, doubled), None
    if settings.inpainting_fill != 1:
        image = fill(image, mask)
    return Inpainting(_tensor(image)[None], mask, overlay, paste_to)


def pixel_mask(settings) -> torch.Tensor:
    """The "whole picture" mask the latent mask is made from, (1, 1, height, width) in [0, 1] (1 = redraw)."""
    mask = just_resize(blurred_mask(settings), settings.width, settings.height)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)[None, None]


__all__ = ["prepare", "Inpainting", "denoise_masked", "MaskBlend", "blended_eps", "blend", "latent_mask",
           "masked_content", "fill", "crop_region", "expand_crop_region", "blurred_mask", "pixel_mask", "check"]
