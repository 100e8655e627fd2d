"""Inpainting as the web UI's processing.py runs it: mask blur, latent mask, crop region, masked content, blend, paste.

Every expected value below is worked out by hand from the web UI's code (AUTOMATIC1111
stable-diffusion-webui 1.10: modules/processing.py, modules/masking.py, modules/images.py,
modules/sd_samplers_cfg_denoiser.py) and the library functions it calls (OpenCV's GaussianBlur,
PIL's bicubic resize with Keys' a = -0.5), never read back from our output.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_notes.foundations.samplers import SAMPLERS
from diffusion_notes.foundations.schedules import make_schedule
from diffusion_notes.practice.webui import infotext, inpaint
from diffusion_notes.practice.webui.generate import Settings, check, generate
from diffusion_notes.stable_diffusion.denoise import denoise, make_plan


def columns(x_from: int, x_to: int, size: int = 32) -> Image.Image:
    """A mask white in columns [x_from, x_to) of every row."""
    mask = np.zeros((size, size), np.uint8)
    mask[:, x_from:x_to] = 255
    return Image.fromarray(mask)


# -- the mask blur ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma, taps", [(1, 7), (2, 11), (3, 17), (4, 21), (8, 41)])
def test_blur_kernel_size(sigma, taps):
    """processing.py, StableDiffusionProcessingImg2Img.init: kernel_size = 2 * int(2.5 * mask_blur_x + 0.5) + 1."""
    assert inpaint.kernel_size(sigma) == taps


def test_blur_of_an_edge_along_x_only():
    """processing.py, StableDiffusionProcessingImg2Img.init: cv2.GaussianBlur(mask, (k, 1), mask_blur_x).

    sigma 1, 7 taps exp(-i^2 / 2) = 1, .60653, .13534, .01111 (sum 2.50596): the pixels from x = 13 to 18
    next to an edge at x = 16 get 255 x (.01111, .14645, .75298, 1.75298, 2.35951, 2.49485) / 2.50596
    = 1.13, 14.90, 76.62, 178.38, 240.10, 253.87. A blur along y leaves a mask constant along y unchanged.
    """
    settings = Settings(mask=columns(16, 32), mask_blur_x=1, mask_blur_y=0)
    row = np.asarray(inpaint.blurred_mask(settings))[5]
    assert row[12:20].tolist() == [0, 1, 15, 77, 178, 240, 254, 255]
    assert np.array_equal(np.asarray(inpaint.blurred_mask(Settings(mask=columns(16, 32), mask_blur_x=0,
                                                                   mask_blur_y=3))), np.asarray(columns(16, 32)))


def test_mask_blur_x_and_y_default_to_mask_blur_and_invert_comes_first():
    """processing.py: mask_blur sets mask_blur_x and mask_blur_y; the inversion (ImageOps.invert) is before the blur."""
    assert inpaint.blur_sizes(Settings(mask_blur=3)) == (3, 3)
    assert inpaint.blur_sizes(Settings(mask_blur=3, mask_blur_y=0)) == (3, 0)
    inverted = np.asarray(inpaint.blurred_mask(Settings(mask=columns(0, 16), mask_blur_x=1, mask_blur_y=0,
                                                        inpainting_mask_invert=True)))[0]
    assert inverted[12:20].tolist() == [0, 1, 15, 77, 178, 240, 254, 255]


def test_an_rgba_mask_is_its_alpha_thresholded_at_128():
    """processing.py, create_binary_mask: an RGBA mask with transparency is its alpha, > 128 -> 255, else 0;
    with mask_round False the alpha as it is."""
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[..., 3] = [[0, 100, 128, 129]] * 4
    image = Image.fromarray(mask, "RGBA")
    assert np.asarray(inpaint.binary_mask(image))[0].tolist() == [0, 0, 0, 255]
    assert np.asarray(inpaint.binary_mask(image, rounded=False))[0].tolist() == [0, 100, 128, 129]


# -- the latent mask ---------------------------------------------------------------------------------------------
# PIL's bicubic reduction by 4 (32 -> 8): latent cell j takes pixels x with weights k((x + 0.5 - 4 j - 2) / 4),
# k Keys' cubic with a = -0.5, over the pixels inside the image, normalised to sum 1. Cell 0 (x = 0 ... 9):
# .72754, .96387, .96387, .72754, .38965, .09082, -.04785, -.07324, -.04395, -.00684 (sum 3.69141);
# cell 1 (x = 0 ... 13): -.07324, -.04785, .09082, .38965, .72754, .96387, .96387, ... (sum 4.05078).

@pytest.mark.parametrize("stripe, soft, rounded, any_pixel", [
    ((0, 2), [0.458, 0.0], [0, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]),  # 1.69141 / 3.69141
    ((0, 3), [0.719, 0.0], [1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]),  # 2.65528 / 3.69141
    # 1.20801 / 3.69141 and 2.08106 / 4.05078
    ((3, 6), [0.327, 0.514], [0, 1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]),
    ((0, 16), [1.0, 1.0], [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]),
])
def test_latent_mask_is_the_mask_resized_and_rounded(stripe, soft, rounded, any_pixel):
    """processing.py, StableDiffusionProcessingImg2Img.init: latmask = init_mask.convert('RGB').resize(latent size)
    (PIL's default, bicubic), channel 0 / 255, np.around if mask_round. `any_pixel` is the rule that
    redraws a latent cell when any of its 4x4 pixels is masked: A1111 redraws fewer cells."""
    mask = columns(*stripe)
    m = inpaint.latent_mask(mask, 8)  # (1, 1, 8, 8)
    assert m.shape == (1, 1, 8, 8) and torch.equal(m[0, 0, 3], torch.tensor(rounded, dtype=torch.float32))
    assert torch.equal(m[0, 0], m[0, 0, :1].expand(8, 8))  # the same in every row
    assert [int(max(mask.getpixel((x, 0)) for x in range(4 * j, 4 * j + 4)) > 0) for j in range(8)] == any_pixel
    kept = inpaint.latent_mask(mask, (8, 8), rounded=False)[0, 0, 3, :2]
    assert torch.allclose(kept, torch.tensor(soft), atol=2 / 255)


def test_latent_mask_takes_a_tensor_and_any_latent_shape():
    """The same rule from a (1, 1, H, W) mask tensor, to a (h, w) latent of another aspect."""
    mask = torch.from_numpy(np.asarray(columns(0, 16), dtype=np.float32) / 255)[None, None]
    assert torch.equal(inpaint.latent_mask(mask, (4, 8))[0, 0, 0], torch.tensor([1.0] * 4 + [0.0] * 4))


# -- "only masked": the crop region --------------------------------------------------------------------------

def box_mask(x1, y1, x2, y2, width=32, height=32):
    mask = np.zeros((height, width), np.uint8)
    mask[y1:y2, x1:x2] = 255
    return Image.fromarray(mask)


@pytest.mark.parametrize("box, padding, size, expected", [
    # bbox (2, 4, 18, 20) + 4 -> (0, 0, 22, 24); 22 / 24 < 1: width + int(24 - 22) = 2, 1 each side
    # -> (-1, 23), shifted inside -> (0, 24)
    ((2, 4, 18, 20), 4, (32, 32), (0, 0, 24, 24)),
    ((30, 1, 31, 2), 0, (32, 32), (30, 1, 31, 2)),  # one pixel: already square
    # (0, 8, 32, 14): 32 / 6 > 1: height + 26, 13 each side -> (-5, 27) -> shifted to (0, 32)
    ((0, 10, 32, 12), 2, (32, 32), (0, 0, 32, 32)),
    # (9, 27, 15, 32): 6 / 5 > 1: height + int(6 - 5) = 1, all below -> (27, 33) -> past the edge, shifted to (26, 32)
    ((10, 28, 14, 31), 1, (32, 32), (9, 26, 15, 32)),
    ((10, 10, 20, 20), 0, (64, 32), (5, 10, 25, 20)),  # a 64x32 job: the box widened to 2:1, 5 each side
])
def test_crop_region_with_padding(box, padding, size, expected):
    """masking.py: get_crop_region_v2 (the mask's bbox grown by the padding, clipped to the image), then
    expand_crop_region to the job's aspect ratio (processing.py, init, inpaint_full_res)."""
    mask = box_mask(*box, width=max(size[0], 32))
    region = inpaint.crop_region(mask, padding)
    assert inpaint.expand_crop_region(region, size[0], size[1], mask.width, mask.height) == expected


def test_a_blank_mask_has_no_crop_region():
    """masking.py, get_crop_region_v2: None for an all-black mask (processing.py then does plain img2img)."""
    assert inpaint.crop_region(Image.new("L", (32, 32)), 4) is None


def test_resize_fill_and_crop_keep_the_aspect_ratio():
    """images.py, resize_image: mode 2 centres a 4x2 picture (rows 10 and 200) in 4x4 and fills each band with
    PIL's resize of a zero-height box at the edge, bicubic weights k(0.5) = .5625 and k(1.5) = -.0625 normalised
    to 1.125 and -.125: 1.125 * 10 - .125 * 200 = -13.75 -> 0 on top, 1.125 * 200 - .125 * 10 = 223.75 -> 224
    below. Mode 1 covers 2x2 with it: the 4x2 picture pasted at x = 2 // 2 - 4 // 2 = -1, its sides cut."""
    image = Image.fromarray(np.array([[10] * 4, [200] * 4], np.uint8))  # (2, 4)
    assert np.asarray(inpaint.resize_fill(image, 4, 4)).tolist() == [[0] * 4, [10] * 4, [200] * 4, [224] * 4]
    assert np.asarray(inpaint.resize_crop(image, 2, 2)).tolist() == [[10, 10], [200, 200]]


# -- masked content and the blend ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fill, expected", [
    (0, [[2.0, 2.0], [2.0, 2.0]]),  # fill: the pixels were filled before encoding; the latent is kept
    (1, [[2.0, 2.0], [2.0, 2.0]]),  # original
    (2, [[5.0, 2.0], [2.0, 2.0]]),  # latent noise: init_latent * mask + noise * nmask
    (3, [[0.0, 2.0], [2.0, 2.0]]),  # latent nothing: init_latent * mask
])
def test_masked_content_starting_latents(fill, expected):
    """processing.py, StableDiffusionProcessingImg2Img.init: inpainting_fill 2 and 3 rewrite init_latent under the
    latent mask (nmask = latmask, mask = 1 - latmask); 0 and 1 leave it."""
    z0, noise = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), 5.0)
    m = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert torch.equal(inpaint.masked_content(z0, m, fill, noise), torch.tensor([[expected]]))


def test_fill_paints_the_mask_with_the_surroundings():
    """masking.py, fill: the unmasked pixels blurred at radii 256 ... 0 and composited; the unmasked stay."""
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :16] = (220, 20, 20)  # red left half
    image[:, 16:] = (20, 20, 220)  # blue right half, to be masked
    out = np.asarray(inpaint.fill(Image.fromarray(image), columns(16, 32)), dtype=int)
    assert np.abs(out[:, :16] - image[:, :16]).max() <= 1
    assert out[:, 16:, 0].min() > 150 and out[:, 16:, 2].max() < 60  # red spreads into the hole


@pytest.mark.parametrize("x, eps, z0, m, sigma, expected", [
    # x_sigma = x sqrt(1 + sigma^2); x0-hat = x_sigma - sigma eps; blended = m x0-hat + (1 - m) z0;
    # eps' = (x_sigma - blended) / sigma
    (2.0, 1.0, 0.5, 1.0, 1.0, 1.0),  # kept: the model's eps
    (2.0, 1.0, 0.5, 0.0, 1.0, 2.328427),  # x0-hat' = z0: eps' = 2.828427 - 0.5
    (2.0, 1.0, 0.5, 0.25, 1.0, 1.996320),  # x0-hat' = .25 * 1.828427 + .75 * .5 = .832107
    (1.0, 0.5, -1.0, 0.0, 2.0, 1.618034),  # (sqrt 5 + 1) / 2
])
def test_blend_equation(x, eps, z0, m, sigma, expected):
    """sd_samplers_cfg_denoiser.py, CFGDenoiser.forward: denoised = apply_blend(denoised) = denoised * nmask
    + init_latent * mask, where k-diffusion's CompVisDenoiser makes denoised = x_sigma - sigma eps."""
    t = lambda v: torch.tensor([[v]])  # noqa: E731
    got = inpaint.blended_eps(t(x), t(eps), t(z0), t(m), sigma)
    assert got.item() == pytest.approx(expected, abs=1e-5)
    x0 = x * math.sqrt(1 + sigma**2) - sigma * got.item()
    assert x0 == pytest.approx(m * (x * math.sqrt(1 + sigma**2) - sigma * eps) + (1 - m) * z0, abs=1e-5)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_sees_the_blended_estimate(sampler):
    """CFGDenoiser.forward blends at every model call: with the latent mask 0 everywhere, every step's
    x0-hat, as the sampler itself computes it from the eps returned, is the clean init latent."""
    g = torch.Generator().manual_seed(0)
    z0, first = torch.randn((1, 4, 4, 4), generator=g), torch.randn((1, 4, 4, 4), generator=g)
    plan = make_plan(sampler, 6, make_schedule("scaled_linear"))
    seen = []
    model = inpaint.MaskBlend(lambda x, t: 0.3 * x + 0.1, z0, torch.zeros(1, 1, 4, 4), plan)
    denoise(model, plan, first, z0=z0, callback=lambda i, t, x, x0: seen.append(x0),
            noise=lambda i: torch.randn((1, 4, 4, 4), generator=g))
    assert len(seen) == len(plan.grid.timesteps)
    assert max((x0 - z0).abs().max().item() for x0 in seen) < 1e-5


def test_before_denoising_the_model_sees_the_blended_input():
    """sd_samplers_timesteps.py, CFGDenoiserTimesteps: mask_before_denoising = True, so DDIM, PLMS and UniPC
    feed the model x * nmask + init_latent * mask and return its output as it is."""
    z0, x = torch.full((1, 1, 1, 2), 7.0), torch.full((1, 1, 1, 2), 1.0)
    plan = make_plan("ddim", 4, make_schedule("scaled_linear"))
    model = inpaint.MaskBlend(lambda x, t: x, z0, torch.tensor([[[[1.0, 0.0]]]]), plan, before=True)
    assert model(x, plan.grid.timesteps[:1]).tolist() == [[[[1.0, 7.0]]]]
    assert inpaint.BLEND_BEFORE == ("DDIM", "PLMS", "UniPC")


# -- the paste ------------------------------------------------------------------------------------------------------

def test_whole_picture_paste_doubles_the_blurred_mask():
    """processing.py, init: mask_for_overlay = clip(2 * mask); apply_overlay composites the input with alpha
    255 - mask_for_overlay over the result: mask 50 -> the input at 155/255, mask >= 128 -> the result."""
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 8:16], mask[:, 16:] = 50, 200
    settings = Settings(init_image=Image.new("RGB", (32, 32), (200, 200, 200)), mask=Image.fromarray(mask))
    job = inpaint.prepare(settings, settings.init_image)
    out = job.paste(torch.zeros(1, 3, 32, 32))[0, 0] * 255  # (32, 32): the result is black
    assert out[0, :8].tolist() == [200.0] * 8  # kept
    assert abs(out[0, 10].item() - 200 * 155 / 255) <= 1  # 121.6
    assert out[0, 20].item() == 0.0  # redrawn


def test_only_masked_crops_and_pastes_back_into_place():
    """processing.py, init (inpaint_full_res): the crop is resized to the job's size (resize mode 2) and the
    result shrunk back (uncrop: resize mode 1) to paste_to = (x1, y1, x2 - x1, y2 - y1); outside the
    crop, and outside the (unblurred) mask, the input stays."""
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    settings = Settings(init_image=source, mask=box_mask(2, 4, 18, 20), inpaint_full_res=True,
                        inpaint_full_res_padding=4)
    job = inpaint.prepare(settings, source)
    assert job.paste_to == (0, 0, 24, 24) and job.init.shape == (1, 3, 32, 32) and job.mask.size == (32, 32)
    out = (job.paste(torch.zeros(1, 3, 32, 32))[0].permute(1, 2, 0) * 255).round().numpy()
    inside = np.asarray(box_mask(2, 4, 18, 20)) > 0
    assert np.abs(out[~inside] - np.asarray(source)[~inside]).max() <= 1
    assert out[inside].max() == 0


# -- settings, infotext and the whole path ------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (dict(inpainting_fill=4), "inpainting_fill"), (dict(mask_blur_x=-1), "mask_blur_x"),
    (dict(mask_round="yes"), "mask_round"), (dict(mask="not an image"), "mask must be an image"),
])
def test_bad_inpainting_options_say_what_is_allowed(change, message):
    with pytest.raises(ValueError, match=message):
        check(Settings(**{"prompt": "a", "init_image": Image.new("RGB", (32, 32)), **change}))


def test_infotext_writes_the_web_uis_inpainting_keys():
    """processing.py, init: "Mask blur" only where a blur is on (None, so absent, when x != y), "Masked content"
    for fill, latent noise and latent nothing, "Mask mode" and "Inpaint area"; they read back."""
    base = Settings(prompt="a", init_image=Image.new("RGB", (32, 32)), mask=Image.new("L", (32, 32)))
    parsed = infotext.parse(infotext.create(dataclasses.replace(base, mask_blur=0), 1, 1))
    assert "Mask blur" not in parsed and "Masked content" not in parsed
    settings = dataclasses.replace(base, mask_blur=4, inpainting_fill=2, inpainting_mask_invert=True,
                                   inpaint_full_res=True, inpaint_full_res_padding=6)
    parsed = infotext.parse(infotext.create(settings, 1, 1))
    assert (parsed["Mask blur"], parsed["Masked content"], parsed["Mask mode"]) == ("4", "latent noise",
                                                                                     "Inpaint not masked")
    fields = infotext.to_settings(parsed)
    assert (fields["mask_blur"], fields["inpainting_fill"], fields["inpainting_mask_invert"],
            fields["inpaint_full_res"], fields["inpaint_full_res_padding"]) == (4, 2, True, True, 6)
    uneven = infotext.parse(infotext.create(dataclasses.replace(base, mask_blur_x=2, mask_blur_y=3), 1, 1))
    assert "Mask blur" not in uneven
    filled = infotext.parse(infotext.create(dataclasses.replace(base, inpainting_fill=0), 1, 1))
    assert filled["Masked content"] == "fill"


def pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("fill, sampler, full_res", [(0, "Euler a", False), (1, "DDIM", True), (2, "DPM++ 2M", False),
                                                     (3, "Euler", True)])
def test_a_small_inpainting_job_draws(pipe, fill, sampler, full_res):
    """The whole path: masked content, the blend at every call, the paste; the input stays outside the mask."""
    source = generate(pipe, Settings(prompt="a large green star in the center", steps=4, seed=3)).images[0]
    mask = box_mask(4, 2, 20, 18)
    out = generate(pipe, Settings(prompt="a small red circle on the left", steps=4, seed=1, init_image=source,
                                  denoising_strength=0.9, mask=mask, inpainting_fill=fill, sampler_name=sampler,
                                  inpaint_full_res=full_res, mask_blur=1)).images[0]
    diff = np.abs(pixels(out) - pixels(source)).max(-1)  # (32, 32)
    far = np.asarray(inpaint.blurred_mask(Settings(mask=mask, mask_blur=1))) == 0
    assert diff[far].max() <= 1  # the input, to within rounding, wherever the blurred mask is 0
    assert diff[np.asarray(mask) > 0].mean() > 5  # something was redrawn inside


def test_only_masked_with_a_blank_mask_is_img2img(pipe):
    """processing.py, init: a blank mask with "only masked" turns the job into plain img2img."""
    source = generate(pipe, Settings(prompt="a blue square", steps=3, seed=2)).images[0]
    job = dict(prompt="a red circle", steps=3, seed=4, init_image=source, denoising_strength=0.6)
    plain = generate(pipe, Settings(**job)).images[0]
    blank = generate(pipe, Settings(**job, mask=Image.new("L", (32, 32)), inpaint_full_res=True)).images[0]
    assert np.array_equal(pixels(plain), pixels(blank))
