"""The latent-space unCLIP decoder (Stable unCLIP's design), DDIM inversion and the edits built on it.

Small untrained models check the contracts; the shipped models' numbers are in test_shipped_models.py.
"""

import functools

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler

from diffusion_notes import pretrained
from diffusion_notes.evaluation import metrics
from diffusion_notes.foundations.grids import make_grid
from diffusion_notes.foundations.samplers import ddim_invert, sample
from diffusion_notes.foundations.schedules import make_schedule
from diffusion_notes.nn.unet import UNet, UNetConfig
from diffusion_notes.stable_diffusion.ldm import ldm_schedule
from diffusion_notes.stable_diffusion.vae import AutoencoderKL, VAEConfig
from diffusion_notes.unclip.conditions import build_bank
from diffusion_notes.unclip.decoder import (
    Decoder,
    DecoderConfig,
    decoder_loss,
    decoder_schedule,
    latent_decoder_config,
)
from diffusion_notes.unclip.pipeline import GLIDEPipeline, UnCLIPPipeline
from diffusion_notes.unclip.prior import DiffusionPrior, PriorConfig

pytestmark = pytest.mark.skipif("clip" not in pretrained.available(), reason="needs the shipped 'clip'")
torch.set_num_threads(1)

SMALL_LATENT = DecoderConfig(space="latent", in_channels=4, sample_size=8, channels=(16, 32), attention=(True, False),
                             heads=2, norm_groups=8, scale_shift_norm=False)


@functools.cache
def frozen_clip():
    return pretrained.load("clip", "cpu").requires_grad_(False)


@pytest.fixture(scope="module")
def bank():
    return build_bank(frozen_clip(), 8, seed=3, progress=False)


def cond_of(bank, n=4, z_i=True):
    cond = {"z_t": bank.text.z_t[:n], "tokens": bank.text.tokens[:n], "mask": bank.text.mask[:n]}
    return {**cond, "z_i": bank.z_i[:n]} if z_i else cond


def test_latent_config_is_the_latent_unets_shape_and_checks_its_space():
    c = latent_decoder_config()
    unet = UNetConfig()
    assert (c.in_channels, c.sample_size, c.channels, c.attention, c.norm_groups, c.scale_shift_norm) == \
        (unet.in_channels, unet.sample_size, unet.channels, unet.attention, unet.norm_groups, unet.scale_shift_norm)
    assert latent_decoder_config(False).p_drop_text == 0.2 and c.p_drop_text == 0.5 and c.p_drop_image == 0.1
    with pytest.raises(ValueError, match="space"):
        DecoderConfig(space="wavelet")
    assert decoder_schedule(c).betas[0] == pytest.approx(0.00085) and decoder_schedule().betas[0] < 1e-4  # cosine
    assert torch.equal(decoder_schedule(c).alphas_cumprod, ldm_schedule().alphas_cumprod)  # the warm start's own schedule


def test_a_warm_started_glide_decoder_predicts_what_its_unet_predicts(bank):
    """Zeroed projections: the decoder starts as the UNet it copies, so fine-tuning starts from its quality."""
    torch.manual_seed(0)
    config = DecoderConfig(**{**SMALL_LATENT.__dict__, "image_embedding": False})
    unet = UNet(UNetConfig(channels=(16, 32), heads=2, norm_groups=8))
    decoder = Decoder(config).warm_start(unet)
    x, t = torch.randn(4, 4, 8, 8), torch.tensor([1, 200, 500, 999])
    cond = cond_of(bank, z_i=False)
    assert torch.allclose(decoder(x, t, cond), unet(x, t, cond["tokens"]), atol=1e-6)
    unclip = Decoder(SMALL_LATENT).warm_start(unet)
    assert unclip.image_embedding.weight.abs().sum() == 0 and unclip.image_tokens.weight.abs().sum() == 0


def test_the_latent_decoder_trains_on_latents(bank):
    torch.manual_seed(0)
    decoder = Decoder(SMALL_LATENT)
    batch = {**cond_of(bank), "images": torch.rand(4, 3, 32, 32) * 2 - 1}
    with pytest.raises(ValueError, match="z0"):
        decoder_loss(decoder, batch, null=_null())
    loss = decoder_loss(decoder, {**batch, "z0": torch.randn(4, 4, 8, 8)}, torch.Generator().manual_seed(0), null=_null())
    loss.backward()
    assert loss.ndim == 0 and decoder.image_tokens.weight.grad.abs().sum() > 0


def _null():
    from diffusion_notes.unclip.conditions import null_text

    return null_text(frozen_clip())


def _reference_inversion(eps_model, x0, schedule, n):
    """diffusers' DDIMInverseScheduler loop on the same betas."""
    scheduler = DDIMInverseScheduler(num_train_timesteps=1000, trained_betas=schedule.betas.numpy().astype(np.float64),
                                     set_alpha_to_one=True, clip_sample=False, steps_offset=0,
                                     timestep_spacing="leading")
    scheduler.set_timesteps(n)
    x = x0.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(eps_model(x, torch.full((len(x),), int(t))), t, x).prev_sample
    return x


def test_ddim_inversion_matches_diffusers_and_comes_back():
    schedule = make_schedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)

    def eps_model(x, t):  # a smooth, deterministic stand-in for a trained network
        return 0.3 * torch.tanh(x) * (1 + t.float()[:, None, None, None] / 1000)

    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = ddim_invert(eps_model, x0, schedule, 20)
    inverse = DDIMInverseScheduler(trained_betas=schedule.betas.numpy(), set_alpha_to_one=True, steps_offset=0,
                                   timestep_spacing="leading")
    inverse.set_timesteps(20)
    assert make_grid("ddim", 20, schedule).timesteps.flip(0).tolist() == inverse.timesteps.tolist()  # the same grid
    reference = _reference_inversion(eps_model, x0, schedule, 20)
    assert torch.allclose(ours, reference, atol=1e-4), float((ours - reference).abs().max())
    back = sample(lambda x, t: eps_model(x, t), x0.shape, sampler="ddim", num_inference_steps=200, schedule=schedule,
                  x_T=ddim_invert(eps_model, x0, schedule, 200))
    coarse = sample(lambda x, t: eps_model(x, t), x0.shape, sampler="ddim", num_inference_steps=10, schedule=schedule,
                    x_T=ddim_invert(eps_model, x0, schedule, 10))
    assert (back - x0).abs().max() < (coarse - x0).abs().max()  # smaller steps, closer round trip
    assert (back - x0).abs().max() < 0.05


@pytest.fixture(scope="module")
def latent_pipe():
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig(channels=(8, 16, 16)))
    return UnCLIPPipeline(DiffusionPrior(PriorConfig(width=32, layers=2, heads=2)), Decoder(SMALL_LATENT), None,
                          frozen_clip(), vae, 0.9)


def test_the_latent_pipeline_decodes_through_the_autoencoder(latent_pipe):
    out = latent_pipe("a red circle", num_inference_steps=2, prior_num_inference_steps=2,
                      generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 3, 32, 32) and out.latents.shape == (1, 4, 8, 8) and out.low_res is None
    with pytest.raises(ValueError, match="vae="):
        UnCLIPPipeline(latent_pipe.prior, latent_pipe.decoder, None, frozen_clip())
    glide = GLIDEPipeline(Decoder(DecoderConfig(**{**SMALL_LATENT.__dict__, "image_embedding": False})), None,
                          frozen_clip(), latent_pipe.vae, 0.9)
    assert glide("a red circle", num_inference_steps=2).images.shape == (1, 3, 32, 32)


def test_variations_from_the_inverted_noise(latent_pipe):
    a = torch.rand(3, 32, 32)
    x_T = latent_pipe.invert(a, num_inference_steps=4)
    assert x_T.shape == (1, 4, 8, 8)
    same = latent_pipe.variations(a, 2, eta=0.0, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(same.images[0], same.images[1])  # eta = 0: the picture's own (z_i, x_T), drawn twice alike
    redo = latent_pipe.decode(latent_pipe.encode_image(a), x_T=x_T, sampler="ddim", num_inference_steps=4)
    assert torch.allclose(same.images[0], redo.images[0], atol=1e-4), float((same.images[0] - redo.images[0]).abs().max())
    varied = latent_pipe.variations(a, 2, eta=1.0, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(varied.images[0], varied.images[1])
    diff = latent_pipe.text_diff(a, "a red circle", "a blue circle", 3, num_inference_steps=4)
    assert torch.allclose(diff.images[0], redo.images[0], atol=1e-4)  # theta = 0 is the picture's own decoding
    with pytest.raises(ValueError, match="one image"):
        latent_pipe.variations(torch.rand(2, 3, 32, 32))


@pytest.mark.skipif(not {"unclip_latent_decoder", "vae", "unclip_prior"} <= set(pretrained.available()),
                    reason="the latent unCLIP decoder is not shipped")
@pytest.mark.slow
def test_the_shipped_interpolation_starts_and_ends_at_its_pictures():
    from diffusion_notes.data.shapes import ShapesDataset

    pipe = pretrained.unclip()
    a, b = (ShapesDataset("train", 2, seed=21, p_two_objects=0.0).images() + 1) / 2
    out = pipe.interpolate(a, b, 3).images

    def psnr(x, y):
        return float(metrics.psnr(x[None], y[None], value_range=(0.0, 1.0)))

    assert psnr(out[0], a) > 25 and psnr(out[-1], b) > 25, (psnr(out[0], a), psnr(out[-1], b))
    assert psnr(out[1], a) < psnr(out[0], a)  # and the middle frame is not the first picture
