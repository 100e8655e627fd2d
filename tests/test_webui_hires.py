"""Hires fix as the web UI's processing.py runs it: target sizes, second-pass steps, upscalers, infotext."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_notes.practice.webui import infotext, upscalers
from diffusion_notes.practice.webui.generate import Settings, check, generate
from diffusion_notes.practice.webui.hires import Target, crop_latent, second_pass_steps, target_size

PROMPT = "a small red circle on the left"


def pixels(image):
    return np.asarray(image, dtype=np.int16)


# StableDiffusionProcessingTxt2Img.calculate_target_resolution, with the web UI's opt_f = 8:
# (width, height, hr_scale, hr_resize_x, hr_resize_y) -> (hr_upscale_to_x, hr_upscale_to_y, truncate_x, truncate_y)
TARGETS = [
    (512, 512, 2.0, 0, 0, (1024, 1024, 0, 0)),  # no resize: int(side * hr_scale)
    (512, 768, 1.5, 0, 0, (768, 1152, 0, 0)),
    (40, 24, 1.3, 0, 0, (52, 31, 0, 0)),  # int(52.000000000000004), int(31.2): rounded down
    (512, 768, 2.0, 1024, 0, (1024, 1536, 0, 0)),  # only x: y = 1024 * 768 // 512
    (512, 768, 2.0, 0, 1000, (666, 1000, 0, 0)),  # only y: x = 1000 * 512 // 768 = 666 (666.7)
    (512, 768, 2.0, 1024, 1024, (1024, 1536, 0, 64)),  # src 0.67 < dst 1: fit x, cut (1536 - 1024) // 8 rows
    (768, 512, 2.0, 1024, 1024, (1536, 1024, 64, 0)),  # src 1.5 >= dst 1: fit y, cut (1536 - 1024) // 8 columns
    (24, 40, 2.0, 64, 48, (64, 106, 0, 7)),  # 64 * 40 // 24 = 106; (106 - 48) // 8 = 7
]


@pytest.mark.parametrize("width, height, scale, x, y, expected", TARGETS)
def test_target_size_is_calculate_target_resolution(width, height, scale, x, y, expected):
    assert tuple(target_size(width, height, scale, x, y, f=8)) == expected


def test_our_vae_cuts_in_cells_of_4():
    """The same rule with our f = 4: 32x32 to 64x48 upscales to 64x64 and cuts (64 - 48) // 4 = 4 latent rows."""
    target = target_size(32, 32, 2.0, 64, 48, f=4)
    assert target == Target(64, 64, 0, 4) and target.final(4) == (64, 48)
    assert target_size(40, 32, 2.0, 64, 64, f=4) == Target(80, 64, 4, 0)  # 64 * 40 // 32 = 80, (80 - 64) // 4
    assert target_size(24, 40, 2.0, 64, 48, f=4).final(4) == (64, 48)  # 106 // 4 = 26 rows, 14 cut: 12 rows


def test_crop_takes_the_centre_with_the_odd_cell_at_the_end():
    """sample_hr_pass: samples[:, :, ty // 2 : h - (ty + 1) // 2, tx // 2 : w - (tx + 1) // 2]."""
    z = torch.arange(13 * 8.0).reshape(1, 1, 13, 8)
    cut = crop_latent(z, Target(64, 106, 3, 7))  # rows 7 // 2 = 3 to 13 - 8 // 2 = 9, columns 1 to 8 - 2 = 6
    assert torch.equal(cut, z[..., 3:9, 1:6])


# sd_samplers_common.setup_img2img_steps with steps given (the hires pass always gives them):
# N = int(steps / min(d, 0.999)), t_enc = steps - 1, sigmas[N - t_enc - 1:]: the loop starts at N - steps.
STEPS = [
    (20, 0.7, (28, 8)),  # 20 / 0.7 = 28.57
    (20, 0.75, (26, 6)),  # 26.67
    (20, 0.5, (40, 20)),
    (10, 1.0, (10, 0)),  # min(1, 0.999): 10.01
    (5, 0.3, (16, 11)),  # 16.67
    (1, 0.05, (20, 19)),  # 1 / 0.05 = 20.000000000000004 in floats
]


@pytest.mark.parametrize("steps, strength, expected", STEPS)
def test_second_pass_runs_its_steps_at_the_end_of_a_longer_grid(steps, strength, expected):
    assert second_pass_steps(steps, strength) == expected


def test_latent_modes_are_the_web_uis():
    """shared.latent_upscale_modes: six names, each an interpolate mode and antialias flag."""
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]  # (1, 1, 2, 2)
    near = upscalers.latent_upscale(z, (4, 4), "Latent (nearest)")
    assert torch.equal(near[0, 0], torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]))
    bilinear = upscalers.latent_upscale(z, (4, 4), "Latent")  # align_corners False: 1, 1.25, 1.75, 2 along a row
    assert torch.allclose(bilinear[0, 0, 0], torch.tensor([1.0, 1.25, 1.75, 2.0]))
    assert [m["name"] for m in upscalers.api_latent_upscale_modes()] == [
        "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)",
        "Latent (nearest-exact)"]
    assert [u["name"] for u in upscalers.api_upscalers()] == ["None", "Lanczos", "Nearest"]


def test_pixel_upscalers_round_down_to_multiples_of_8():
    """upscaler.py Upscaler.upscale: dest = int(side * scale // 8 * 8); UpscalerNearest is PIL's NEAREST."""
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    doubled = upscalers.pixel_upscale(picture, 2.0, "Nearest")
    assert doubled.tobytes() == picture.resize((80, 48), Image.NEAREST).tobytes()
    assert upscalers.pixel_upscale(picture, 1.3, "Lanczos").size == (48, 24)  # 52 // 8 * 8, 31.2 // 8 * 8
    with pytest.raises(ValueError, match="the upscalers are Latent, .*, None, Lanczos, Nearest"):
        upscalers.check_upscaler("R-ESRGAN 4x+")


def test_hires_with_a_pixel_upscaler_is_img2img_on_the_upscaled_picture(pipe):
    """sample_hr_pass: decode, resize_image(0, ..., upscaler) ("None": Lanczos), encode, then img2img with a
    fresh ImageRNG from the same seeds at the new size and the hires prompts. With 5 second-pass steps at
    strength 0.5 the grid has 10 steps and the pass starts at 5: the start of img2img with 10 steps at 0.4."""
    first = dict(prompt=PROMPT, negative_prompt="a blue square", steps=6, seed=3, batch_size=2)
    hr = generate(pipe, Settings(**first, enable_hr=True, hr_upscaler="None", hr_second_pass_steps=5,
                                 denoising_strength=0.5, hr_prompt="a large green star", hr_negative_prompt="red"))
    small = generate(pipe, Settings(**first)).images
    for i, picture in enumerate(small):
        redrawn = generate(pipe, Settings(prompt="a large green star", negative_prompt="red", steps=10, seed=3 + i,
                                          init_image=picture, width=64, height=64, denoising_strength=0.4))
        assert hr.images[i].size == (64, 64)
        assert np.abs(pixels(hr.images[i]) - pixels(redrawn.images[0])).max() <= 1  # batched convolutions


def test_hires_steps_0_means_the_first_pass_steps(pipe):
    job = dict(prompt=PROMPT, steps=4, seed=1, enable_hr=True, denoising_strength=0.6)
    same = [generate(pipe, Settings(**job, hr_second_pass_steps=s)).images[0] for s in (0, 4)]
    assert np.array_equal(pixels(same[0]), pixels(same[1]))


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Nearest", "Lanczos"])
def test_hires_resize_to_a_size_cuts_the_latent(pipe, upscaler):
    result = generate(pipe, Settings(prompt=PROMPT, steps=3, seed=1, enable_hr=True, hr_resize_x=64, hr_resize_y=48,
                                     hr_upscaler=upscaler, denoising_strength=0.5))
    assert result.images[0].size == (64, 48)
    assert result.infotexts[0].endswith(f"Denoising strength: 0.5, Hires resize: 64x48, Hires upscaler: {upscaler}, "
                                        f"Version: {infotext.VERSION}")


def test_infotext_carries_hires_fix_and_reads_it_back():
    """StableDiffusionProcessingTxt2Img.init's extra_generation_params; infotext_utils turns enable_hr on."""
    settings = check(Settings(prompt=PROMPT, seed=1, enable_hr=True, hr_scale=2.0, hr_second_pass_steps=7,
                              hr_upscaler="Latent (bicubic)", denoising_strength=0.45, hr_prompt="a blue square"))
    text = infotext.create(settings, 1, 1)
    assert text.endswith("Size: 32x32, Denoising strength: 0.45, Hires prompt: a blue square, Hires upscale: 2, "
                         f"Hires steps: 7, Hires upscaler: Latent (bicubic), Version: {infotext.VERSION}")
    back = infotext.to_settings(infotext.parse(text))
    assert {k: back[k] for k in ("enable_hr", "hr_scale", "hr_second_pass_steps", "hr_upscaler", "hr_prompt",
                                 "denoising_strength")} == {
        "enable_hr": True, "hr_scale": 2.0, "hr_second_pass_steps": 7, "hr_upscaler": "Latent (bicubic)",
        "hr_prompt": "a blue square", "denoising_strength": 0.45}
    resized = infotext.to_settings(infotext.parse("x\nSteps: 5, Seed: 1, Size: 32x32, Denoising strength: 0.5, "
                                                  "Hires resize: 64x48, Hires upscaler: Nearest"))
    assert (resized["hr_resize_x"], resized["hr_resize_y"], resized["enable_hr"]) == (64, 48, True)


@pytest.mark.parametrize("change, message", [
    (dict(hr_scale=32.0), "hires fix would draw 1024x1024; its width must be a multiple of 8 from 32 to 512"),
    (dict(width=512, height=512), "hires fix would draw 1024x1024"),
    (dict(hr_scale=1.2), "hires fix would draw 36x36"),  # int(32 * 1.2) = 38 -> 38 // 4 = 9 latent cells of 4
    (dict(hr_upscaler="4x-UltraSharp"), "unknown upscaler '4x-UltraSharp'; the upscalers are Latent"),
    (dict(denoising_strength=0.0), "denoising_strength > 0"),
    (dict(hr_scale=0), "hr_scale must be a positive number"),
    (dict(hr_resize_x=-8), "hr_resize_x must be an int"),
    (dict(hr_second_pass_steps=151), "hr_second_pass_steps must be an int from 0 to 150"),
    (dict(hr_prompt="(a:1.2.3)"), "emphasis"),
    (dict(init_image=Image.new("RGB", (32, 32))), "hires fix .* is for txt2img"),
])
def test_bad_hires_settings_say_what_is_allowed(change, message):
    with pytest.raises(ValueError, match=message):
        check(Settings(**{"enable_hr": True, "hr_scale": 2.0, **change}))
