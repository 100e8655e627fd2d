"""The shelf: the models that ship with the package, verified and loaded, and the pipelines built from them.

`weights/manifest.json` lists each shipped model: its recipe, file, sha256,
config, how it was trained (steps, batch size, seed, data, wall time, machine)
and its metrics, and the command that trains it again. `load(name)` checks the
file's checksum and config against the manifest before it builds the model;
`load("stable_diffusion")`, `load("unclip")` and `load("glide")` assemble a
pipeline from its shipped parts. Models and pipelines land on `default_device()`
(CUDA, then MPS, then CPU) unless a device is given. Shipping a finished run is
the training command's business (`training/ship.py`).

The weights directory is the package's `weights/` folder, unless the
environment variable DIFFUSION_NOTES_WEIGHTS or a `weights_dir=` argument
names another.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from diffusion_notes import architectures
from diffusion_notes.device import default_device
from diffusion_notes.practice.controlnet.pipeline import ControlNetPipeline
from diffusion_notes.run_files import load_checkpoint, read_metadata, sha256
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline
from diffusion_notes.unclip.pipeline import GLIDEPipeline, UnCLIPPipeline

WEIGHTS_ENV_VAR = "DIFFUSION_NOTES_WEIGHTS"
MANIFEST_NAME = "manifest.json"
# Fine-tuning results that ship as what they add, not as a whole model: load(name) returns
# a LoRANetwork (apply it with practice.finetune.lora_files.applied), a TokenEmbedding, or (DreamBooth) a UNet.
# "lcm_lora" is the LCM-LoRA (Chapter 18): a LoRANetwork too, named "lcm" (<lora:lcm:1> in the web UI).
ADAPTERS = ("lora", "textual_inversion", "textual_inversion_look", "dreambooth", "dreambooth_prior", "dreambooth_lora_prior",
            "lcm_lora")
LORA_RECIPES = ("lora", "lcm_lora")  # the adapters that load as a LoRANetwork: what a prompt's <lora:name:w> may name


class WeightsError(ValueError):
    """A shipped weights file does not match its manifest entry."""


def weights_path(weights_dir=None) -> Path:
    """Where the shipped weights live: the argument, $DIFFUSION_NOTES_WEIGHTS, or the package's weights/."""
    if weights_dir is not None:
        return Path(weights_dir)
    if os.environ.get(WEIGHTS_ENV_VAR):
        return Path(os.environ[WEIGHTS_ENV_VAR])
    return Path(__file__).resolve().parent / "weights"


def read_manifest(weights_dir=None) -> dict:
    path = weights_path(weights_dir) / MANIFEST_NAME
    if not path.is_file():
        return {"models": {}}
    return json.loads(path.read_text())


def available(weights_dir=None) -> list[str]:
    """Names of the shipped models."""
    return sorted(read_manifest(weights_dir)["models"])


def info(name: str, weights_dir=None) -> dict:
    """The manifest entry of the shipped model `name`."""
    models = read_manifest(weights_dir)["models"]
    if name not in models:
        shipped = ", ".join(sorted(models)) or "none yet"
        raise ValueError(
            f"no shipped model called {name!r}; shipped models: {shipped} "
            f"(pretrained.load also assembles the pipelines {', '.join(PIPELINES)}). "
            "Train one with: python -m diffusion_notes train MODEL, "
            "then ship it with: python -m diffusion_notes ship RUN_DIR"
        )
    return models[name]


def retrain_command(entry: dict) -> str:
    """The commands that rebuild a shipped model from scratch."""
    return f"{entry['train_command']} && {entry['ship_command']}"


def verify(name: str, weights_dir=None) -> Path:
    """Check that the file of `name` exists and has the manifest's checksum and config; return its path."""
    entry = info(name, weights_dir)
    path = weights_path(weights_dir) / entry["file"]
    retrain = retrain_command(entry)
    if not path.is_file():
        raise FileNotFoundError(f"the weights of {name!r} are missing: no file {path}. Retrain them with: {retrain}")
    actual = sha256(path)
    if actual != entry["sha256"]:
        raise WeightsError(
            f"the weights file {path} is damaged or was replaced: its sha256 is {actual}, "
            f"the manifest expects {entry['sha256']}. Retrain it with: {retrain}"
        )
    _architecture(entry, name)
    try:
        architectures.read_config(entry["recipe"], entry["config"], source=f"the manifest's config for {name!r}")
    except ValueError as err:
        raise WeightsError(f"{err}. The code changed since {path} was trained; retrain it with: {retrain}") from None
    stored = read_metadata(path)
    if stored.get("recipe") != entry["recipe"] or stored.get("config") != entry["config"]:
        raise WeightsError(
            f"the config stored in {path} ({stored.get('recipe')}: {stored.get('config')}) differs from the "
            f"manifest's ({entry['recipe']}: {entry['config']}). Retrain it with: {retrain}"
        )
    return path


def _architecture(entry: dict, name: str) -> architectures.Architecture:
    try:
        return architectures.architecture(entry["recipe"])
    except ValueError as err:
        raise WeightsError(f"the manifest says {name!r} is a {entry['recipe']!r} model: {err}") from None


def load(name: str, device=None, weights_dir=None):
    """The shipped model `name`, verified, in eval mode, float32, on `device` (default: `default_device()`).

    A name in PIPELINES ("stable_diffusion", "unclip", "glide") returns that pipeline, built from its shipped parts.
    Loading leaves torch's global random state as it was: building a module draws its initial
    weights before the shipped ones replace them, and a run seeded before a load would otherwise
    draw different numbers afterwards depending on whether the model was loaded already.
    """
    with torch.random.fork_rng(devices=[]):
        return _load(name, device, weights_dir)


def _load(name: str, device, weights_dir):
    device = device if device is not None else default_device()
    if name in PIPELINES:
        return PIPELINES[name](device, weights_dir)
    entry = info(name, weights_dir)
    path = verify(name, weights_dir)  # the checksum, and a recipe and config the library knows
    tensors, _ = load_checkpoint(path)
    try:
        return architectures.build(entry["recipe"], entry["config"], tensors, name=name, base_config=_base_config,
                                   device=device)
    except ValueError as err:
        raise WeightsError(f"{path}: {err}. Retrain it with: {retrain_command(entry)}") from None


def _base_config(name: str):
    """The config of the package's shipped model `name`: what a fine-tuning result was trained on."""
    entry = info(name)
    return architectures.read_config(entry["recipe"], entry["config"], source=f"the manifest's config for {name!r}")


def shipped_adapters(kind: str, weights_dir=None) -> list[str]:
    """Names of the shipped adapters of one kind ("lora" or "textual_inversion")."""
    if kind not in ADAPTERS:
        raise ValueError(f"kind must be one of {', '.join(ADAPTERS)}, got {kind!r}")
    return sorted(n for n, e in read_manifest(weights_dir)["models"].items() if e["recipe"] == kind)


# ---------------------------------------------------------------------------
# Pipelines assembled from their shipped parts.


def stable_diffusion(device=None, weights_dir=None) -> LatentDiffusionPipeline:
    """"ldm_unet", "vae" (with its measured latent scale factor) and "clip"'s text encoder."""
    scale_factor = info("vae", weights_dir)["metrics"]["scale_factor"]
    return LatentDiffusionPipeline(*(load(part, device, weights_dir) for part in ("ldm_unet", "vae", "clip")),
                                   scale_factor)


SPACES = ("latent", "pixel")


def _decoder_parts(name: str, space: str, device, weights_dir) -> dict:
    """The decoder of `name` ("unclip", "glide") in `space`, and what turns its output into pictures."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
    if space == "pixel":  # DALL-E 2's cascade: a 16x16 decoder and the upsampler
        return {"decoder": load(f"{name}_decoder", device, weights_dir),
                "upsampler": load("unclip_upsampler", device, weights_dir)}
    return {"decoder": load(f"{name}_latent_decoder", device, weights_dir), "upsampler": None,
            "vae": load("vae", device, weights_dir), "scale_factor": info("vae", weights_dir)["metrics"]["scale_factor"]}


def unclip(device=None, weights_dir=None, prior: str = "unclip_prior", space: str = "latent") -> UnCLIPPipeline:
    """A prior ("unclip_prior", or "ar_prior"), a decoder and "clip".

    space="latent" (the default): "unclip_latent_decoder" and the "vae" that decodes its latents;
    space="pixel": DALL-E 2's cascade, "unclip_decoder" at 16x16 and "unclip_upsampler".
    """
    parts = _decoder_parts("unclip", space, device, weights_dir)
    return UnCLIPPipeline(load(prior, device, weights_dir), clip=load("clip", device, weights_dir), **parts)


def glide(device=None, weights_dir=None, space: str = "latent") -> GLIDEPipeline:
    """The baseline: "glide_latent_decoder" (or, space="pixel", "glide_decoder" and "unclip_upsampler") and "clip"."""
    return GLIDEPipeline(clip=load("clip", device, weights_dir), **_decoder_parts("glide", space, device, weights_dir))


def stable_diffusion_controlnet(device=None, weights_dir=None, controlnet: str = "controlnet") -> ControlNetPipeline:
    """The shipped Stable Diffusion with the shipped ControlNet `controlnet` (Chapter 17)."""
    sd = stable_diffusion(device, weights_dir)
    return ControlNetPipeline(sd.unet, sd.vae, sd.clip, sd.scale_factor, load(controlnet, device, weights_dir))


PIPELINES = {"stable_diffusion": stable_diffusion, "unclip": unclip, "glide": glide,
             "stable_diffusion_controlnet": stable_diffusion_controlnet}
