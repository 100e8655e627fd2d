"""Recipes: everything the training command needs to know about one model.

A recipe names a model, its default @dataclass config, how to build it, a
batch of data for a given step, the loss, and the optimiser's numbers. The
training loop in `train.py` is the same for every model; only the recipe
changes. A recipe is made for one device (`get_recipe(name, device)`): it binds
the frozen parts its model trains against (`frozen.py`) on that device, when
they are first needed, so the batches are encoded where the model trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from diffusion_notes.evaluation.classifier import (
    ClassifierConfig,
    ShapesClassifier,
    classifier_batch,
    classifier_loss,
    concept_classifier_batch,
    evaluate_classifier,
    evaluate_concept_classifier,
)
from diffusion_notes.foundations.diffusion import noise_prediction_loss
from diffusion_notes.foundations.schedules import make_schedule
from diffusion_notes.foundations.toy2d import ToyDenoiser, ToyDenoiserConfig, sample_toy
from diffusion_notes.nn.unet import UNet, UNetConfig
from diffusion_notes.practice.controlnet.conditions import (
    controlnet_batch,
    controlnet_loss,
)
from diffusion_notes.practice.controlnet.evaluate import evaluate_controlnet
from diffusion_notes.practice.controlnet.model import ControlNet, ControlNetConfig
from diffusion_notes.practice.controlnet.pipeline import ControlNetPipeline
from diffusion_notes.practice.finetune.concept import concept_scores
from diffusion_notes.practice.finetune.learner import (
    ConceptLearner,
    FineTuneConfig,
    concept_loss,
    instance_batch,
    learner_pipeline,
)
from diffusion_notes.rng import step_generator
from diffusion_notes.stable_diffusion.evaluate import evaluate_ldm
from diffusion_notes.stable_diffusion.ldm import P_TWO_OBJECTS_TRAIN, encode_latents, ldm_batch, ldm_loss
from diffusion_notes.stable_diffusion.vae import (
    AutoencoderKL,
    VAEConfig,
    evaluate_vae,
    vae_batch,
    vae_training_loss,
)
from diffusion_notes.training import frozen
from diffusion_notes.unclip.ar_prior import ARPrior, ARPriorConfig, ar_prior_loss
from diffusion_notes.unclip.clip import CLIP, CLIPConfig, clip_batch, clip_training_loss
from diffusion_notes.unclip.clip_eval import evaluate_clip
from diffusion_notes.unclip.conditions import TextConditions, null_text, unclip_batch
from diffusion_notes.unclip.decoder import (
    P_DROP_TEXT,
    P_DROP_TEXT_GLIDE,
    Decoder,
    DecoderConfig,
    Upsampler,
    UpsamplerConfig,
    decoder_loss,
    latent_decoder_config,
    upsampler_loss,
)
from diffusion_notes.unclip.evaluate import (
    evaluate_decoder,
    evaluate_prior,
    evaluate_upsampler,
)
from diffusion_notes.unclip.prior import DiffusionPrior, PriorConfig, prior_loss


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


# ---------------------------------------------------------------------------
# The recipes.


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


def _clip(device: str) -> Recipe:
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


def _shapes_classifier(device: str) -> Recipe:
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


def _concept_classifier(device: str) -> Recipe:
    return Recipe(
        name="concept_classifier",
        config=ClassifierConfig(concepts=("heart",)),
        build=ShapesClassifier,
        make_batch=concept_classifier_batch,
        loss=classifier_loss,
        steps=1000,
        batch_size=64,
        lr=2e-3,
        evaluate=evaluate_concept_classifier,
        dataset="Shapes train split, seed 0, a quarter of the images replaced by one heart (concept_attributes)",
        description="the attribute classifier that also reads hearts: the judge of Part IV's fine-tuning",
    )


def _vae(device: str) -> Recipe:
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


def _ldm_unet(device: str, name: str = "ldm_unet", p_two_objects: float = P_TWO_OBJECTS_TRAIN) -> Recipe:
    """The latent UNet. `ldm_unet_mix30` is the same recipe on the Shapes default of 30% two-object
    pictures instead of 50%: the ablation of the training mix (benchmarks/two_object_mix.py)."""

    def make_batch(step, batch_size, seed):
        return ldm_batch(step, batch_size, seed, **frozen.stable_diffusion(device),  # encoded on `device`
                         p_two_objects=p_two_objects)

    def loss(model, batch, generator):
        return ldm_loss(model, batch, generator, null=frozen.null_context(device))  # tau("") encoded once

    def evaluate(unet):
        where = _device_of(unet)
        return evaluate_ldm(unet, **frozen.stable_diffusion(where), classifier=frozen.classifier(where))

    return Recipe(
        name=name,
        config=UNetConfig(),
        build=UNet,
        make_batch=make_batch,
        loss=loss,
        steps=10000,
        batch_size=64,
        lr=1e-3,
        warmup_steps=200,
        ema_decay=0.999,
        evaluate=evaluate,
        dataset=f"Shapes train split, seed 0, {'half' if p_two_objects == 0.5 else f'{p_two_objects:.0%}'} of the images "
                "with two objects, as latents of the shipped vae and token states of the shipped clip",
        description="latent UNet eps_theta(z_t, t, tau(y)) with cross-attention to CLIP's token states",
    )


def _controlnet(device: str) -> Recipe:
    """Part IV: a ControlNet on the shipped latent UNet, from outlines and masks (see practice/controlnet)."""

    def make_batch(step, batch_size, seed):
        return controlnet_batch(step, batch_size, seed, **frozen.stable_diffusion(device))

    def loss(model, batch, generator):
        return controlnet_loss(model, batch, generator, unet=frozen.ldm_unet(device), null=frozen.null_context(device))

    def evaluate(controlnet):
        where = _device_of(controlnet)
        parts = frozen.stable_diffusion(where)
        pipe = ControlNetPipeline(frozen.ldm_unet(where), parts["vae"], parts["clip"], parts["scale_factor"], controlnet)
        return evaluate_controlnet(pipe, frozen.classifier(where))

    return Recipe(
        name="controlnet",
        config=ControlNetConfig(),
        build=ControlNet,
        prepare=lambda model, seed: model.copy_encoder_from(frozen.ldm_unet(_device_of(model))),  # Theta_c = Theta
        make_batch=make_batch,
        loss=loss,
        steps=1000,
        batch_size=32,
        lr=5e-4,
        warmup_steps=50,
        evaluate=evaluate,
        dataset="Shapes train split, seed 0, half of the images with two objects, each with an outline or a mask "
                "condition made on the fly, as latents of the shipped vae and token states of the shipped clip",
        description="ControlNet: a trainable copy of the shipped ldm_unet's encoder, joined by zero convolutions; "
                    "the ldm_unet frozen, captions dropped 50%",
    )


def _unclip_batch(step: int, batch_size: int, seed: int) -> dict:
    """Batch `step` of the bank built with the run's own seed."""
    return unclip_batch(frozen.unclip_bank(seed), step, batch_size, seed)


def _null_text() -> TextConditions:
    """The empty caption through the shipped CLIP: what a dropped caption becomes in the unCLIP losses."""
    return null_text(frozen.clip())


def _device_of(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


def _evaluate_prior(prior) -> dict:
    return evaluate_prior(prior, frozen.clip(_device_of(prior)))


def _unclip_prior(device: str) -> Recipe:
    return Recipe(
        name="unclip_prior",
        config=PriorConfig(),
        build=DiffusionPrior,
        make_batch=_unclip_batch,
        loss=lambda model, batch, generator: prior_loss(model, batch, generator, null=_null_text()),
        steps=3000,
        batch_size=128,
        lr=5e-4,
        weight_decay=0.01,
        warmup_steps=200,
        ema_decay=0.999,
        evaluate=_evaluate_prior,
        dataset=_UNCLIP_DATA,
        description="diffusion prior f(z_i^(t), t, y) -> z_i: a causal Transformer, caption dropped 10%",
    )


def _ar_prior(device: str) -> Recipe:
    return Recipe(
        name="ar_prior",
        config=ARPriorConfig(),
        build=ARPrior,
        make_batch=_unclip_batch,
        loss=ar_prior_loss,
        steps=1500,
        batch_size=128,
        lr=5e-4,
        weight_decay=0.01,
        warmup_steps=200,
        evaluate=_evaluate_prior,
        prepare=lambda model, seed: model.fit(frozen.unclip_bank(seed).z_i.to(_device_of(model))),
        dataset=_UNCLIP_DATA,
        description="autoregressive prior: z_i reduced by PCA, quantised, predicted code by code by a causal Transformer",
    )


def _decoder(name: str, image_embedding: bool, device: str) -> Recipe:
    config = DecoderConfig(image_embedding=image_embedding,
                           p_drop_text=P_DROP_TEXT if image_embedding else P_DROP_TEXT_GLIDE)
    what = ("unCLIP decoder eps(x_t, t, z_i, y) at 16x16: z_i added to the timestep embedding and as 4 extra tokens; "
            "z_i zeroed 10%, caption dropped 50%") if image_embedding else \
        "GLIDE baseline at 16x16: the unCLIP decoder without z_i (text only), caption dropped 20%"
    return Recipe(
        name=name,
        config=config,
        build=Decoder,
        make_batch=_unclip_batch,
        loss=lambda model, batch, generator: decoder_loss(model, batch, generator, null=_null_text()),
        steps=2500,
        batch_size=64,
        lr=1e-3,
        warmup_steps=200,
        ema_decay=0.999,
        evaluate=lambda decoder: evaluate_decoder(decoder, frozen.clip(_device_of(decoder)),
                                                  frozen.classifier(_device_of(decoder))),
        dataset=_UNCLIP_DATA,
        description=what,
    )


def _latent_decoder(name: str, image_embedding: bool, device: str) -> Recipe:
    """The decoder in the autoencoder's latent space, warm-started from the shipped latent UNet (Stable unCLIP, Karlo).

    The unCLIP and GLIDE variants start from the same weights and train the same number of steps on the
    same batches, so the comparison spends equal compute on each.
    """
    config = latent_decoder_config(image_embedding)

    def make_batch(step, batch_size, seed):
        batch = _unclip_batch(step, batch_size, seed)
        parts = frozen.stable_diffusion(device)
        batch["z0"] = encode_latents(parts["vae"], batch["images"].to(device), parts["scale_factor"],
                                     step_generator(seed, step, stream=2))
        return batch

    def evaluate(decoder):
        where = _device_of(decoder)
        parts = frozen.stable_diffusion(where)
        return evaluate_decoder(decoder, frozen.clip(where), frozen.classifier(where),
                                vae=parts["vae"], scale_factor=parts["scale_factor"])

    what = ("unCLIP decoder eps(z_t, t, z_i, y) on 8x8x4 latents, from the shipped ldm_unet: z_i added to the "
            "timestep embedding and as 4 extra tokens; z_i zeroed 10%, caption dropped 50%") if image_embedding else \
        "GLIDE baseline on 8x8x4 latents, from the shipped ldm_unet: pooled caption and tokens only, caption dropped 20%"
    return Recipe(
        name=name,
        config=config,
        build=Decoder,
        prepare=lambda model, seed: model.warm_start(frozen.ldm_unet(_device_of(model))),
        make_batch=make_batch,
        loss=lambda model, batch, generator: decoder_loss(model, batch, generator, null=_null_text()),
        steps=2000,
        batch_size=64,
        lr=3e-4,
        warmup_steps=100,
        ema_decay=0.999,
        evaluate=evaluate,
        dataset=_UNCLIP_DATA + ", the images as latents of the shipped vae",
        description=what,
    )


def _unclip_upsampler(device: str) -> Recipe:
    return Recipe(
        name="unclip_upsampler",
        config=UpsamplerConfig(),
        build=Upsampler,
        make_batch=_unclip_batch,
        loss=upsampler_loss,
        steps=1000,
        batch_size=64,
        lr=1e-3,
        warmup_steps=100,
        ema_decay=0.999,
        evaluate=lambda upsampler: evaluate_upsampler(upsampler, frozen.clip(_device_of(upsampler))),
        dataset=_UNCLIP_DATA,
        description="diffusion upsampler 16x16 -> 32x32 conditioned on the noise-augmented low-resolution image",
    )


def _finetune(name: str, config: FineTuneConfig, steps: int, lr: float, device: str) -> Recipe:
    """Part IV: teach the shipped Stable Diffusion the heart from six pictures (see practice/finetune)."""

    def build(cfg):
        if (cfg.prior_preservation, cfg.method, cfg.token) != (config.prior_preservation, config.method, config.token):
            raise ValueError(f"the {name} recipe trains method={config.method!r}, token={config.token!r} with "
                             f"prior_preservation={config.prior_preservation}; pick the recipe that does what you set "
                             "(textual_inversion, lora, dreambooth, dreambooth_prior, dreambooth_lora_prior)")
        parts = frozen.stable_diffusion(device)
        return ConceptLearner(cfg, unet=frozen.ldm_unet(device), text_encoder=parts["clip"].text, vae=parts["vae"],
                              scale_factor=parts["scale_factor"])

    def make_batch(step, batch_size, seed):
        parts = frozen.stable_diffusion(device)
        batch = instance_batch(parts["vae"], parts["scale_factor"], batch_size, step_generator(seed, step, stream=2),
                               config.token)
        if config.prior_preservation:
            z, ids = frozen.class_latents(seed)
            rows = (step * batch_size + torch.arange(batch_size)) % len(z)  # (B,) a window that walks the bank
            batch.update(prior_z0=z[rows], prior_ids=ids[rows])
        return batch

    def evaluate(learner):
        where = _device_of(learner)
        return concept_scores(learner_pipeline(learner, frozen.clip(where)), frozen.concept_judge(where),
                              word=config.token)

    what = {"textual_inversion": f"one new embedding row for the word {config.token!r} (textual inversion)",
            "lora": f"rank-{config.rank} LoRA on the UNet's attention projections",
            "dreambooth": "the whole UNet (DreamBooth)",
            "dreambooth_lora": f"a rank-{config.rank} LoRA, DreamBooth-style"}[config.method]
    return Recipe(
        name=name,
        config=config,
        build=build,
        make_batch=make_batch,
        loss=concept_loss,
        steps=steps,
        batch_size=config.n_instance,
        lr=lr,
        evaluate=evaluate,
        trainable_state=lambda learner: learner.trainable_state(),
        after_step=lambda learner: learner.restore_rows(),
        dataset="six pictures of a heart (practice/finetune/concept.py), as latents of the shipped vae"
                + (", and 48 class pictures the shipped pipeline drew for training captions" if config.prior_preservation else ""),
        description=f"the shipped Stable Diffusion taught the heart: {what}"
                    + (", with prior preservation" if config.prior_preservation else ""),
    )


_UNCLIP_DATA = ("Shapes train split, seed 0, half of the images with two objects: a bank of 24576 items "
                "with the shipped clip's z_i, z_t and token states")


_FACTORIES: dict[str, Callable[[str], Recipe]] = {
    "toy2d": _toy2d,
    "clip": _clip,
    "shapes_classifier": _shapes_classifier,
    "concept_classifier": _concept_classifier,
    "vae": _vae,
    "ldm_unet": _ldm_unet,
    "ldm_unet_mix30": lambda device: _ldm_unet(device, "ldm_unet_mix30", p_two_objects=0.3),
    "unclip_prior": _unclip_prior,
    "ar_prior": _ar_prior,
    "unclip_decoder": lambda device: _decoder("unclip_decoder", True, device),
    "glide_decoder": lambda device: _decoder("glide_decoder", False, device),
    "unclip_upsampler": _unclip_upsampler,
    "unclip_latent_decoder": lambda device: _latent_decoder("unclip_latent_decoder", True, device),
    "glide_latent_decoder": lambda device: _latent_decoder("glide_latent_decoder", False, device),
    "textual_inversion": lambda device: _finetune("textual_inversion",
                                                  FineTuneConfig("textual_inversion", token="valentine"),
                                                  400, 5e-3, device),
    "lora": lambda device: _finetune("lora", FineTuneConfig("lora", rank=4, alpha=4.0), 300, 2e-3, device),
    "controlnet": _controlnet,
    "dreambooth": lambda device: _finetune("dreambooth", FineTuneConfig("dreambooth"), 300, 2e-4, device),
    "dreambooth_prior": lambda device: _finetune("dreambooth_prior",
                                                 FineTuneConfig("dreambooth", prior_preservation=True), 300, 2e-4, device),
    "dreambooth_lora_prior": lambda device: _finetune(
        "dreambooth_lora_prior", FineTuneConfig("dreambooth_lora", rank=16, alpha=16.0, prior_preservation=True),
        300, 2e-3, device),
}


def recipe_names() -> list[str]:
    """The names `get_recipe` knows."""
    return list(_FACTORIES)


def get_recipe(name: str, device="cpu") -> Recipe:
    """The recipe called `name`, its frozen parts bound on `device`; a ValueError lists the known ones."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(recipe_names())}")
    return _FACTORIES[name](str(device))


