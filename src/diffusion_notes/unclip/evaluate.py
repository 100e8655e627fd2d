"""Numbers for the unCLIP models, written to the manifest when they ship and reused by the chapters.

Each evaluation draws items the models never trained on (seed 1 of the training
split: seen attribute combinations, new images and captions), embedded by the
frozen CLIP it is given; the decoder's is read by the classifier it is given.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from diffusion_notes.data.shapes import render
from diffusion_notes.evaluation.metrics import prompt_fidelity, psnr
from diffusion_notes.unclip.conditions import (
    Bank,
    build_bank,
    downsample,
    null_text,
    upsample,
)
from diffusion_notes.unclip.pipeline import decode_base, upsample_images
from diffusion_notes.unclip.prior import Prior


@lru_cache(maxsize=4)
def eval_bank(clip, n: int = 256, split: str = "train") -> Bank:
    """n items the models did not train on, embedded by `clip`: seed 1 of `split` ("train": seen combinations; "heldout")."""
    return build_bank(clip, n, seed=1, split=split, p_two_objects=0.3, progress=False)


@torch.no_grad()
def evaluate_prior(prior: Prior, clip, n: int = 256) -> dict:
    """Cosine of the sampled z_i with the caption's true z_i, and with z_t (higher is better)."""
    bank = eval_bank(clip, n)
    z_i = prior.eval().sample(bank.text, null=null_text(clip), generator=torch.Generator().manual_seed(0))  # (n, E)
    z_i = z_i.cpu()
    return {"cos_true_z_i": round(float((z_i * bank.z_i).sum(-1).mean()), 4),
            "cos_z_t": round(float((z_i * bank.text.z_t).sum(-1).mean()), 4),
            "true_cos_z_t": round(float((bank.z_i * bank.text.z_t).sum(-1).mean()), 4)}


@torch.no_grad()
def evaluate_decoder(decoder, clip, classifier, n: int = 64, steps: int = 25, guidance_scale: float = 3.0,
                     vae=None, scale_factor: float | None = None) -> dict:
    """Decode n held-back items from their true z_i (and caption); CLIP cosine of the result with z_i, and fidelity.

    A latent decoder's samples are decoded by `vae` (latents divided by scale_factor).
    """
    bank = eval_bank(clip, n)
    z_i = bank.z_i if decoder.config.image_embedding else None
    latent = decoder.config.space == "latent"
    if latent and (vae is None or scale_factor is None):
        raise ValueError("a latent decoder is evaluated through an autoencoder: pass vae= and scale_factor=")
    low = decode_base(decoder.eval(), bank.text, z_i, null=null_text(clip), num_inference_steps=steps,
                      guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0))  # (n, C, s, s)
    if latent:
        images = vae.decode(low / scale_factor).clamp(-1, 1)  # (n, 3, 32, 32)
    else:
        images = upsample(low).clamp(-1, 1)  # (n, 3, 32, 32): bilinear, to read with CLIP and the classifier
    cos = (clip.encode_image(images) * bank.z_i.to(images.device)).sum(-1)  # (n,)
    fidelity = prompt_fidelity(images, bank.attributes, classifier)
    return {"clip_cos_z_i": round(float(cos.mean()), 4), "colour_shape": round(fidelity["colour_shape"], 4),
            "guidance_scale": guidance_scale,
            "note": "8x8x4 latents decoded by the vae" if latent else "16x16 samples upsampled bilinearly"}


@torch.no_grad()
def evaluate_upsampler(upsampler, clip, n: int = 64, steps: int = 15) -> dict:
    """PSNR of the upsampler's 32x32 output from the true 16x16 image, against bilinear upsampling."""
    bank = eval_bank(clip, n)
    real = render(bank.attributes)  # (n, 3, 32, 32) in [-1, 1]
    low = downsample(real)
    out = upsample_images(upsampler.eval(), low, num_inference_steps=steps,
                          generator=torch.Generator().manual_seed(0)).cpu()
    return {"psnr_db": round(float(psnr(out, real).mean()), 2),
            "bilinear_psnr_db": round(float(psnr(upsample(low), real).mean()), 2), "steps": steps}
