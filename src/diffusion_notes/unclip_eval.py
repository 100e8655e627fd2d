"""Numbers for the unCLIP models, written to the manifest when they ship and reused by the chapters.

Each evaluation draws items the models never trained on (seed 1 of the training
split: seen attribute combinations, new images and captions).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from .unclip_data import Bank, build_bank, frozen_clip, upsample


@lru_cache(maxsize=2)
def eval_bank(n: int = 256, split: str = "train") -> Bank:
    """n items the models did not train on: seed 1 of `split` ("train": seen combinations; "heldout")."""
    return build_bank(frozen_clip(), n, seed=1, split=split, p_two_objects=0.3, progress=False)


@torch.no_grad()
def sample_any_prior(prior, text, generator=None, **options) -> torch.Tensor:
    """z_i (B, E) from either prior (diffusion or autoregressive), unit length."""
    from .ar_prior import ARPrior, sample_ar_prior
    from .prior import sample_prior

    if isinstance(prior, ARPrior):
        return sample_ar_prior(prior, text, generator=generator, **options)
    return sample_prior(prior, text, generator=generator, **options)


@torch.no_grad()
def evaluate_prior(prior, n: int = 256) -> dict:
    """Cosine of the sampled z_i with the caption's true z_i, and with z_t (higher is better)."""
    bank = eval_bank(n)
    z_i = sample_any_prior(prior.eval(), bank.text, generator=torch.Generator().manual_seed(0)).cpu()  # (n, E)
    return {"cos_true_z_i": round(float((z_i * bank.z_i).sum(-1).mean()), 4),
            "cos_z_t": round(float((z_i * bank.text.z_t).sum(-1).mean()), 4),
            "true_cos_z_t": round(float((bank.z_i * bank.text.z_t).sum(-1).mean()), 4)}


@torch.no_grad()
def evaluate_decoder(decoder, n: int = 64, steps: int = 25, guidance_scale: float = 3.0) -> dict:
    """Decode n held-back items from their true z_i (and caption); CLIP cosine of the result with z_i."""
    from . import pretrained
    from .metrics import prompt_fidelity
    from .unclip_pipeline import decode_base

    bank = eval_bank(n)
    z_i = bank.z_i if decoder.config.image_embedding else None
    low = decode_base(decoder.eval(), bank.text, z_i, num_inference_steps=steps, guidance_scale=guidance_scale,
                      generator=torch.Generator().manual_seed(0))  # (n, 3, 16, 16) in [-1, 1]
    images = upsample(low).clamp(-1, 1)  # (n, 3, 32, 32): bilinear, to read with CLIP and the classifier
    clip = frozen_clip()
    cos = (clip.encode_image(images) * bank.z_i).sum(-1)  # (n,)
    fidelity = prompt_fidelity(images, bank.attributes, pretrained.load("shapes_classifier"))
    return {"clip_cos_z_i": round(float(cos.mean()), 4), "colour_shape": round(fidelity["colour_shape"], 4),
            "guidance_scale": guidance_scale, "note": "16x16 samples upsampled bilinearly"}


@torch.no_grad()
def evaluate_upsampler(upsampler, n: int = 64, steps: int = 15) -> dict:
    """PSNR of the upsampler's 32x32 output from the true 16x16 image, against bilinear upsampling."""
    from .data.shapes import render
    from .unclip_data import downsample
    from .unclip_pipeline import upsample_images

    bank = eval_bank(n)
    real = render(bank.attributes)  # (n, 3, 32, 32) in [-1, 1]
    low = downsample(real)
    out = upsample_images(upsampler.eval(), low, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))

    def psnr(x):
        mse = F.mse_loss((x.clamp(-1, 1) + 1) / 2, (real + 1) / 2, reduction="none").mean((1, 2, 3))
        return round(float((10 * torch.log10(1 / mse)).mean()), 2)

    return {"psnr_db": psnr(out), "bilinear_psnr_db": psnr(upsample(low)), "steps": steps}
