"""Part II's recipes (chapters 4-8): CLIP, the Shapes judge, and unCLIP's prior, decoders and upsampler.

The unCLIP recipes train on a bank of the shipped CLIP's embeddings built with the run's own seed.
"""

from __future__ import annotations

from functools import partial

from diffusion_notes.evaluation.classifier import classifier_batch, classifier_loss, evaluate_classifier
from diffusion_notes.rng import step_generator
from diffusion_notes.stable_diffusion.ldm import encode_latents
from diffusion_notes.training import frozen
from diffusion_notes.training.recipes.base import Recipe, device_of, recipe
from diffusion_notes.unclip.ar_prior import ar_prior_loss
from diffusion_notes.unclip.clip import clip_batch, clip_training_loss
from diffusion_notes.unclip.clip_eval import evaluate_clip
from diffusion_notes.unclip.conditions import TextConditions, null_text, unclip_batch
from diffusion_notes.unclip.decoder import (
    P_DROP_TEXT,
    P_DROP_TEXT_GLIDE,
    DecoderConfig,
    decoder_loss,
    latent_decoder_config,
    upsampler_loss,
)
from diffusion_notes.unclip.evaluate import evaluate_decoder, evaluate_prior, evaluate_upsampler
from diffusion_notes.unclip.prior import prior_loss

_UNCLIP_DATA = ("Shapes train split, seed 0, half of the images with two objects: a bank of 24576 items "
                "with the shipped clip's z_i, z_t and token states")


def _clip(device: str) -> Recipe:
    return recipe(
        "clip",
        make_batch=clip_batch,
        loss=clip_training_loss,
        steps=1500,
        batch_size=128,
        lr=1e-3,
        weight_decay=0.1,
        warmup_steps=100,
        evaluate=evaluate_clip,
        dataset="Shapes train split, seed 0",
        description="tiny CLIP: image and text encoders trained with the contrastive loss",
    )


def _shapes_classifier(device: str) -> Recipe:
    return recipe(
        "shapes_classifier",
        make_batch=classifier_batch,
        loss=classifier_loss,
        steps=800,
        batch_size=64,
        lr=2e-3,
        evaluate=evaluate_classifier,
        dataset="Shapes train split, seed 0",
        description="attribute classifier for Shapes images (used by the metrics)",
    )


def _unclip_batch(step: int, batch_size: int, seed: int) -> dict:
    """Batch `step` of the bank built with the run's own seed."""
    return unclip_batch(frozen.unclip_bank(seed), step, batch_size, seed)


def _null_text() -> TextConditions:
    """The empty caption through the shipped CLIP: what a dropped caption becomes in the unCLIP losses."""
    return null_text(frozen.clip())


def _evaluate_prior(prior) -> dict:
    return evaluate_prior(prior, frozen.clip(device_of(prior)))


def _unclip_prior(device: str) -> Recipe:
    return recipe(
        "unclip_prior",
        make_batch=_unclip_batch,
        loss=lambda model, batch, generator: prior_loss(model, batch, generator, null=_null_text()),
        steps=3000,
        batch_size=128,
        lr=5e-4,
        weight_decay=0.01,
        warmup_steps=200,
        ema_decay=0.999,
        evaluate=_evaluate_prior,
        dataset=_UNCLIP_DATA,
        description="diffusion prior f(z_i^(t), t, y) -> z_i: a causal Transformer, caption dropped 10%",
    )


def _ar_prior(device: str) -> Recipe:
    return recipe(
        "ar_prior",
        make_batch=_unclip_batch,
        loss=ar_prior_loss,
        steps=1500,
        batch_size=128,
        lr=5e-4,
        weight_decay=0.01,
        warmup_steps=200,
        evaluate=_evaluate_prior,
        prepare=lambda model, seed: model.fit(frozen.unclip_bank(seed).z_i.to(device_of(model))),
        dataset=_UNCLIP_DATA,
        description="autoregressive prior: z_i reduced by PCA, quantised, predicted code by code "
                    "by a causal Transformer",
    )


def _decoder(device: str, *, name: str, image_embedding: bool) -> Recipe:
    """The unCLIP decoder at 16x16 (image_embedding=True) or the GLIDE baseline, the same without z_i."""
    config = DecoderConfig(image_embedding=image_embedding,
                           p_drop_text=P_DROP_TEXT if image_embedding else P_DROP_TEXT_GLIDE)
    what = ("unCLIP decoder eps(x_t, t, z_i, y) at 16x16: z_i added to the timestep embedding and as 4 extra tokens; "
            "z_i zeroed 10%, caption dropped 50%") if image_embedding else \
        "GLIDE baseline at 16x16: the unCLIP decoder without z_i (text only), caption dropped 20%"
    return recipe(
        name,
        config=config,
        make_batch=_unclip_batch,
        loss=lambda model, batch, generator: decoder_loss(model, batch, generator, null=_null_text()),
        steps=2500,
        batch_size=64,
        lr=1e-3,
        warmup_steps=200,
        ema_decay=0.999,
        evaluate=lambda decoder: evaluate_decoder(decoder, frozen.clip(device_of(decoder)),
                                                  frozen.classifier(device_of(decoder))),
        dataset=_UNCLIP_DATA,
        description=what,
    )


def _latent_decoder(device: str, *, name: str, image_embedding: bool) -> Recipe:
    """The decoder in the autoencoder's latent space, warm-started from the shipped latent UNet (Stable unCLIP, Karlo).

    The unCLIP and GLIDE variants start from the same weights and train the same number of steps on the
    same batches, so the comparison spends equal compute on each.
    """

    def make_batch(step, batch_size, seed):
        batch = _unclip_batch(step, batch_size, seed)
        parts = frozen.stable_diffusion(device)
        batch["z0"] = encode_latents(parts["vae"], batch["images"].to(device), parts["scale_factor"],
                                     step_generator(seed, step, stream=2))
        return batch

    def evaluate(decoder):
        where = device_of(decoder)
        parts = frozen.stable_diffusion(where)
        return evaluate_decoder(decoder, frozen.clip(where), frozen.classifier(where),
                                vae=parts["vae"], scale_factor=parts["scale_factor"])

    what = ("unCLIP decoder eps(z_t, t, z_i, y) on 8x8x4 latents, from the shipped ldm_unet: z_i added to the "
            "timestep embedding and as 4 extra tokens; z_i zeroed 10%, caption dropped 50%") if image_embedding else (
        "GLIDE baseline on 8x8x4 latents, from the shipped ldm_unet: pooled caption and tokens only, "
        "caption dropped 20%")
    return recipe(
        name,
        config=latent_decoder_config(image_embedding),
        prepare=lambda model, seed: model.warm_start(frozen.ldm_unet(device_of(model))),
        make_batch=make_batch,
        loss=lambda model, batch, generator: decoder_loss(model, batch, generator, null=_null_text()),
        steps=2000,
        batch_size=64,
        lr=3e-4,
        warmup_steps=100,
        ema_decay=0.999,
        evaluate=evaluate,
        dataset=_UNCLIP_DATA + ", the images as latents of the shipped vae",
        description=what,
    )


def _unclip_upsampler(device: str) -> Recipe:
    return recipe(
        "unclip_upsampler",
        make_batch=_unclip_batch,
        loss=upsampler_loss,
        steps=1000,
        batch_size=64,
        lr=1e-3,
        warmup_steps=100,
        ema_decay=0.999,
        evaluate=lambda upsampler: evaluate_upsampler(upsampler, frozen.clip(device_of(upsampler))),
        dataset=_UNCLIP_DATA,
        description="diffusion upsampler 16x16 -> 32x32 conditioned on the noise-augmented low-resolution image",
    )


RECIPES = {  # name -> (device -> Recipe)
    "clip": _clip,
    "shapes_classifier": _shapes_classifier,
    "unclip_prior": _unclip_prior,
    "ar_prior": _ar_prior,
    "unclip_decoder": partial(_decoder, name="unclip_decoder", image_embedding=True),
    "glide_decoder": partial(_decoder, name="glide_decoder", image_embedding=False),
    "unclip_upsampler": _unclip_upsampler,
    "unclip_latent_decoder": partial(_latent_decoder, name="unclip_latent_decoder", image_embedding=True),
    "glide_latent_decoder": partial(_latent_decoder, name="glide_latent_decoder", image_embedding=False),
}
