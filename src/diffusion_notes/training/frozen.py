"""The frozen parts the recipes train and evaluate against, taken from the shelf of shipped weights.

Only the training code knows the shelf. Every model, loss, pipeline and
evaluation of Parts I-III takes its frozen parts (CLIP, the autoencoder, the
classifier, a bank of CLIP embeddings) as arguments; the recipes bind them here,
once per process and device:

    clip(device)                  the shipped CLIP, gradients off
    stable_diffusion(device)      {"vae", "clip", "scale_factor"}: what the latent UNet trains against
    null_context(device)          tau(""), the empty caption's token states, encoded once
    classifier(device)            the Shapes judge of the evaluations
    ldm_unet(device)              the shipped latent UNet (what Part IV's fine-tuning starts from)
    concept_judge(device)         the judge that also reads the new concept (Part IV)
    class_latents(seed)           DreamBooth's class pictures, drawn by the shipped pipeline once
    unclip_bank(seed)             the bank the unCLIP recipes train on (seed = the run's seed)
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

from diffusion_notes import pretrained
from diffusion_notes.practice.finetune.learner import class_latents as draw_class_latents
from diffusion_notes.stable_diffusion.ldm import null_context as _null_context
from diffusion_notes.unclip.conditions import BANK_SIZE, Bank, TextConditions, build_bank

CACHE_ENV_VAR = "DIFFUSION_NOTES_CACHE"


def _frozen(model):
    return model.requires_grad_(False).eval()


@lru_cache(maxsize=4)
def clip(device: str = "cpu"):
    """The shipped CLIP on `device`, frozen: every unCLIP model and the latent UNet read its embeddings."""
    return _frozen(pretrained.load("clip", device))


@lru_cache(maxsize=4)
def stable_diffusion(device: str = "cpu") -> dict:
    """{"vae", "clip", "scale_factor"}: the shipped autoencoder and CLIP on `device`, frozen, and the latent scale."""
    return {"vae": _frozen(pretrained.load("vae", device)), "clip": clip(device),
            "scale_factor": float(pretrained.info("vae")["metrics"]["scale_factor"])}


@lru_cache(maxsize=4)
def null_context(device: str = "cpu") -> torch.Tensor:
    """tau(""), (77, D_c): the empty caption through the shipped CLIP, encoded once per process and device."""
    return _null_context(clip(device))


@lru_cache(maxsize=4)
def classifier(device: str = "cpu"):
    """The shipped Shapes attribute classifier on `device`, frozen."""
    return _frozen(pretrained.load("shapes_classifier", device))


@lru_cache(maxsize=2)
def unclip_bank(seed: int = 0, n: int = BANK_SIZE) -> Bank:
    """The bank the unCLIP recipes train on: items 0 .. n-1 of the training split drawn with the run's seed.

    Built once per process (about two minutes on 2 cores). If $DIFFUSION_NOTES_CACHE names a folder,
    the bank is kept there between runs, under a name that includes the shipped CLIP's checksum.
    """
    cache = os.environ.get(CACHE_ENV_VAR)
    if not cache:
        return build_bank(clip(), n, seed=seed, split="train")
    path = Path(cache) / f"unclip_bank_{seed}_{n}_{pretrained.info('clip')['sha256'][:12]}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        return Bank(saved["attributes"], saved["captions"], saved["z_i"], TextConditions(**saved["text"]))
    bank = build_bank(clip(), n, seed=seed, split="train")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"attributes": bank.attributes, "captions": bank.captions, "z_i": bank.z_i,
                "text": bank.text.as_dict()}, tmp)
    tmp.replace(path)
    return bank


@lru_cache(maxsize=4)
def ldm_unet(device: str = "cpu"):
    """The shipped latent UNet on `device`, frozen (fine-tuning copies it)."""
    return _frozen(pretrained.load("ldm_unet", device))


@lru_cache(maxsize=4)
def concept_judge(device: str = "cpu"):
    """The attribute classifier that also reads hearts, frozen: Part IV's judge of fine-tuning."""
    return _frozen(pretrained.load("concept_classifier", device))


@lru_cache(maxsize=2)
def class_latents(seed: int = 0, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamBooth's class pictures: n latents the shipped pipeline draws for ordinary captions, and their ids."""
    return draw_class_latents(pretrained.stable_diffusion("cpu"), n, seed)
