"""Recipes: everything the training command needs to know about one model.

A recipe names a model, its default @dataclass config, how to build it, a
batch of data for a given step, the loss, and the optimiser's numbers. The
training loop in `train.py` is the same for every model; only the recipe
changes. Model modules are imported inside the recipe factories, so importing
this module is cheap and a recipe whose module is missing only fails when it
is asked for.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn


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
    dataset: str = ""
    description: str = ""


# ---------------------------------------------------------------------------
# Random numbers per step: a seed that is a pure function of (seed, step), so a
# resumed run draws exactly what an uninterrupted one would.

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed mixed from (seed, step, stream) without Python's salted `hash`.

    Stream 0 is the data (`make_batch`), stream 1 the loss's generator.
    Paper: Steele et al. 2014 (SplitMix64)
    """
    x = _splitmix64(int(seed) & _MASK64)
    x = _splitmix64(x ^ (int(step) & _MASK64))
    x = _splitmix64(x ^ (int(stream) & _MASK64))
    return x >> 1


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded with `step_seed(seed, step, stream)`."""
    return torch.Generator().manual_seed(step_seed(seed, step, stream))


# ---------------------------------------------------------------------------
# The recipes.


def _toy2d() -> Recipe:
    from .diffusion import noise_prediction_loss
    from .schedules import make_schedule
    from .toy2d import ToyDenoiser, ToyDenoiserConfig, sample_toy

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

    return Recipe(
        name="toy2d",
        config=ToyDenoiserConfig(),
        build=ToyDenoiser,
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


def _clip() -> Recipe:
    from .clip import CLIP, CLIPConfig, clip_batch, clip_training_loss
    from .clip_eval import evaluate_clip

    return Recipe(
        name="clip",
        config=CLIPConfig(),
        build=CLIP,
        make_batch=clip_batch,
        loss=clip_training_loss,
        steps=1500,
        batch_size=128,
        lr=1e-3,
        weight_decay=0.1,
        warmup_steps=100,
        evaluate=evaluate_clip,
        dataset="Shapes train split, seed 0",
        description="tiny CLIP: image and text encoders trained with the contrastive loss",
    )


def _shapes_classifier() -> Recipe:
    from .classifier import ClassifierConfig, ShapesClassifier, classifier_batch, classifier_loss, evaluate_classifier

    return Recipe(
        name="shapes_classifier",
        config=ClassifierConfig(),
        build=ShapesClassifier,
        make_batch=classifier_batch,
        loss=classifier_loss,
        steps=800,
        batch_size=64,
        lr=2e-3,
        evaluate=evaluate_classifier,
        dataset="Shapes train split, seed 0",
        description="attribute classifier for Shapes images (used by the metrics)",
    )


def _vae() -> Recipe:
    from .vae import AutoencoderKL, VAEConfig, evaluate_vae, vae_batch, vae_training_loss

    return Recipe(
        name="vae",
        config=VAEConfig(),
        build=AutoencoderKL,
        make_batch=vae_batch,
        loss=vae_training_loss,
        steps=3000,
        batch_size=64,
        lr=2e-3,
        warmup_steps=100,
        grad_clip=1.0,
        evaluate=evaluate_vae,
        dataset="Shapes train split, seed 0",
        description="KL autoencoder, 32x32x3 images <-> 8x8x4 latents (factor 4)",
    )


def _ldm_unet() -> Recipe:
    from .ldm import evaluate_ldm, ldm_batch, ldm_loss
    from .nn.unet import UNet, UNetConfig

    return Recipe(
        name="ldm_unet",
        config=UNetConfig(),
        build=UNet,
        make_batch=ldm_batch,
        loss=ldm_loss,
        steps=10000,
        batch_size=64,
        lr=1e-3,
        warmup_steps=200,
        ema_decay=0.999,
        evaluate=evaluate_ldm,
        dataset="Shapes train split, seed 0, half of the images with two objects, as latents of the shipped vae and token states of the shipped clip",
        description="latent UNet eps_theta(z_t, t, tau(y)) with cross-attention to CLIP's token states",
    )


def _unclip_prior() -> Recipe:
    from .prior import DiffusionPrior, PriorConfig, prior_loss
    from .unclip_data import unclip_batch
    from .unclip_eval import evaluate_prior

    return Recipe(
        name="unclip_prior",
        config=PriorConfig(),
        build=DiffusionPrior,
        make_batch=unclip_batch,
        loss=prior_loss,
        steps=3000,
        batch_size=128,
        lr=5e-4,
        weight_decay=0.01,
        warmup_steps=200,
        ema_decay=0.999,
        evaluate=evaluate_prior,
        dataset=_UNCLIP_DATA,
        description="diffusion prior f(z_i^(t), t, y) -> z_i: a causal Transformer, caption dropped 10%",
    )


def _ar_prior() -> Recipe:
    from .ar_prior import ARPrior, ARPriorConfig, ar_prior_loss
    from .unclip_data import unclip_batch
    from .unclip_eval import evaluate_prior

    return Recipe(
        name="ar_prior",
        config=ARPriorConfig(),
        build=ARPrior,
        make_batch=unclip_batch,
        loss=ar_prior_loss,
        steps=1500,
        batch_size=128,
        lr=5e-4,
        weight_decay=0.01,
        warmup_steps=200,
        evaluate=evaluate_prior,
        dataset=_UNCLIP_DATA,
        description="autoregressive prior: z_i reduced by PCA, quantised, predicted code by code by a causal Transformer",
    )


def _decoder(name: str, image_embedding: bool) -> Recipe:
    from .unclip import P_DROP_TEXT, P_DROP_TEXT_GLIDE, Decoder, DecoderConfig, decoder_loss
    from .unclip_data import unclip_batch
    from .unclip_eval import evaluate_decoder

    config = DecoderConfig(image_embedding=image_embedding,
                           p_drop_text=P_DROP_TEXT if image_embedding else P_DROP_TEXT_GLIDE)
    what = ("unCLIP decoder eps(x_t, t, z_i, y) at 16x16: z_i added to the timestep embedding and as 4 extra tokens; "
            "z_i zeroed 10%, caption dropped 50%") if image_embedding else \
        "GLIDE baseline at 16x16: the unCLIP decoder without z_i (text only), caption dropped 20%"
    return Recipe(
        name=name,
        config=config,
        build=Decoder,
        make_batch=unclip_batch,
        loss=decoder_loss,
        steps=2500,
        batch_size=64,
        lr=1e-3,
        warmup_steps=200,
        ema_decay=0.999,
        evaluate=evaluate_decoder,
        dataset=_UNCLIP_DATA,
        description=what,
    )


def _unclip_upsampler() -> Recipe:
    from .unclip import Upsampler, UpsamplerConfig, upsampler_loss
    from .unclip_data import unclip_batch
    from .unclip_eval import evaluate_upsampler

    return Recipe(
        name="unclip_upsampler",
        config=UpsamplerConfig(),
        build=Upsampler,
        make_batch=unclip_batch,
        loss=upsampler_loss,
        steps=1000,
        batch_size=64,
        lr=1e-3,
        warmup_steps=100,
        ema_decay=0.999,
        evaluate=evaluate_upsampler,
        dataset=_UNCLIP_DATA,
        description="diffusion upsampler 16x16 -> 32x32 conditioned on the noise-augmented low-resolution image",
    )


_UNCLIP_DATA = ("Shapes train split, seed 0, half of the images with two objects: a bank of 24576 items "
                "with the shipped clip's z_i, z_t and token states")

_FACTORIES: dict[str, Callable[[], Recipe]] = {
    "toy2d": _toy2d,
    "clip": _clip,
    "shapes_classifier": _shapes_classifier,
    "vae": _vae,
    "ldm_unet": _ldm_unet,
    "unclip_prior": _unclip_prior,
    "ar_prior": _ar_prior,
    "unclip_decoder": lambda: _decoder("unclip_decoder", True),
    "glide_decoder": lambda: _decoder("glide_decoder", False),
    "unclip_upsampler": _unclip_upsampler,
}


def recipe_names() -> list[str]:
    """The names `get_recipe` knows."""
    return list(_FACTORIES)


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; a ValueError lists the known ones."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(recipe_names())}")
    return _FACTORIES[name]()


# ---------------------------------------------------------------------------
# Configs: to and from JSON, and `--set key=value` overrides.


def config_to_dict(config) -> dict:
    """The config as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(config_class: type, values: dict, *, source: str = "the config"):
    """Build `config_class(**values)`; fields the dataclass lacks raise a ValueError."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{source} has fields {config_class.__name__} does not know: {', '.join(unknown)} "
            f"(its fields: {', '.join(sorted(known))})"
        )
    hints = typing.get_type_hints(config_class)
    return config_class(**{k: _to_tuple_if_needed(v, hints.get(k)) for k, v in values.items()})


def _to_tuple_if_needed(value, hint):
    if isinstance(value, list) and (hint is tuple or typing.get_origin(hint) is tuple):
        return tuple(value)
    return value


def _parse_value(text: str, hint, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() == "none" and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        hint = non_none[0] if len(non_none) == 1 else None
    try:
        if hint is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if hint in (int, float, str):
            return hint(text)
        value = json.loads(text)
        return _to_tuple_if_needed(value, hint)
    except ValueError:
        name = getattr(hint, "__name__", str(hint))
        raise ValueError(f"--set {key}={text}: cannot read {text!r} as {name}") from None


def parse_overrides(items: Iterable[str] | dict | None) -> dict:
    """Turn ["hidden=16", "num_blocks=1"] into {"hidden": "16", "num_blocks": "1"} (a dict passes through)."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def apply_overrides(config, overrides: Iterable[str] | dict | None):
    """A copy of the dataclass `config` with `overrides` applied.

    String values are parsed with the field's type (int, float, bool, str,
    optional, or JSON for anything else); other values are used as given.
    """
    overrides = parse_overrides(overrides)
    if not overrides:
        return config
    fields = {f.name for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    values = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(
                f"--set {key}: {type(config).__name__} has no field {key!r}; its fields: {', '.join(sorted(fields))}"
            )
        values[key] = _parse_value(value, hints.get(key), key) if isinstance(value, str) else value
    return dataclasses.replace(config, **values)


def config_diff(config, default) -> dict:
    """Fields of `config` that differ from `default`, as JSON values (for a `--set` command line)."""
    a, b = config_to_dict(config), config_to_dict(default)
    return {k: v for k, v in a.items() if b.get(k) != v}
