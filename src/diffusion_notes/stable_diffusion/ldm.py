"""Latent diffusion: train the UNet on the autoencoder's latents, conditioned on CLIP's token states.

The LDM objective (Rombach et al. 2022, eq. 2, and eq. 3 with a condition) is DDPM's noise-prediction loss
with the image x replaced by its latent z = E(x), and the network told the
caption through cross-attention to tau(y), the frozen text encoder's per-token
states:

    L_LDM = E_{E(x), y, eps ~ N(0, I), t} || eps - eps_theta(z_t, t, tau(y)) ||^2

The autoencoder and CLIP are trained first and stay frozen; only eps_theta
learns. 10% of captions are replaced by the empty caption's states, so the
same model also predicts the unconditional noise that guidance needs.

Notation: B batch, z latent (B, 4, 8, 8) times the scale factor, context (B, 77, D_c).
"""

from __future__ import annotations

import torch

from diffusion_notes.data.shapes import ShapesDataset, render
from diffusion_notes.data.tokenizer import tokenize
from diffusion_notes.foundations.diffusion import noise_prediction_loss
from diffusion_notes.foundations.guidance import drop_condition
from diffusion_notes.foundations.schedules import make_schedule
from diffusion_notes.rng import step_generator

P_UNCOND = 0.1  # caption dropout: SD v1 (and GLIDE) drop the text about 10% of the time
DEFAULT_GUIDANCE_SCALE = 4.0
# Half of the training images show two objects (the Shapes default, and the evaluation's mix, is 30%):
# binding two colours to two shapes is what this small model finds hardest, so it sees more of it.
P_TWO_OBJECTS_TRAIN = 0.5


def ldm_schedule():
    """Stable Diffusion v1's noise schedule: scaled_linear from 0.00085 to 0.012 over T = 1000 steps."""
    return make_schedule("scaled_linear", 1000)  # its default betas are Stable Diffusion v1's


@torch.no_grad()
def null_context(clip) -> torch.Tensor:
    """tau(""): the empty caption's token states, (77, D_c): what 'no caption' means, in training and guidance."""
    return clip.encode_text([""], allow_empty=True).token_states[0]


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, scale_factor: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """z = scale_factor * (a sample of q(z|x)): images (B, 3, 32, 32) in [-1, 1] -> (B, 4, 8, 8), about unit variance."""
    return vae.encode(images).sample(generator) * scale_factor


@torch.no_grad()
def ldm_batch(step: int, batch_size: int, seed: int = 0, *, vae, clip, scale_factor: float,
              p_two_objects: float = P_TWO_OBJECTS_TRAIN) -> dict:
    """Training batch `step`: latents z0 (B, 4, 8, 8) and caption token states (B, 77, D_c), on the vae's device.

    A share p_two_objects of the pictures shows two objects (the shipped UNet's 0.5; the Shapes default is 0.3).

    The frozen autoencoder and CLIP encode the batch where they are; it is a pure
    function of its arguments (the latent's sample is drawn from a generator seeded by (seed, step)).
    """
    device = next(vae.parameters()).device
    dataset = ShapesDataset("train", length=10**9, seed=seed, p_two_objects=p_two_objects)
    start = step * batch_size
    attributes = [dataset.attributes(i) for i in range(start, start + batch_size)]
    captions = [dataset.caption(start + k, a) for k, a in enumerate(attributes)]
    z0 = encode_latents(vae, render(attributes).to(device), scale_factor, step_generator(seed, step, stream=2))
    return {"z0": z0, "context": clip.encode_text(tokenize(captions)).token_states}


def ldm_loss(model, batch: dict, generator: torch.Generator | None = None, *, null: torch.Tensor,
             p_uncond: float = P_UNCOND) -> torch.Tensor:
    r"""L_LDM on one batch, with the caption dropped (set to null = tau(""), `null_context(clip)`) with probability p_uncond.

    $$L_\text{LDM} = \mathbb E_{\mathcal E(x), y, \epsilon, t}\left[\left\|\epsilon
      - \epsilon_\theta(z_t, t, \tau_\theta(y))\right\|^2\right]$$

    Book: eq-ldm-loss
    Paper: Rombach et al. 2022, eq. 3
    """
    device = next(model.parameters()).device
    context = batch["context"].to(device)  # (B, 77, D_c)
    context = drop_condition(context, p_uncond, null.to(device), generator)
    return noise_prediction_loss(model, batch["z0"].to(device), ldm_schedule(), generator=generator, cond=context)


def eval_prompts(split: str, n: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    """n (caption, attributes) pairs not seen in training: seen combinations (split "train", seed 1) or held-out ones."""
    dataset = ShapesDataset(split, n, seed=1 if split == "train" else seed)
    attributes = [dataset.attributes(i) for i in range(n)]
    return [dataset.caption(i, a) for i, a in enumerate(attributes)], attributes
