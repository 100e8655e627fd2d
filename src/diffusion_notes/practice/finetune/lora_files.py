"""LoRA files: the kohya format the web UI and Civitai use, diffusers' format, and the conversion between them.

In memory a LoRA is a `LoRANetwork`: for each adapted layer of our UNet (by our module name,
"down.0.1.attn1.to_q") its down matrix A (r, d_in), up matrix B (d_out, r) and alpha.
On disk the layer is named by its path in diffusers' UNet2DConditionModel
("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"), which is what both file formats use:

* **kohya** (sd-scripts, the web UI, Civitai): the path with "_" for ".", after "lora_unet_":
  ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight`` = A,
  ``....lora_up.weight`` = B, ``....alpha`` = alpha (a 0-d tensor). The update is
  (alpha / r) B A; a file without alpha means alpha = r.
* **diffusers** (peft's names): ``unet.<path>.lora_A.weight`` = A, ``unet.<path>.lora_B.weight`` = B.
  No alpha is stored with the tensors; peft's LoraConfig says lora_alpha, kept here in the
  file's metadata ("lora_adapter_metadata", as diffusers writes it: JSON keyed per component,
  "unet.r", "unet.lora_alpha", "unet.target_modules"; `load_lora_weights` builds its LoraConfig from it). Converting from kohya
  folds alpha / r into B and writes lora_alpha = r, so any reader that assumes scale 1 agrees.

The three alpha conventions, side by side (r the rank, w the prompt's weight):

    diffusers / peft:   scale = lora_alpha / r           (lora_alpha defaults to r in diffusers' files)
    kohya:              scale = alpha / r                (alpha stored per layer; missing -> alpha = r)
    the web UI:         scale = w * alpha / r            (<lora:name:w>, w = 1 by default)

"My LoRA does nothing" is one of these disagreeing: a file trained with scale 1 but
saved with alpha = 1 at rank 16 is applied at 1/16 of its strength; a file for another
model has layer names or widths that the UNet does not have, and a loader that skips
unknown keys applies nothing. `check_network` refuses such a file and names the first
tensor that does not fit.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffusion_notes.practice.checkpoints.to_diffusers import unet_names
from diffusion_notes.practice.finetune.lora import LoRALinear, lora_layers

KOHYA_PREFIX = "lora_unet_"
DIFFUSERS_PREFIX = "unet."


class LoRAFileError(ValueError):
    """A LoRA file that does not fit the model it is loaded into."""


@dataclass
class LoRANetwork:
    """A LoRA in memory: {our layer name: (A (r, d_in), B (d_out, r), alpha)}, and where it came from."""

    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    metadata: dict = field(default_factory=dict)  # e.g. {"base_model": ..., "trigger": "heart"}

    @property
    def rank(self) -> int:
        return max(A.shape[0] for A, _, _ in self.layers.values())

    def delta(self, name: str, multiplier: float = 1.0) -> torch.Tensor:
        """multiplier * (alpha / r) B A for one layer, (d_out, d_in)."""
        A, B, alpha = self.layers[name]
        return multiplier * alpha / A.shape[0] * (B @ A)

    def num_parameters(self) -> int:
        return sum(A.numel() + B.numel() for A, B, _ in self.layers.values())


def network_from_model(model, metadata: dict | None = None) -> LoRANetwork:
    """The LoRA factors of a model with LoRALinear layers (after training)."""
    layers = {name: (m.lora_A.weight.detach().cpu().clone(), m.lora_B.weight.detach().cpu().clone(), m.alpha)
              for name, m in lora_layers(model).items()}
    if not layers:
        raise ValueError("the model has no LoRA layers")
    return LoRANetwork(layers, dict(metadata or {}))


# --------------------------------------------------------------------------- names

def module_names(unet) -> dict[str, str]:
    """Our Linear module names -> diffusers' ("down.0.1.attn1.to_out" -> "...attn1.to_out.0")."""
    return {ours[:-len(".weight")]: theirs[:-len(".weight")]
            for ours, theirs in unet_names(unet).items() if ours.endswith(".weight")}


def kohya_name(diffusers_path: str) -> str:
    return KOHYA_PREFIX + diffusers_path.replace(".", "_")


# --------------------------------------------------------------------------- kohya

def to_kohya(network: LoRANetwork, unet) -> dict[str, torch.Tensor]:
    """The kohya tensors of `network`, named for `unet`."""
    names = module_names(unet)
    out = {}
    for ours, (A, B, alpha) in network.layers.items():
        key = kohya_name(names[ours])
        out[f"{key}.lora_down.weight"] = A.contiguous()
        out[f"{key}.lora_up.weight"] = B.contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(alpha))
    return out


def from_kohya(tensors: dict[str, torch.Tensor], unet, metadata: dict | None = None) -> LoRANetwork:
    """A kohya file's tensors -> LoRANetwork for `unet`; a missing alpha means alpha = r (scale 1)."""
    by_kohya = {kohya_name(theirs): ours for ours, theirs in module_names(unet).items()}
    layers, seen = {}, set()
    for key in sorted(tensors):
        stem, _, part = key.partition(".")
        if stem.startswith("lora_te"):
            raise LoRAFileError(f"{key}: this LoRA also adapts a text encoder, which these files cannot carry here; "
                                "only lora_unet_ tensors are supported")
        if not stem.startswith(KOHYA_PREFIX):
            raise LoRAFileError(f"{key} is not a kohya LoRA tensor (expected lora_unet_<layer>.lora_down.weight, "
                                ".lora_up.weight or .alpha)")
        if stem not in by_kohya:
            raise LoRAFileError(f"{key}: the UNet has no layer {stem[len(KOHYA_PREFIX):]!r}; "
                                "is this LoRA for another model?")
        seen.add(stem)
    for stem in sorted(seen):
        try:
            A, B = tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"]
        except KeyError as missing:
            raise LoRAFileError(f"{stem} has no {missing.args[0].split('.', 1)[1]}") from None
        alpha = float(tensors[f"{stem}.alpha"]) if f"{stem}.alpha" in tensors else float(A.shape[0])
        layers[by_kohya[stem]] = (A.float(), B.float(), alpha)
    network = LoRANetwork(layers, dict(metadata or {}))
    check_network(network, unet)
    return network


# --------------------------------------------------------------------------- diffusers

def to_diffusers(network: LoRANetwork, unet) -> tuple[dict[str, torch.Tensor], dict]:
    """diffusers' (peft's) tensors, with alpha / r folded into B, and the adapter config (lora_alpha = r).

    Layers of different ranks would need peft's rank_pattern; our networks have one rank.
    """
    names = module_names(unet)
    ranks = {A.shape[0] for A, _, _ in network.layers.values()}
    if len(ranks) != 1:
        raise ValueError(f"diffusers' format needs one rank for every layer, got ranks {sorted(ranks)}")
    out = {}
    for ours, (A, B, alpha) in network.layers.items():
        path = DIFFUSERS_PREFIX + names[ours]
        out[f"{path}.lora_A.weight"] = A.contiguous()
        out[f"{path}.lora_B.weight"] = (B * (alpha / A.shape[0])).contiguous()
    r = ranks.pop()
    config = {"r": r, "lora_alpha": r, "target_modules": sorted({names[o] for o in network.layers})}
    return out, config


def from_diffusers(tensors: dict[str, torch.Tensor], unet, config: dict | None = None,
                   metadata: dict | None = None) -> LoRANetwork:
    """diffusers' tensors (unet.<path>.lora_A/B.weight) -> LoRANetwork; alpha from config's lora_alpha, else r."""
    by_path = {theirs: ours for ours, theirs in module_names(unet).items()}
    layers = {}
    for key in sorted(tensors):
        if not key.startswith(DIFFUSERS_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise LoRAFileError(f"{key} is not a diffusers UNet LoRA tensor (unet.<layer>.lora_A.weight / .lora_B.weight)")
        path = key[len(DIFFUSERS_PREFIX):].rsplit(".", 2)[0]
        if path not in by_path:
            raise LoRAFileError(f"{key}: the UNet has no layer {path!r}; is this LoRA for another model?")
    for path in sorted({k[len(DIFFUSERS_PREFIX):].rsplit(".", 2)[0] for k in tensors}):
        A = tensors[f"{DIFFUSERS_PREFIX}{path}.lora_A.weight"].float()
        B = tensors[f"{DIFFUSERS_PREFIX}{path}.lora_B.weight"].float()
        alpha = float((config or {}).get("lora_alpha", A.shape[0]))
        layers[by_path[path]] = (A, B, alpha)
    network = LoRANetwork(layers, dict(metadata or {}))
    check_network(network, unet)
    return network


def kohya_to_diffusers(tensors: dict[str, torch.Tensor], unet) -> tuple[dict[str, torch.Tensor], dict]:
    return to_diffusers(from_kohya(tensors, unet), unet)


def diffusers_to_kohya(tensors: dict[str, torch.Tensor], unet, config: dict | None = None) -> dict[str, torch.Tensor]:
    return to_kohya(from_diffusers(tensors, unet, config), unet)


# --------------------------------------------------------------------------- checks, files

def check_network(network: LoRANetwork, unet) -> None:
    """Raise LoRAFileError naming the first layer whose name or shapes do not fit `unet`."""
    linears = {name: m for name, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, LoRALinear))}
    names = module_names(unet)
    for ours in sorted(network.layers):
        A, B, alpha = network.layers[ours]
        theirs = names.get(ours, ours)
        if ours not in linears:
            raise LoRAFileError(f"{kohya_name(theirs)}: the UNet has no linear layer {ours!r}")
        layer = linears[ours]
        layer = layer.base if isinstance(layer, LoRALinear) else layer
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise LoRAFileError(f"{kohya_name(theirs)}: lora_down {tuple(A.shape)} and lora_up {tuple(B.shape)} "
                                "are not (r, d_in) and (d_out, r)")
        if A.shape[1] != layer.in_features or B.shape[0] != layer.out_features:
            raise LoRAFileError(
                f"{kohya_name(theirs)}.lora_down.weight has shape {tuple(A.shape)} and lora_up {tuple(B.shape)}, "
                f"but the layer is {layer.out_features} x {layer.in_features}: this LoRA was trained for another model")


def save_lora(network: LoRANetwork, unet, path, format: str = "kohya") -> Path:
    """Write a .safetensors LoRA file in "kohya" or "diffusers" format, with the network's metadata."""
    path = Path(path)
    meta = {k: str(v) for k, v in network.metadata.items()}
    if format == "kohya":
        tensors = to_kohya(network, unet)
        meta.setdefault("ss_network_module", "networks.lora")
        meta.setdefault("ss_network_dim", str(network.rank))
    elif format == "diffusers":
        tensors, config = to_diffusers(network, unet)
        meta["lora_adapter_metadata"] = json.dumps({DIFFUSERS_PREFIX + k: v for k, v in config.items()})
    else:
        raise ValueError(f"format must be 'kohya' or 'diffusers', got {format!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def read_lora(path, unet) -> LoRANetwork:
    """Read a LoRA .safetensors file of either format (told apart by its key names) for `unet`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA file {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if not tensors:
        raise LoRAFileError(f"{path} holds no tensors")
    if any(k.startswith(DIFFUSERS_PREFIX) for k in tensors):
        config = json.loads(meta.pop("lora_adapter_metadata", "{}"))  # per component: "unet.lora_alpha", ...
        config = {k.removeprefix(DIFFUSERS_PREFIX): v for k, v in config.items()}
        return from_diffusers(tensors, unet, config, meta)
    return from_kohya(tensors, unet, meta)


@contextmanager
def applied(unet, networks):
    """Inside the block, `unet` draws with each (LoRANetwork, weight) of `networks` merged in at that weight.

    W = W0 + sum_k w_k (alpha_k / r_k) B_k A_k for every adapted layer. A weight of 0 leaves
    the layer untouched, so it draws exactly what no LoRA draws; on leaving, every touched
    weight gets its original tensor back (no drift after any number of uses).
    """
    saved = {}
    try:
        with torch.no_grad():
            for network, weight in networks:
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                    raise ValueError(f"a LoRA weight must be a finite number, got {weight!r}")
                check_network(network, unet)
                if weight == 0:
                    continue
                for name in network.layers:
                    linear = unet.get_submodule(name)
                    linear = linear.base if isinstance(linear, LoRALinear) else linear
                    if name not in saved:
                        saved[name] = (linear, linear.weight.detach().clone())
                    linear.weight += network.delta(name, weight).to(linear.weight)
        yield unet
    finally:
        with torch.no_grad():
            for linear, original in saved.values():
                linear.weight.copy_(original)


def network_from_state(tensors: dict[str, torch.Tensor], alpha: float, metadata: dict | None = None,
                       device=None) -> LoRANetwork:
    """A run's saved LoRA factors ("unet.<layer>.lora_A.weight", "...lora_B.weight") -> LoRANetwork, float32 on `device`."""
    layers = {}
    for key in sorted(tensors):
        if not key.startswith("unet.") or not key.endswith(".lora_A.weight"):
            continue
        name = key[len("unet."):-len(".lora_A.weight")]
        layers[name] = (tensors[key].float().to(device), tensors[f"unet.{name}.lora_B.weight"].float().to(device),
                        float(alpha))
    if not layers:
        raise LoRAFileError(f"no LoRA factors among {sorted(tensors)[:3]}...")
    return LoRANetwork(layers, dict(metadata or {}))
