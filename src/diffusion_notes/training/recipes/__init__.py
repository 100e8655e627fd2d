"""Recipes: everything the training command needs to know about one model, grouped by the book's parts.

A recipe names a model (an entry of `architectures.ARCHITECTURES`, which builds it), its default
@dataclass config, a batch of data for a given step, the loss, and the optimiser's numbers. The
training loop (`training/loop.py`) is the same for every model; only the recipe changes. A recipe
is made for one device (`get_recipe(name, device)`): it binds the frozen parts its model trains
against (`frozen.py`) on that device, when they are first needed, so the batches are encoded where
the model trains.

    base    Recipe, and `recipe(name, ...)`, which reads the model and config classes from the list
    part1   toy2d
    part2   clip, shapes_classifier, the unCLIP priors, decoders (pixel and latent) and upsampler
    part3   vae, ldm_unet (and the ldm_unet_mix30 ablation)
    part4   concept_classifier, textual inversion, LoRA, DreamBooth, ControlNet
    part5   lcm_unet, lcm_lora (consistency distillation), flow_unet (flow matching)
"""

from __future__ import annotations

from collections.abc import Callable

from diffusion_notes.training.recipes import part1, part2, part3, part4, part5
from diffusion_notes.training.recipes.base import Recipe

_FACTORIES: dict[str, Callable[[str], Recipe]] = {**part1.RECIPES, **part2.RECIPES, **part3.RECIPES,
                                                   **part4.RECIPES, **part5.RECIPES}

__all__ = ["Recipe", "get_recipe", "recipe_names"]


def recipe_names() -> list[str]:
    """The names `get_recipe` knows."""
    return list(_FACTORIES)


def get_recipe(name: str, device="cpu") -> Recipe:
    """The recipe called `name`, its frozen parts bound on `device`; a ValueError lists the known ones."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(recipe_names())}")
    return _FACTORIES[name](str(device))
