"""pipeline.py: text-to-image and image-to-image with a tiny random UNet and VAE and the shipped CLIP;
samplers.noise_to_grid_point and sample(..., start_step=k), the img2img start.
"""

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from diffusion_notes import pretrained
from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.device import make_generator, randn
from diffusion_notes.foundations.diffusion import q_sample
from diffusion_notes.foundations.grids import make_grid, noise_to_grid_point
from diffusion_notes.foundations.samplers import SAMPLER_ALIASES, SAMPLERS, resolve_sampler, sample
from diffusion_notes.nn.unet import UNet, UNetConfig
from diffusion_notes.stable_diffusion.ldm import ldm_schedule, null_context
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline, PipelineOutput, to_pil
from diffusion_notes.stable_diffusion.vae import AutoencoderKL, VAEConfig

PROMPT = "a small red circle on the left"
STEPS = 4


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(channels=(16, 32)))
    vae = AutoencoderKL(VAEConfig(channels=(8, 16, 16)))
    return LatentDiffusionPipeline(unet, vae, pretrained.load("clip"), scale_factor=0.8)


@pytest.fixture(scope="module")
def init_images():
    """Two Shapes images on the [0, 1] scale, (2, 3, 32, 32)."""
    return (ShapesDataset("train", 2, seed=5).images() + 1) / 2


def run(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(prompt, generator=make_generator(seed), **kwargs)


@contextmanager
def unet_calls(pipe):
    """Record the inputs (x_t, t, context) of every UNet call."""
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args))
    try:
        yield calls
    finally:
        hook.remove()


# --- text to image ------------------------------------------------------------------------


def test_pt_output_shape_range_and_order(pipe):
    prompts = ["a small red circle on the left", "a large blue square at the top"]
    with unet_calls(pipe) as calls:
        out = run(pipe, prompts, num_images_per_prompt=3, guidance_scale=1)
    assert isinstance(out, PipelineOutput)
    assert out.images.shape == (6, 3, 32, 32) and out.latents.shape == (6, 4, 8, 8)
    assert out.images.min() >= 0 and out.images.max() <= 1
    torch.testing.assert_close(out.images, pipe.decode_latents(out.latents))
    # images are grouped by prompt: rows 0-2 see prompt 0, rows 3-5 prompt 1
    expected = pipe.encode_prompt(prompts).repeat_interleave(3, 0)
    assert torch.equal(calls[0][2], expected)


def test_pil_and_latent_outputs(pipe):
    pt = run(pipe, num_images_per_prompt=2)
    pil = run(pipe, num_images_per_prompt=2, output_type="pil")
    assert isinstance(pil.images, list) and len(pil.images) == 2
    assert all(im.size == (32, 32) and im.mode == "RGB" for im in pil.images)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(pil.images, to_pil(pt.images)))
    latent = run(pipe, num_images_per_prompt=2, output_type="latent")
    assert latent.images.shape == (2, 4, 8, 8)
    assert torch.equal(latent.images, pt.latents) and torch.equal(latent.latents, pt.latents)


def test_seed_reproduces_and_changes_the_images(pipe):
    a, b, c = run(pipe, seed=1), run(pipe, seed=1), run(pipe, seed=2)
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.latents, c.latents)


@pytest.mark.parametrize("sampler", [*SAMPLERS, *SAMPLER_ALIASES])
def test_every_sampler_and_web_ui_name_works(pipe, sampler):
    with unet_calls(pipe) as calls:
        out = run(pipe, sampler=sampler, num_inference_steps=3)
    assert out.images.shape == (1, 3, 32, 32) and torch.isfinite(out.latents).all()
    twice = resolve_sampler(sampler, None)[0] in ("heun", "dpm2", "dpm2_a")  # two calls a step, but the last
    assert len(calls) == (5 if twice else 3)


def test_web_ui_karras_name_equals_the_option(pipe):
    by_name = run(pipe, sampler="DPM++ 2M Karras")
    by_option = run(pipe, sampler="dpmpp_2m", use_karras_sigmas=True)
    plain = run(pipe, sampler="dpmpp_2m")
    assert torch.equal(by_name.latents, by_option.latents)
    assert not torch.allclose(by_name.latents, plain.latents)


@pytest.mark.parametrize("guidance_scale, factor", [(1, 1), (1.0, 1), (4.0, 2), (0, 2)])
def test_guidance_doubles_the_unet_batch(pipe, guidance_scale, factor):
    """N = 2 prompts x 3 images: N rows per call unguided, 2N (cond and uncond together) guided."""
    with unet_calls(pipe) as calls:
        run(pipe, [PROMPT, "a blue square"], num_images_per_prompt=3, guidance_scale=guidance_scale)
    assert len(calls) == STEPS
    assert all(args[0].shape[0] == 6 * factor for args in calls)


def test_empty_prompt_is_the_unconditional_context(pipe):
    null = null_context(pipe.clip)
    torch.testing.assert_close(pipe.encode_prompt([""]), null[None], rtol=0, atol=0)
    torch.testing.assert_close(pipe.encode_prompt(["   ", PROMPT])[0], null, rtol=0, atol=0)
    assert not torch.allclose(pipe.encode_prompt([PROMPT])[0], null)
    # guiding "" against "" changes nothing: eps_u + s (eps_c - eps_u) = eps_u
    unguided = run(pipe, "", guidance_scale=1)
    guided = run(pipe, "", guidance_scale=6)
    torch.testing.assert_close(guided.latents, unguided.latents, rtol=1e-4, atol=1e-4)


def test_negative_prompt_is_the_unconditional_context(pipe):
    negative = "a large blue square at the top"
    with unet_calls(pipe) as calls:
        with_negative = run(pipe, negative_prompt=negative, guidance_scale=5)
    assert torch.equal(calls[0][2][1], pipe.encode_prompt([negative])[0])  # the second half of the batch
    assert torch.equal(calls[0][2][0], pipe.encode_prompt([PROMPT])[0])
    assert not torch.allclose(with_negative.latents, run(pipe, guidance_scale=5).latents)
    # the same as sampling by hand with that text as uncond
    by_hand = sample(pipe.unet, (1, 4, 8, 8), sampler="dpmpp_2m", num_inference_steps=STEPS, schedule=pipe.schedule,
                     generator=make_generator(0), cond=pipe.encode_prompt([PROMPT]),
                     uncond=pipe.encode_prompt([negative]), guidance_scale=5.0)
    torch.testing.assert_close(with_negative.latents, by_hand, rtol=0, atol=0)


def test_negative_prompt_counts_must_match(pipe):
    out = run(pipe, [PROMPT, "a blue square"], negative_prompt="green", guidance_scale=2)  # one for all
    assert out.images.shape[0] == 2
    with pytest.raises(ValueError, match="2 prompts but 3 negative prompts"):
        run(pipe, [PROMPT, "a blue square"], negative_prompt=["a", "b", "c"])


def test_long_prompt_warns_and_still_works(pipe):
    with pytest.warns(UserWarning, match="77"):
        out = run(pipe, "a small red circle on the left " * 20)
    assert out.images.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_inference_steps=0), "num_inference_steps must be an int between 1 and 1000, got 0"),
    (dict(num_inference_steps=1001), "num_inference_steps must be an int between 1 and 1000, got 1001"),
    (dict(num_inference_steps=2.5), "num_inference_steps must be an int"),
    (dict(guidance_scale=-1), "guidance_scale must be a finite number >= 0"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number >= 0"),
    (dict(strength=-0.1), r"strength must be a number in \[0, 1\]"),
    (dict(strength=1.5), r"strength must be a number in \[0, 1\]"),
    (dict(strength=float("nan")), r"strength must be a number in \[0, 1\]"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt must be a positive int, got 0"),
    (dict(sampler="plms"), "sampler must be one of .*DPM\\+\\+ 2M Karras.*, got 'plms'"),
    (dict(output_type="np"), "output_type must be one of pt, pil, latent, got 'np'"),
    (dict(prompt=[]), "prompt must be a string or a non-empty list of strings"),
    (dict(prompt=7), "prompt must be a string or a non-empty list of strings"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_bad_arguments_raise_useful_errors(pipe, kwargs, message):
    kwargs = {"prompt": PROMPT, **kwargs}
    with unet_calls(pipe) as calls, pytest.raises(ValueError, match=message):
        pipe(**kwargs)
    assert not calls  # rejected before any work


def test_bad_init_images_raise_useful_errors(pipe, init_images):
    bad = {
        "the init image must be 32x32 pixels, got 64x64": to_pil(init_images[:1].repeat(1, 1, 2, 2))[0],
        r"must have shape \(3, 32, 32\) or \(B, 3, 32, 32\), got \((1, )?3, 16, 16\)": init_images[0, :, :16, :16],
        r"values must lie in \[0, 1\]": init_images[:1] * 2 - 1,  # a [-1, 1] image
        "PIL image or a float tensor": (init_images[:1] * 255).to(torch.uint8),
    }
    for message, image in bad.items():
        with pytest.raises(ValueError, match=message):
            run(pipe, image=image, strength=0.5)
    with pytest.raises(ValueError, match="one per prompt; got 2 images for 3 prompts"):
        run(pipe, ["a", "b", "c"], image=init_images, strength=0.5)


# --- image to image -------------------------------------------------------------------


def test_strength_zero_returns_the_decoded_posterior_mean(pipe, init_images):
    with unet_calls(pipe) as calls:
        out = run(pipe, image=init_images[:1], strength=0.0)
    assert not calls
    with torch.no_grad():
        expected = ((pipe.vae.decode(pipe.vae.encode(init_images[:1] * 2 - 1).mean) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(out.images, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, strength, executed", [(10, 1.0, 10), (10, 0.45, 4), (10, 0.47, 4), (10, 0.8, 8),
                                                   (7, 0.3, 2), (4, 0.2, 0)])
def test_strength_sets_the_number_of_denoising_steps(pipe, init_images, n, strength, executed):
    seen = []
    with unet_calls(pipe) as calls:
        out = run(pipe, image=init_images[:1], strength=strength, num_inference_steps=n, guidance_scale=3,
                  callback=lambda i, t, z_t, z0_hat: seen.append(i))
    assert len(calls) == executed == int(n * strength)
    assert seen == list(range(n - executed, n))  # the last `executed` steps of the n-step grid
    assert out.images.shape == (1, 3, 32, 32)


def test_img2img_starts_at_the_noised_latent_of_the_init_image(pipe, init_images):
    n, strength = 10, 0.5
    first = {}

    def callback(i, t, z_t, z0_hat):
        first.setdefault("i", i)
        first.setdefault("t", t)
        first.setdefault("z_t", z_t.clone())

    run(pipe, [PROMPT, "a blue square"], image=init_images, strength=strength, num_inference_steps=n,
        callback=callback, seed=3)
    grid = make_grid("dpmpp_2m", n, pipe.schedule)
    z0 = pipe.encode_image(init_images)  # (2, 4, 8, 8), scaled
    noise = randn((2, 4, 8, 8), make_generator(3))
    assert first["i"] == 5 and first["t"] == grid.timesteps[5]
    torch.testing.assert_close(first["z_t"], noise_to_grid_point(z0, noise, grid, 5, pipe.schedule).float())


def test_img2img_is_deterministic_and_takes_pil_images(pipe, init_images):
    a = run(pipe, image=init_images[:1], strength=0.6, seed=4)
    b = run(pipe, image=init_images[:1], strength=0.6, seed=4)
    c = run(pipe, image=init_images[:1], strength=0.6, seed=5)
    assert torch.equal(a.images, b.images) and not torch.allclose(a.latents, c.latents)
    # a PIL image gives the same as its tensor (quantised to 8 bits), also as a (3, H, W) tensor
    pil = to_pil(init_images[:1])[0]
    quantised = (init_images[0] * 255).round() / 255
    by_pil = run(pipe, image=pil, strength=0.6, seed=4)
    by_tensor = run(pipe, image=quantised, strength=0.6, seed=4)
    torch.testing.assert_close(by_pil.latents, by_tensor.latents, rtol=1e-5, atol=1e-5)
    # one init image serves every prompt and image
    out = run(pipe, [PROMPT, "a blue square"], image=pil, strength=0.6, num_images_per_prompt=2)
    assert out.images.shape == (4, 3, 32, 32)


# --- the callback and the shipped pipeline ------------------------------------------------------


def test_callback_sees_every_step(pipe):
    seen = []
    out = run(pipe, num_images_per_prompt=2, seed=6,
              callback=lambda i, t, z_t, z0_hat: seen.append((i, t, z_t.clone(), z0_hat.clone())))
    grid = make_grid("dpmpp_2m", STEPS, pipe.schedule)
    assert [i for i, *_ in seen] == list(range(STEPS))
    assert [t for _, t, *_ in seen] == grid.timesteps.tolist()
    assert all(z_t.shape == z0_hat.shape == (2, 4, 8, 8) for _, _, z_t, z0_hat in seen)
    assert torch.equal(seen[0][2], randn((2, 4, 8, 8), make_generator(6)))  # x_T
    assert not torch.equal(seen[-1][2], out.latents)  # z_t is the state before the step


@pytest.mark.skipif(not {"ldm_unet", "vae", "clip"} <= set(pretrained.available()),
                    reason="needs the shipped 'ldm_unet', 'vae' and 'clip' (DIFFUSION_NOTES_WEIGHTS=/tmp/weights_dev)")
def test_load_stable_diffusion_returns_the_pipeline():
    sd = pretrained.load("stable_diffusion")
    assert isinstance(sd, LatentDiffusionPipeline)
    assert sd.scale_factor == pretrained.info("vae")["metrics"]["scale_factor"]
    assert not sd.unet.training and not sd.vae.training
    out = sd(PROMPT, num_inference_steps=2, generator=make_generator(0))
    assert out.images.shape == (1, 3, 32, 32)


# --- the img2img start in samplers ----------------------------------------------------


def fake_model(x_t, t):
    """A deterministic stand-in for a network: eps = 0.1 x + 0.001 t."""
    return 0.1 * x_t + 0.001 * t.view(-1, *([1] * (x_t.ndim - 1)))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_noise_to_grid_point_is_q_sample_on_integer_grids(sampler):
    schedule = ldm_schedule()
    grid = make_grid(sampler, 10, schedule)
    assert not grid.timesteps.is_floating_point()
    g = make_generator(7)
    x0 = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    for index, t in enumerate(grid.timesteps.tolist()):
        torch.testing.assert_close(noise_to_grid_point(x0, noise, grid, index, schedule),
                                   q_sample(x0, t, noise, schedule), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_start_step_continues_a_full_run(sampler):
    """Restarting at grid point k from the full run's x at step k finishes identically.

    Only for samplers whose step depends on (x_t, t) alone: DPM++ 2M also uses the
    previous step's x0_hat, which a restarted run does not have (its first step is
    first-order, as in diffusers' img2img), so it is not compared.
    """
    schedule, n, k, shape = ldm_schedule(), 10, 4, (2, 4, 8, 8)
    states = {}
    full = sample(fake_model, shape, sampler=sampler, num_inference_steps=n, schedule=schedule,
                  generator=make_generator(8), callback=lambda i, t, x, x0_hat: states.setdefault(i, x.clone()))
    steps_run = []
    restarted = sample(fake_model, shape, sampler=sampler, num_inference_steps=n, schedule=schedule,
                       x_T=states[k], start_step=k, callback=lambda i, *_: steps_run.append(i))
    assert steps_run == list(range(k, n))
    torch.testing.assert_close(restarted, full, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(states[k], full)


def test_start_step_is_checked():
    schedule = ldm_schedule()
    with pytest.raises(ValueError, match="start_step > 0 needs x_T"):
        sample(fake_model, (1, 4, 8, 8), sampler="ddim", num_inference_steps=5, schedule=schedule, start_step=2)
    with pytest.raises(ValueError, match=r"start_step must be an int in \[0, 4\]"):
        sample(fake_model, (1, 4, 8, 8), sampler="ddim", num_inference_steps=5, schedule=schedule,
               x_T=torch.zeros(1, 4, 8, 8), start_step=5)


def test_progress_bar_of_a_restarted_run_ends_at_the_grid_length(capsys):
    """Image-to-image's bar starts at the skipped steps and counts only the steps that run (k..n-1)."""
    schedule, n, k = ldm_schedule(), 10, 4
    sample(fake_model, (1, 4, 8, 8), sampler="ddim", num_inference_steps=n, schedule=schedule,
           x_T=torch.zeros(1, 4, 8, 8), start_step=k, progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"{n}/{n}" in bar, bar
    assert f"{n + 1}" not in bar.split("|")[-1].split("[")[0], bar
