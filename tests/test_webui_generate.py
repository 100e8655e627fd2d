"""txt2img, img2img and inpainting as the web UI runs them; seeds; infotext; the X/Y/Z plot."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_notes.practice.webui import infotext, xyz
from diffusion_notes.practice.webui.generate import Settings, check, generate, start_step
from diffusion_notes.practice.webui.seeds import ImageRNG, slerp

PROMPT = "a small red circle on the left"


def pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a"])
def test_txt2img_equals_the_pipeline(pipe, sampler):
    result = generate(pipe, Settings(prompt=PROMPT, steps=6, sampler_name=sampler, cfg_scale=4, seed=7, n_iter=2))
    for i in range(2):
        direct = pipe(PROMPT, num_inference_steps=6, sampler=sampler, guidance_scale=4.0, output_type="pil",
                      generator=torch.Generator().manual_seed(7 + i)).images[0]
        assert np.array_equal(pixels(result.images[i]), pixels(direct))
    assert result.seeds == [7, 8]


def test_image_i_of_a_batch_is_seed_plus_i(pipe):
    batch = generate(pipe, Settings(prompt=PROMPT, steps=4, sampler_name="Euler a", seed=11, batch_size=3))
    alone = generate(pipe, Settings(prompt=PROMPT, steps=4, sampler_name="Euler a", seed=13))
    assert batch.seeds == [11, 12, 13]
    assert np.abs(pixels(batch.images[2]) - pixels(alone.images[0])).max() <= 1  # batched convolutions: last bits


def test_variation_seed_slerps_the_noise():
    rng = lambda strength: ImageRNG((4, 8, 8), [1], [2], strength).first()[0]  # noqa: E731
    a, b = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(1)), \
        torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(2))
    assert torch.equal(rng(0.0), a)
    assert torch.allclose(rng(1.0), b, atol=1e-5)
    half = rng(0.5)
    assert abs(half.norm() / a.norm() - 1) < 0.1  # slerp keeps the norm; the average would shrink it by ~0.7
    assert torch.allclose(half, slerp(0.5, a, b))  # on one image's (C, H, W) noise, as the web UI slerps it


def test_denoising_strength_maps_to_the_start_step():
    assert [start_step(20, s) for s in (0.0, 0.5, 0.75, 1.0)] == [19, 9, 4, 0]  # runs int(s n) + 1 steps


def test_inpainting_keeps_the_unmasked_region(pipe):
    source = generate(pipe, Settings(prompt="a large green star in the center", steps=5, seed=3)).images[0]
    mask = np.zeros((32, 32), np.uint8)
    mask[4:20, 2:18] = 255  # redraw the top-left block
    for full_res in (False, True):
        out = generate(pipe, Settings(prompt=PROMPT, steps=8, seed=1, init_image=source, denoising_strength=0.9,
                                      mask=Image.fromarray(mask), inpaint_full_res=full_res)).images[0]
        diff = np.abs(pixels(out) - pixels(source)).max(-1)  # (32, 32)
        assert diff[mask == 0].max() <= 2  # within 2/255 outside the mask
        assert diff[mask > 0].mean() > 5  # and something was redrawn inside


def test_img2img_at_low_strength_stays_near_the_input(pipe):
    source = generate(pipe, Settings(prompt=PROMPT, steps=5, seed=3)).images[0]
    out = generate(pipe, Settings(prompt="a large blue square", steps=10, seed=1, init_image=source,
                                  denoising_strength=0.1)).images[0]
    far = generate(pipe, Settings(prompt="a large blue square", steps=10, seed=1, init_image=source,
                                  denoising_strength=1.0)).images[0]
    near_diff = np.abs(pixels(out) - pixels(source)).mean()
    assert near_diff < np.abs(pixels(far) - pixels(source)).mean()


FULL = Settings(prompt="a (small:1.2) red circle, on the left\n[red:blue:0.5]: second line",
                negative_prompt='a "blue" square, big', steps=17, sampler_name="DPM++ 2M Karras", cfg_scale=5.5,
                seed=123, subseed=456, subseed_strength=0.25, batch_size=2)


def test_infotext_round_trip_restores_every_setting():
    text = infotext.create(FULL, FULL.seed, FULL.subseed, ("merged_model", "0123456789"))
    fields = infotext.to_settings(infotext.parse(text))
    for name in ("prompt", "negative_prompt", "steps", "sampler_name", "cfg_scale", "seed", "subseed",
                 "subseed_strength", "batch_size", "width", "height"):
        assert fields[name] == getattr(FULL, name), name
    assert fields["sd_model_hash"] == "0123456789" and fields["sd_model_name"] == "merged_model"
    image = infotext.read_image(infotext.png_bytes(Image.new("RGB", (32, 32)), text))
    assert infotext.read(image)[0] == text
    assert check(Settings(**{k: fields[k] for k in fields if k in Settings.__dataclass_fields__})) == FULL


def test_infotext_of_img2img_and_a_parameterless_text():
    settings = dataclasses.replace(FULL, init_image=Image.new("RGB", (32, 32)), denoising_strength=0.6,
                                   mask=Image.new("L", (32, 32)), mask_blur=2)
    fields = infotext.to_settings(infotext.parse(infotext.create(settings, 1, 2)))
    assert (fields["denoising_strength"], fields["mask_blur"]) == (0.6, 2)
    assert infotext.parse("just a prompt") == {"Prompt": "just a prompt", "Negative prompt": ""}


def test_generated_images_carry_their_infotext(pipe):
    result = generate(pipe, Settings(prompt=PROMPT, steps=3, seed=5, batch_size=2), ("ldm_unet", "abcdef0123"))
    fields = infotext.to_settings(infotext.parse(result.infotexts[1]))
    assert (fields["seed"], fields["steps"], fields["sd_model_hash"]) == (6, 3, "abcdef0123")
    assert (result.model_name, result.model_hash) == ("ldm_unet", "abcdef0123")  # the result says it too
    assert (fields["sd_model_name"], result.paths) == ("ldm_unet", [])  # generate writes no files


@pytest.mark.parametrize("change, message", [
    (dict(steps=0), "steps"), (dict(cfg_scale=-1.0), "cfg_scale"), (dict(sampler_name="PLMS"), "sampler"),
    (dict(batch_size=10_000), "batch_size"), (dict(prompt="(a:1.2.3)"), "emphasis"),
    (dict(width=520), "multiple of 8 from 32 to 512"),
    (dict(seed=-5), "seed"), (dict(denoising_strength=2.0), "denoising_strength"),
    (dict(mask=Image.new("L", (32, 32))), "init image"),
])
def test_bad_settings_say_what_is_wrong(change, message):
    with pytest.raises(ValueError, match=message):
        check(Settings(**{"prompt": "a", **change}))


def test_xyz_values_and_plot(pipe):
    assert xyz.parse_values("Steps", "1-5") == [1, 2, 3, 4, 5]
    assert xyz.parse_values("CFG Scale", "1-9 (+4)") == [1.0, 5.0, 9.0]
    assert xyz.parse_values("Seed", "0-10 [3]") == [0, 5, 10]
    assert xyz.parse_values("Sampler", "euler_a, DDIM") == ["Euler a", "DDIM"]
    assert xyz.parse_values("Prompt S/R", 'red, "dark blue"') == ["red", "dark blue"]
    with pytest.raises(ValueError, match="axis"):
        xyz.parse_values("Hires steps", "1")
    job = lambda s: generate(pipe, s)  # noqa: E731
    plot = xyz.run(job, Settings(prompt=PROMPT, steps=3, seed=2), "CFG Scale", "1, 7", "Prompt S/R", "red, blue")
    assert len(plot.images) == 4 and plot.labels[1] == ["Prompt S/R: red", "Prompt S/R: blue"]
    assert "blue circle" in plot.infotexts[3] and "CFG scale: 7" in plot.infotexts[3]
    assert plot.grid.size[0] > 2 * 64
    single = generate(pipe, Settings(prompt=PROMPT.replace("red", "blue"), steps=3, seed=2, cfg_scale=7.0))
    assert np.array_equal(pixels(single.images[0]), pixels(plot.images[3]))
