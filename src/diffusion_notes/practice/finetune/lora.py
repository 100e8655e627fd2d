"""LoRA: a frozen weight plus a trainable low-rank update (Hu et al. 2021).

A linear layer W0 (out x in) is kept frozen and learns only

    h = W0 x + (alpha / r) B A x,      A (r x in), B (out x r), r << min(in, out)

with B = 0 at the start, so the adapted model begins exactly where the base model is.
Stable Diffusion's LoRA files put these pairs on the UNet's attention projections
(to_q, to_k, to_v, to_out), where the picture meets the text. With r = 4 on our UNet that is
22 thousand numbers instead of three million.

`LoRALinear` wraps one nn.Linear; `inject_lora` swaps it in for every target projection
of a module; `merge_lora` folds (alpha / r) B A into W0 for inference with no extra cost,
and `unmerge_lora` restores W0 exactly (it keeps the original tensor, so merging and
unmerging any number of times never drifts).

Notation: r rank, alpha the scale numerator, d_in / d_out the layer's widths, N tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TARGETS = ("to_q", "to_k", "to_v", "to_out")  # the attention projections of nn.attention.CrossAttention


class LoRALinear(nn.Module):
    """W0 x + (alpha / r) B A x around a frozen nn.Linear `base`.

    Book: eq-lora
    Paper: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3 and section 4.1
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float | None = None):
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(base.in_features, base.out_features):
            raise ValueError(f"rank must be an int in [1, {min(base.in_features, base.out_features)}], got {rank!r}")
        self.base, self.rank = base, rank
        self.alpha = float(rank if alpha is None else alpha)
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)  # A (r, d_in): "lora_down"
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)  # B (d_out, r): "lora_up"
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as nn.Linear, and peft
        nn.init.zeros_(self.lora_B.weight)  # B = 0: the adapted layer starts as W0
        self.lora_A.to(base.weight), self.lora_B.to(base.weight)
        self.multiplier = 1.0  # the web UI's <lora:name:w> weight, times alpha / r
        self._merged: torch.Tensor | None = None  # W0, while (alpha / r) B A is folded into base.weight

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def scale(self) -> float:
        """multiplier * alpha / r: what multiplies B A x."""
        return self.multiplier * self.alpha / self.rank

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) B A times the multiplier, (d_out, d_in): the update LoRA adds to W0."""
        return self.scale * (self.lora_B.weight @ self.lora_A.weight)  # (d_out, r) @ (r, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_in) -> (..., d_out)."""
        if self._merged is not None or self.scale == 0:
            return self.base(x)
        return self.base(x) + self.scale * self.lora_B(self.lora_A(x))  # (..., d_out)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into base.weight (inference runs at the base layer's cost)."""
        if self._merged is None:
            self._merged = self.base.weight.detach().clone()
            self.base.weight += self.delta_weight()

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put W0 back, bit for bit."""
        if self._merged is not None:
            self.base.weight.copy_(self._merged)
            self._merged = None


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear of `model`, by the module name of the layer it wraps ("down.0.1.attn1.to_q")."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject_lora(model: nn.Module, rank: int = 4, alpha: float | None = None,
                targets: tuple[str, ...] = TARGETS) -> dict[str, LoRALinear]:
    """Replace every nn.Linear whose attribute name is in `targets` by a LoRALinear around it; freeze the rest.

    Returns the new layers by module name. Every parameter of `model` other than the
    LoRA factors ends up with requires_grad False.
    """
    if lora_layers(model):
        raise ValueError("the model already has LoRA layers; build a fresh model to inject again")
    for p in model.parameters():
        p.requires_grad_(False)
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    if not found:
        raise ValueError(f"no nn.Linear called {', '.join(targets)} in {type(model).__name__}")
    for name, linear in found:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoRALinear(linear, rank, alpha))
    return lora_layers(model)


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA factors only: {"<layer>.lora_A.weight": (r, d_in), "<layer>.lora_B.weight": (d_out, r)}."""
    return {f"{name}.{part}.weight": getattr(layer, part).weight.detach().clone()
            for name, layer in lora_layers(model).items() for part in ("lora_A", "lora_B")}


def set_multiplier(model: nn.Module, multiplier: float) -> None:
    """The weight of every LoRA layer's update (the web UI's <lora:name:w>): 0 is the base model exactly."""
    for layer in lora_layers(model).values():
        if layer._merged is not None:
            raise ValueError("unmerge the LoRA before changing its multiplier")
        layer.multiplier = float(multiplier)


def merge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


def remove_lora(model: nn.Module) -> nn.Module:
    """Put the plain nn.Linear layers back (unmerged): the base model again."""
    for name, layer in lora_layers(model).items():
        layer.unmerge()
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, layer.base)
    return model


def count_parameters(model: nn.Module) -> int:
    """Numbers the optimiser updates: parameters with requires_grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
