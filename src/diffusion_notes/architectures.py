"""The list of models: each architecture the library trains and ships, by the name its weights file records.

A weights file written by `train` (and copied by `ship`) says which recipe made it and with what
config: {"recipe": "toy2d", "config": {...}}. `ARCHITECTURES[recipe]` says what that builds: the
model class, its config dataclass, and, for a fine-tuning result that ships only what it adds,
the function of Part IV that turns the saved tensors into that object (a LoRA network, a
textual-inversion embedding, a DreamBooth UNet). The recipes (`training/recipes/`) build their
models from this list, and the shelf (`pretrained.py`) builds the shipped files through `build`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffusion_notes.evaluation.classifier import ClassifierConfig, ShapesClassifier
from diffusion_notes.fewer_steps.students import LCMLoRA, LCMLoRAConfig, lcm_lora_network
from diffusion_notes.foundations.toy2d import ToyDenoiser, ToyDenoiserConfig
from diffusion_notes.nn.unet import UNet, UNetConfig
from diffusion_notes.practice.controlnet.model import ControlNet, ControlNetConfig
from diffusion_notes.practice.finetune.learner import ConceptLearner, FineTuneConfig, shipped_result
from diffusion_notes.run_files import config_from_dict
from diffusion_notes.stable_diffusion.vae import AutoencoderKL, VAEConfig
from diffusion_notes.unclip.ar_prior import ARPrior, ARPriorConfig
from diffusion_notes.unclip.clip import CLIP, CLIPConfig
from diffusion_notes.unclip.decoder import Decoder, DecoderConfig, Upsampler, UpsamplerConfig
from diffusion_notes.unclip.prior import DiffusionPrior, PriorConfig


@dataclass(frozen=True)
class Architecture:
    model: type  # what the recipe trains: config -> nn.Module
    config: type  # its config dataclass, stored as JSON with the weights
    # A result that ships as what it adds: (config, tensors, *, name, base_config, device) -> the object.
    # None: the file holds the model's whole state dict.
    load: Callable[..., object] | None = None


_FINE_TUNED = Architecture(ConceptLearner, FineTuneConfig, load=shipped_result)

ARCHITECTURES: dict[str, Architecture] = {
    # Part I
    "toy2d": Architecture(ToyDenoiser, ToyDenoiserConfig),
    # Part II
    "clip": Architecture(CLIP, CLIPConfig),
    "shapes_classifier": Architecture(ShapesClassifier, ClassifierConfig),
    "unclip_prior": Architecture(DiffusionPrior, PriorConfig),
    "ar_prior": Architecture(ARPrior, ARPriorConfig),
    "unclip_decoder": Architecture(Decoder, DecoderConfig),
    "glide_decoder": Architecture(Decoder, DecoderConfig),
    "unclip_upsampler": Architecture(Upsampler, UpsamplerConfig),
    "unclip_latent_decoder": Architecture(Decoder, DecoderConfig),
    "glide_latent_decoder": Architecture(Decoder, DecoderConfig),
    # Part III
    "vae": Architecture(AutoencoderKL, VAEConfig),
    "ldm_unet": Architecture(UNet, UNetConfig),
    "ldm_unet_mix30": Architecture(UNet, UNetConfig),  # the training-mix ablation (benchmarks/two_object_mix.py)
    # Part IV
    "concept_classifier": Architecture(ShapesClassifier, ClassifierConfig),
    "textual_inversion": _FINE_TUNED,
    "textual_inversion_look": _FINE_TUNED,  # a look the model can draw, one word for it
    "lora": _FINE_TUNED,
    "dreambooth": _FINE_TUNED,
    "dreambooth_prior": _FINE_TUNED,
    "dreambooth_lora_prior": _FINE_TUNED,
    "controlnet": Architecture(ControlNet, ControlNetConfig),
    # Part V
    "lcm_unet": Architecture(UNet, UNetConfig),  # a UNet read through LCM's boundary condition (samplers.lcm)
    "lcm_lora": Architecture(LCMLoRA, LCMLoRAConfig, load=lcm_lora_network),
    "flow_unet": Architecture(UNet, UNetConfig),  # a UNet that predicts the flow's velocity (fewer_steps.flow)
}


def architecture(recipe: str) -> Architecture:
    """The architecture a file of `recipe` holds; a ValueError names the ones this library builds."""
    if recipe not in ARCHITECTURES:
        raise ValueError(f"{recipe!r} is not a model this version of the library can build "
                         f"(it builds {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[recipe]


def read_config(recipe: str, values: dict, *, source: str = "the config"):
    """The config dataclass of `recipe` from its JSON dict (a ValueError on a field the dataclass lacks)."""
    return config_from_dict(architecture(recipe).config, values, source=source)


def build(recipe: str, config: dict, tensors: dict[str, torch.Tensor], *, name: str | None = None,
          base_config: Callable[[str], object] | None = None, device="cpu"):
    """The object a weights file of `recipe` holds: the model, float32, in eval mode, on `device`, or what
    a fine-tuning result adds (see `Architecture.load`; `name` names it, `base_config(model)` gives the
    config of the model it was trained on).

    A ValueError says when the tensors do not fit the model of `config`.
    """
    arch = architecture(recipe)
    values = read_config(recipe, config, source=f"the config of {name or recipe!r}")
    if arch.load is not None:
        return arch.load(values, tensors, name=name or recipe, base_config=base_config, device=device)
    model = arch.model(values)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise ValueError(f"the tensors do not fit the {recipe} model: {str(err)[:300]}") from None
    return model.float().to(device).eval()
