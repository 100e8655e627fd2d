"""Part I's recipe (chapters 1-3): the toy denoiser on the two-moons points."""

from __future__ import annotations

import torch

from diffusion_notes.foundations.diffusion import noise_prediction_loss
from diffusion_notes.foundations.schedules import make_schedule
from diffusion_notes.foundations.toy2d import sample_toy
from diffusion_notes.rng import step_generator
from diffusion_notes.training.recipes.base import Recipe, recipe


def _toy2d(device: str) -> Recipe:
    schedule = make_schedule("linear", 1000)

    def make_batch(step, batch_size, seed):
        return {"x0": sample_toy("two_moons", batch_size, generator=step_generator(seed, step))}  # (B, 2)

    def loss(model, batch, generator):
        return noise_prediction_loss(model, batch["x0"], schedule, generator=generator)

    @torch.no_grad()
    def evaluate(model):
        """Noise-prediction loss on 4096 fresh points with fixed noise (lower is better)."""
        device = next(model.parameters()).device
        x0 = sample_toy("two_moons", 4096, generator=torch.Generator().manual_seed(2**31 - 1)).to(device)
        g = torch.Generator().manual_seed(2**31 - 2)
        return {"eval_loss": float(noise_prediction_loss(model.eval(), x0, schedule, generator=g))}

    return recipe(
        "toy2d",
        make_batch=make_batch,
        loss=loss,
        steps=3000,
        batch_size=512,
        lr=2e-3,
        warmup_steps=100,
        ema_decay=0.999,
        evaluate=evaluate,
        dataset="toy2d two_moons (sample_toy, a fresh batch per step)",
        description="ToyDenoiser, an MLP eps-model on the two-moons points, linear schedule, T=1000",
    )


RECIPES = {"toy2d": _toy2d}  # name -> (device -> Recipe)
