"""Starting the web UI: the shipped models and the user's folders, gathered into one `WebUIState`.

`python -m diffusion_notes webui` calls `build_state`. This is the one module of the web UI that
asks the shelf (`pretrained`) for anything, and it asks by name: the checkpoint file of
"ldm_unet", the shipped LoRAs, textual-inversion embeddings and ControlNets. Every other module is
handed what it serves, so a test or a chapter can build the state from models of its own.
"""

from __future__ import annotations

from diffusion_notes import pretrained
from diffusion_notes.practice.finetune.learner import TokenEmbedding
from diffusion_notes.practice.webui.extra_networks import LoRALibrary
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline


def lora_library(unet, folder=None, weights_dir=None) -> LoRALibrary:
    """What `<lora:name:w>` may name: every shipped LoRA by name, and the .safetensors files in `folder`."""
    names = pretrained.shipped_adapters("lora", weights_dir)
    return LoRALibrary(unet, {name: pretrained.load(name, "cpu", weights_dir) for name in names}, folder)


def embeddings(weights_dir=None) -> list[TokenEmbedding]:
    """Every shipped textual-inversion embedding (the web UI keeps them on)."""
    names = pretrained.shipped_adapters("textual_inversion", weights_dir)
    return [pretrained.load(name, "cpu", weights_dir) for name in names]


def controlnets(device=None, weights_dir=None) -> dict:
    """{name: ControlNet} for every shipped model of the "controlnet" recipe: what a ControlNet unit may name."""
    names = [name for name in pretrained.available(weights_dir)
             if pretrained.info(name, weights_dir)["recipe"] == "controlnet"]
    return {name: pretrained.load(name, device, weights_dir) for name in names}


def build_state(pipe: LatentDiffusionPipeline, models_dir=None, outputs_dir=None, lora_dir=None,
                weights_dir=None) -> WebUIState:
    """The web UI's state around `pipe` (the shipped Stable Diffusion) and the shipped extras it may name.

    `models_dir` holds the user's extra checkpoints (and the merger's output), `outputs_dir` receives
    the generated PNGs, `lora_dir` the user's LoRA files; None leaves each out.
    """
    registry = ModelRegistry(pipe, pretrained.verify("ldm_unet", weights_dir), models_dir)
    return WebUIState(registry, outputs_dir, loras=lora_library(pipe.unet, lora_dir, weights_dir),
                      embeddings=embeddings(weights_dir), controlnets=controlnets(weights_dir=weights_dir))
