"""Sizes as the web UI takes them: any multiple of 8 up to 512, img2img's resize modes, several init images."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_notes.practice.webui.generate import Settings, check, check_size, generate
from diffusion_notes.practice.webui.hires import encode
from diffusion_notes.practice.webui.resize import fitted_size, latent_resize, resize_image

PROMPT = "a small red circle on the left"


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def gradient(width, height):
    """A picture whose every pixel differs from its neighbours: red grows to the right, green downward."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.mark.parametrize("size", [(32, 32), (512, 512), (40, 64), (504, 32), (32, 256)])
def test_multiples_of_8_from_32_to_512_are_sizes(size):
    """The web UI's sliders step by 8 (its default is 512x512); 512 is our limit."""
    assert check_size(*size) == size
    assert check(Settings(width=size[0], height=size[1])).width == size[0]


@pytest.mark.parametrize("width, height", [(36, 32), (32, 31), (520, 32), (24, 32), (0, 32), (32.0, 32),
                                           (True, 32), ("64", 32)])
def test_other_sizes_are_refused_with_what_is_allowed(width, height):
    with pytest.raises(ValueError, match="must be a multiple of 8 from 32 to 512"):
        check(Settings(width=width, height=height))


@pytest.mark.slow
def test_a_512x512_job_returns_a_512x512_picture(pipe):
    """An unmodified script's txt2img (processing.py's defaults: 512x512) gets a picture of that size."""
    result = generate(pipe, Settings(prompt=PROMPT, steps=1, sampler_name="Euler", seed=1, width=512, height=512))
    assert result.images[0].size == (512, 512)
    assert "Size: 512x512" in result.infotexts[0]


def test_the_latent_is_a_quarter_of_the_picture(pipe):
    """The UNet draws a (4, H/4, W/4) latent for our VAE (f = 4, where SD's is 8); the picture is W x H."""
    assert pipe.vae.downsampling_factor == 4
    seen = []
    generate(pipe, Settings(prompt=PROMPT, steps=2, seed=1, width=64, height=40),
             callback=lambda i, t, x, x0: seen.append(tuple(x.shape)))
    assert seen[0] == (1, 4, 10, 16)


# images.resize_image: (mode, picture size, frame) -> the size the picture is scaled to before it is centred.
# Mode 1 (crop and resize) covers the frame, mode 2 (resize and fill) fits in it; the other side is
# w * height // h or h * width // w, rounded down.
FITTED = [
    (1, (64, 32), 32, 32, (64, 32)),  # ratio 1 <= 2: the height is the frame's, the width 64 * 32 // 32
    (2, (64, 32), 32, 32, (32, 16)),  # ratio 1 < 2: the width is the frame's, the height 32 * 32 // 64
    (1, (32, 64), 64, 32, (64, 128)),  # ratio 2 > 0.5: width 64, height 64 * 64 // 32
    (2, (32, 64), 64, 32, (16, 32)),  # ratio 2 >= 0.5: height 32, width 32 * 32 // 64
    (1, (50, 30), 32, 40, (66, 40)),  # 50 * 40 // 30 = 66 (66.7 rounded down)
    (2, (50, 30), 32, 40, (32, 19)),  # 30 * 32 // 50 = 19 (19.2 rounded down)
    (1, (100, 75), 64, 48, (64, 48)),  # same ratio: the frame itself
    (2, (100, 75), 64, 48, (64, 48)),
]


@pytest.mark.parametrize("mode, size, width, height, expected", FITTED)
def test_resize_modes_scale_the_picture_as_resize_image(mode, size, width, height, expected):
    """modules/images.py resize_image: src_w and src_h of modes 1 and 2."""
    assert fitted_size(mode, size, width, height) == expected


def test_crop_and_resize_keeps_the_centre():
    """images.resize_image mode 1: a 64x32 picture into 32x32 is pasted at (16 - 32, 16 - 16): columns 16..47."""
    picture = gradient(64, 32)
    out = resize_image(1, picture, 32, 32)
    assert out.size == (32, 32)
    assert np.array_equal(pixels(out), pixels(picture)[:, 16:48])


def test_resize_and_fill_stretches_the_edge_rows_into_the_bands():
    """images.resize_image mode 2: 64x32 into 32x32 is 32x16 at (0, 8); rows 0-7 and 24-31 repeat its edges."""
    picture = gradient(64, 32)
    out = pixels(resize_image(2, picture, 32, 32))
    inner = pixels(picture.resize((32, 16), Image.LANCZOS))
    assert np.array_equal(out[8:24], inner)
    assert (out[:8] == out[0]).all() and (out[24:] == out[24]).all()  # every band row the same
    assert np.abs(out[0] - inner[0]).max() <= 3 and np.abs(out[24] - inner[-1]).max() <= 3  # the edge row, resampled
    sideways = pixels(resize_image(2, picture.transpose(Image.TRANSPOSE), 32, 32))  # 32x64: bands left and right
    assert np.array_equal(sideways[:, 8:24], pixels(picture.transpose(Image.TRANSPOSE).resize((16, 32), Image.LANCZOS)))


def test_just_resize_is_a_lanczos_resize_and_mode_3_leaves_the_picture():
    """images.resize_image mode 0 with no img2img upscaler: im.resize((w, h), LANCZOS)."""
    picture = gradient(50, 30)
    assert np.array_equal(pixels(resize_image(0, picture, 32, 40)), pixels(picture.resize((32, 40), Image.LANCZOS)))
    assert resize_image(3, picture, 32, 40) is picture


def test_latent_upscale_mode_is_bilinear_on_the_latent():
    """processing.py img2img init, resize_mode 3: interpolate(init_latent, (h/f, w/f), mode="bilinear").

    A row [0, 1] doubled (align_corners False): sources -0.25, 0.25, 0.75, 1.25 -> 0, 0.25, 0.75, 1.
    """
    z = torch.tensor([[0.0, 1.0]])[None, None]  # (1, 1, 1, 2)
    assert torch.allclose(latent_resize(z, 1, 4), torch.tensor([0.0, 0.25, 0.75, 1.0]))


def test_mode_3_encodes_the_picture_at_its_own_size(pipe):
    """Resize mode 3 at the picture's own size is mode 0 (both resizes are the identity); larger, it differs."""
    picture = generate(pipe, Settings(prompt=PROMPT, steps=3, seed=2, width=40, height=32)).images[0]
    job = dict(prompt="a large green star in the center", steps=4, seed=5, init_image=picture, denoising_strength=0.6)
    same = [generate(pipe, Settings(width=40, height=32, resize_mode=mode, **job)).images[0] for mode in (0, 3)]
    assert np.array_equal(pixels(same[0]), pixels(same[1]))
    smaller = [generate(pipe, Settings(width=32, height=32, resize_mode=mode, **job)).images[0] for mode in (0, 3)]
    assert smaller[1].size == (32, 32) and not np.array_equal(pixels(smaller[0]), pixels(smaller[1]))
    assert encode(pipe, torch.rand(1, 3, 37, 50)).shape == (1, 4, 9, 12)  # rounded down, as SD's VAE


def test_one_init_image_serves_the_whole_batch(pipe):
    """processing.py img2img init: one image is repeated over the batch; init_image is that one image."""
    picture = generate(pipe, Settings(prompt=PROMPT, steps=3, seed=2)).images[0]
    job = dict(prompt="a large green star in the center", steps=4, seed=5, batch_size=2, denoising_strength=0.6)
    listed = generate(pipe, Settings(init_images=[picture], **job))
    single = generate(pipe, Settings(init_image=picture, **job))
    assert [pixels(i).tolist() for i in listed.images] == [pixels(i).tolist() for i in single.images]


def test_several_init_images_make_the_batch_and_repeat_over_iterations(pipe):
    """processing.py img2img init: k <= batch_size images make a batch of k (batch_size = len(imgs)), and
    the same init latents serve every iteration, so image i of the job starts from init_images[i % k]."""
    pictures = [generate(pipe, Settings(prompt=p, steps=3, seed=2)).images[0]
                for p in (PROMPT, "a large green star in the center")]
    job = dict(prompt="a blue square", steps=4, denoising_strength=0.6)
    result = generate(pipe, Settings(init_images=pictures, batch_size=4, n_iter=2, seed=10, **job))
    assert result.settings.batch_size == 2 and len(result.images) == 4
    for i, image in enumerate(result.images):
        alone = generate(pipe, Settings(init_image=pictures[i % 2], seed=10 + i, **job)).images[0]
        assert np.abs(pixels(image) - pixels(alone)).max() <= 1  # batched convolutions: last bits


@pytest.mark.parametrize("change, message", [
    (dict(init_images=[Image.new("RGB", (32, 32))] * 3, batch_size=2), "3 init_images for a batch of 2"),
    (dict(init_images=["not an image"]), r"init_images\[0\] must be an image"),
    (dict(init_image=Image.new("RGB", (32, 32)), resize_mode=4), "resize_mode must be one of"),
    (dict(init_image=Image.new("RGB", (32, 32)), mask=Image.new("L", (32, 32)), resize_mode=3), "resize_mode 0"),
    (dict(init_image=Image.new("RGB", (32, 32)), mask=Image.new("L", (32, 32)), width=64), "32x32 pictures only"),
])
def test_bad_init_images_say_what_is_wrong(change, message):
    with pytest.raises(ValueError, match=message):
        check(Settings(**change))
