"""What a recipe is: everything the training command needs to know about one model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from diffusion_notes.architectures import architecture


@dataclass(frozen=True)
class Recipe:
    name: str  # "toy2d", "clip", "shapes_classifier", later "vae", "ldm_unet", ...
    config: object  # default @dataclass config instance of the model
    build: Callable[[object], nn.Module]  # config -> model
    make_batch: Callable[[int, int, int], dict]  # (step, batch_size, seed) -> batch, a pure function
    loss: Callable[[nn.Module, dict, torch.Generator], torch.Tensor]  # scalar; randomness from the generator
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float | None = None  # diffusion models use EMA weights
    evaluate: Callable[[nn.Module], dict] | None = None  # metrics written to the manifest
    prepare: Callable[[nn.Module, int], None] | None = None  # (model, seed): fit data statistics before step 0
    dataset: str = ""
    description: str = ""
    # Fine-tuning: `build` sets requires_grad=False on what stays frozen; only parameters that require
    # grad go to the optimiser (and to DistributedDataParallel).
    trainable_state: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None  # model (EMA weights if any) ->
    # the tensors saved as the run's final weights (a LoRA's, one embedding row); None: the whole state dict
    after_step: Callable[[nn.Module], None] | None = None  # called under no_grad after each optimiser step
    # (textual inversion restores the frozen rows of the embedding there), before the EMA update


def recipe(name: str, **fields) -> Recipe:
    """The Recipe `name` for its entry of `architectures.ARCHITECTURES`: that model class builds it and
    its config class's defaults configure it, unless `fields` give a `config` (of that class) or a `build`."""
    kind = architecture(name)
    fields.setdefault("config", kind.config())
    fields.setdefault("build", kind.model)
    if type(fields["config"]) is not kind.config:
        raise TypeError(f"the {name} recipe's config must be a {kind.config.__name__}, "
                        f"got a {type(fields['config']).__name__}")
    return Recipe(name=name, **fields)


def device_of(model: nn.Module) -> str:
    return str(next(model.parameters()).device)
