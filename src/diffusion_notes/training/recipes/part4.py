"""Part IV's recipes (chapters 16-17): the judge of fine-tuning, the heart taught to the shipped
Stable Diffusion (textual inversion, LoRA, DreamBooth), and a ControlNet on its UNet."""

from __future__ import annotations

from functools import partial

import torch

from diffusion_notes.evaluation.classifier import (
    ClassifierConfig,
    classifier_loss,
    concept_classifier_batch,
    evaluate_concept_classifier,
)
from diffusion_notes.practice.controlnet.conditions import controlnet_batch, controlnet_loss
from diffusion_notes.practice.controlnet.evaluate import evaluate_controlnet
from diffusion_notes.practice.controlnet.pipeline import ControlNetPipeline
from diffusion_notes.practice.finetune import look
from diffusion_notes.practice.finetune.concept import concept_scores
from diffusion_notes.practice.finetune.learner import (
    ConceptLearner,
    FineTuneConfig,
    concept_loss,
    instance_batch,
    learner_pipeline,
)
from diffusion_notes.rng import step_generator
from diffusion_notes.training import frozen
from diffusion_notes.training.recipes.base import Recipe, device_of, recipe


def _concept_classifier(device: str) -> Recipe:
    return recipe(
        "concept_classifier",
        config=ClassifierConfig(concepts=("heart",)),
        make_batch=concept_classifier_batch,
        loss=classifier_loss,
        steps=1000,
        batch_size=64,
        lr=2e-3,
        evaluate=evaluate_concept_classifier,
        dataset="Shapes train split, seed 0, a quarter of the images replaced by one heart (concept_attributes)",
        description="the attribute classifier that also reads hearts: the judge of Part IV's fine-tuning",
    )


def _finetune(device: str, *, name: str, config: FineTuneConfig, steps: int, lr: float, batch_of=instance_batch,
              scores=concept_scores, pictures: str = "six pictures of a heart (practice/finetune/concept.py)",
              taught: str = "the heart") -> Recipe:
    """Teach the shipped Stable Diffusion a concept from six pictures (see practice/finetune): the heart, or
    with `batch_of` and `scores` from practice/finetune/look.py, a look."""

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
        batch = batch_of(parts["vae"], parts["scale_factor"], batch_size, step_generator(seed, step, stream=2),
                         config.token)
        if config.prior_preservation:
            z, ids = frozen.class_latents(seed)
            rows = (step * batch_size + torch.arange(batch_size)) % len(z)  # (B,) a window that walks the bank
            batch.update(prior_z0=z[rows], prior_ids=ids[rows])
        return batch

    def evaluate(learner):
        where = device_of(learner)
        return scores(learner_pipeline(learner, frozen.clip(where)), frozen.concept_judge(where), word=config.token)

    what = {"textual_inversion": f"one new embedding row for the word {config.token!r} (textual inversion)",
            "lora": f"rank-{config.rank} LoRA on the UNet's attention projections",
            "dreambooth": "the whole UNet (DreamBooth)",
            "dreambooth_lora": f"a rank-{config.rank} LoRA, DreamBooth-style"}[config.method]
    return recipe(
        name,
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
        dataset=f"{pictures}, as latents of the shipped vae"
                + (", and 48 class pictures the shipped pipeline drew for training captions"
                   if config.prior_preservation else ""),
        description=f"the shipped Stable Diffusion taught {taught}: {what}"
                    + (", with prior preservation" if config.prior_preservation else ""),
    )


def _controlnet(device: str) -> Recipe:
    """A ControlNet on the shipped latent UNet, from outlines and masks (see practice/controlnet)."""

    def make_batch(step, batch_size, seed):
        return controlnet_batch(step, batch_size, seed, **frozen.stable_diffusion(device))

    def loss(model, batch, generator):
        return controlnet_loss(model, batch, generator, unet=frozen.ldm_unet(device), null=frozen.null_context(device))

    def evaluate(controlnet):
        where = device_of(controlnet)
        parts = frozen.stable_diffusion(where)
        pipe = ControlNetPipeline(frozen.ldm_unet(where), parts["vae"], parts["clip"], parts["scale_factor"],
                                  controlnet)
        return evaluate_controlnet(pipe, frozen.classifier(where))

    return recipe(
        "controlnet",
        prepare=lambda model, seed: model.copy_encoder_from(frozen.ldm_unet(device_of(model))),  # Theta_c = Theta
        make_batch=make_batch,
        loss=loss,
        steps=2000,
        batch_size=32,
        lr=5e-4,
        warmup_steps=50,
        evaluate=evaluate,
        dataset="Shapes train split, seed 0, half of the scenes with two objects, half moved anywhere at radii 2-6 px "
                "(scenes.move); captions naming no position, the objects' cells or other cells (a third each); an "
                "outline, a mask or the Canny edges of the picture as the condition (a third each), made on the fly; "
                "as latents of the shipped vae and token states of the shipped clip",
        description="ControlNet: a trainable copy of the shipped ldm_unet's encoder, joined by zero convolutions; "
                    "the ldm_unet frozen, captions dropped 50%",
    )


RECIPES = {  # name -> (device -> Recipe)
    "concept_classifier": _concept_classifier,
    "textual_inversion": partial(_finetune, name="textual_inversion",
                                 config=FineTuneConfig("textual_inversion", token="valentine"), steps=400, lr=5e-3),
    "textual_inversion_look": partial(
        _finetune, name="textual_inversion_look",
        config=FineTuneConfig("textual_inversion", token=look.WORD, init_token="yellow"),
        steps=400, lr=5e-3, batch_of=look.instance_batch, scores=look.look_scores,
        pictures="six pictures of the look 'sunny' (large, yellow, top right) on four shapes (finetune/look.py)",
        taught="a look it can already draw, large yellow in the top right"),
    "lora": partial(_finetune, name="lora", config=FineTuneConfig("lora", rank=4, alpha=4.0), steps=300, lr=2e-3),
    "dreambooth": partial(_finetune, name="dreambooth", config=FineTuneConfig("dreambooth"), steps=300, lr=2e-4),
    "dreambooth_prior": partial(_finetune, name="dreambooth_prior",
                                config=FineTuneConfig("dreambooth", prior_preservation=True), steps=300, lr=2e-4),
    "dreambooth_lora_prior": partial(
        _finetune, name="dreambooth_lora_prior",
        config=FineTuneConfig("dreambooth_lora", rank=16, alpha=16.0, prior_preservation=True), steps=300, lr=2e-3),
    "controlnet": _controlnet,
}
