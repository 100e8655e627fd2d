"""Part III's recipes (chapters 9-13): the autoencoder and the latent UNet of our Stable Diffusion."""

from __future__ import annotations

from functools import partial

from diffusion_notes.stable_diffusion.evaluate import evaluate_ldm
from diffusion_notes.stable_diffusion.ldm import P_TWO_OBJECTS_TRAIN, ldm_batch, ldm_loss
from diffusion_notes.stable_diffusion.vae import evaluate_vae, vae_batch, vae_training_loss
from diffusion_notes.training import frozen
from diffusion_notes.training.recipes.base import Recipe, device_of, recipe


def _share(p: float) -> str:
    """How the recipes' dataset text names the share of two-object pictures: "half", or "30%"."""
    return "half" if p == 0.5 else f"{p:.0%}"


def _vae(device: str) -> Recipe:
    return recipe(
        "vae",
        make_batch=vae_batch,
        loss=vae_training_loss,
        steps=3000,
        batch_size=64,
        lr=2e-3,
        warmup_steps=100,
        grad_clip=1.0,
        evaluate=evaluate_vae,
        dataset="Shapes train split, seed 0",
        description="KL autoencoder, 32x32x3 images <-> 8x8x4 latents (factor 4)",
    )


def _ldm_unet(device: str, *, name: str = "ldm_unet", p_two_objects: float = P_TWO_OBJECTS_TRAIN) -> Recipe:
    """The latent UNet. `ldm_unet_mix30` is the same recipe on the Shapes default of 30% two-object
    pictures instead of 50%: the ablation of the training mix (benchmarks/two_object_mix.py)."""

    def make_batch(step, batch_size, seed):
        return ldm_batch(step, batch_size, seed, **frozen.stable_diffusion(device),  # encoded on `device`
                         p_two_objects=p_two_objects)

    def loss(model, batch, generator):
        return ldm_loss(model, batch, generator, null=frozen.null_context(device))  # tau("") encoded once

    def evaluate(unet):
        where = device_of(unet)
        return evaluate_ldm(unet, **frozen.stable_diffusion(where), classifier=frozen.classifier(where))

    return recipe(
        name,
        make_batch=make_batch,
        loss=loss,
        steps=10000,
        batch_size=64,
        lr=1e-3,
        warmup_steps=200,
        ema_decay=0.999,
        evaluate=evaluate,
        dataset=f"Shapes train split, seed 0, {_share(p_two_objects)} of the images "
                "with two objects, as latents of the shipped vae and token states of the shipped clip",
        description="latent UNet eps_theta(z_t, t, tau(y)) with cross-attention to CLIP's token states",
    )


RECIPES = {  # name -> (device -> Recipe)
    "vae": _vae,
    "ldm_unet": _ldm_unet,
    "ldm_unet_mix30": partial(_ldm_unet, name="ldm_unet_mix30", p_two_objects=0.3),
}
