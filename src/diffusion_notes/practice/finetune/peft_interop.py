"""The same LoRA through peft, Hugging Face's library of adapters.

peft wraps each target nn.Linear in its own LoRA layer (`lora_A`, `lora_B`, `scaling =
lora_alpha / r`), the layout diffusers trains and saves. `peft_unet(unet, rank, alpha)` applies a
`LoraConfig` to a copy of our UNet; `copy_network_to_peft` / `network_from_peft` move the factors
across, so a LoRA trained with either runs in the other (tests/test_finetune_lora.py checks the
outputs agree).
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, inject_adapter_in_model

from diffusion_notes.practice.finetune.lora import TARGETS
from diffusion_notes.practice.finetune.lora_files import LoRANetwork

ADAPTER = "default"


def peft_config(rank: int, alpha: float, targets: tuple[str, ...] = TARGETS) -> LoraConfig:
    """peft's LoraConfig for our attention projections (B = 0 at the start, as ours)."""
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                      init_lora_weights=True)


def peft_unet(unet, rank: int = 4, alpha: float = 4.0, targets: tuple[str, ...] = TARGETS):
    """A copy of `unet` with peft's LoRA layers injected (the original is untouched)."""
    return inject_adapter_in_model(peft_config(rank, alpha, targets), copy.deepcopy(unet), adapter_name=ADAPTER)


def _peft_layers(model) -> dict:
    return {name: module for name, module in model.named_modules()
            if hasattr(module, "lora_A") and isinstance(module.lora_A, torch.nn.ModuleDict)}


@torch.no_grad()
def copy_network_to_peft(network: LoRANetwork, model) -> None:
    """Write a LoRANetwork's factors into a peft-injected model; alpha / r must equal the model's scaling."""
    layers = _peft_layers(model)
    for name, (A, B, alpha) in network.layers.items():
        if name not in layers:
            raise ValueError(f"the peft model has no LoRA layer {name!r}")
        layer = layers[name]
        layer.lora_A[ADAPTER].weight.copy_(A)
        layer.lora_B[ADAPTER].weight.copy_(B * (alpha / A.shape[0]) / layer.scaling[ADAPTER])


def network_from_peft(model) -> LoRANetwork:
    """The factors of a peft-injected model as a LoRANetwork (alpha = lora_alpha)."""
    out = {}
    for name, layer in _peft_layers(model).items():
        A = layer.lora_A[ADAPTER].weight.detach().clone()
        out[name] = (A, layer.lora_B[ADAPTER].weight.detach().clone(), layer.scaling[ADAPTER] * A.shape[0])
    return LoRANetwork(out)
