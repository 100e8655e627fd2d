"""Part V's recipes (chapter 18): fewer steps from the same latents and captions.

    lcm_unet    the shipped latent UNet distilled into a latent consistency model (whole UNet, EMA target)
    lcm_lora    the same distillation into LoRA factors on the frozen UNet (LCM-LoRA)
    flow_unet   a UNet of the same size trained with the flow-matching loss, started from the shipped one

All three start from the shipped `ldm_unet` (its weights are the teacher, or the starting point),
so each costs minutes on a CPU rather than the hour the base model took.
"""

from __future__ import annotations

from diffusion_notes.fewer_steps.consistency import TARGET_DECAY, consistency_distillation_loss, update_target
from diffusion_notes.fewer_steps.flow import flow_loss
from diffusion_notes.fewer_steps.pipeline import FlowPipeline
from diffusion_notes.fewer_steps.students import ConsistencyStudent, LCMLoRA, LCMLoRAConfig
from diffusion_notes.stable_diffusion.evaluate import evaluate_ldm
from diffusion_notes.stable_diffusion.ldm import ldm_batch, ldm_schedule
from diffusion_notes.training import frozen
from diffusion_notes.training.recipes.base import Recipe, device_of, recipe

_DATA = ("Shapes train split, seed 0, half of the images with two objects, as latents of the shipped vae "
         "and token states of the shipped clip (the ldm_unet's data)")


def _batch(device: str):
    def make_batch(step, batch_size, seed):
        return ldm_batch(step, batch_size, seed, **frozen.stable_diffusion(device))
    return make_batch


def _evaluate_student(sampler: str, steps: int, guidance_scale: float, pipeline=None):
    def evaluate(unet):
        where = device_of(unet)
        model = getattr(unet, "unet", unet)
        return evaluate_ldm(model, **frozen.stable_diffusion(where), classifier=frozen.classifier(where),
                            guidance_scale=guidance_scale, steps=steps, sampler=sampler, pipeline=pipeline)
    return evaluate


def _distillation_loss(target_of):
    """L_CD for a recipe: the student is the model, `target_of(model)` its target, the shipped ldm_unet the teacher."""

    def loss(model, batch, generator):
        where = device_of(model)
        return consistency_distillation_loss(model, target_of(model), frozen.ldm_unet(where), batch["z0"],
                                             batch["context"], frozen.null_context(where), ldm_schedule(), generator)
    return loss


def _lcm_unet(device: str) -> Recipe:
    def prepare(model, seed):
        model.start_from(frozen.ldm_unet(device_of(model)))  # theta = theta^- = the teacher

    return recipe(
        "lcm_unet",
        build=ConsistencyStudent,
        prepare=prepare,
        make_batch=_batch(device),
        loss=_distillation_loss(lambda model: model.target),  # the EMA copy
        steps=2000,
        batch_size=32,
        lr=1e-4,
        warmup_steps=50,
        after_step=lambda model: update_target(model.target, model, TARGET_DECAY),
        trainable_state=lambda model: model.student_state(),
        evaluate=_evaluate_student("lcm", 4, 1.0),
        dataset=_DATA,
        description="latent consistency distillation of the shipped ldm_unet, guided at 4, skip 20 (DDIM's "
                    "50-step grid), EMA target 0.95",
    )


def _lcm_lora(device: str) -> Recipe:
    def build(config):
        return LCMLoRA(config, frozen.ldm_unet(device))

    return recipe(
        "lcm_lora",
        config=LCMLoRAConfig(),
        build=build,
        make_batch=_batch(device),
        loss=_distillation_loss(lambda model: model),  # itself, without gradient (LCM-LoRA's script)
        steps=2000,
        batch_size=32,
        lr=1e-3,
        warmup_steps=50,
        trainable_state=lambda model: model.lora_tensors(),
        evaluate=_evaluate_student("lcm", 4, 1.0),
        dataset=_DATA,
        description="LCM-LoRA: the same distillation into rank-16 LoRA factors on the frozen ldm_unet's attention "
                    "and time-embedding projections; the target is the LoRA network itself, without gradient",
    )


def _flow_unet(device: str) -> Recipe:
    def prepare(model, seed):
        model.load_state_dict(frozen.ldm_unet(device_of(model)).state_dict())

    def loss(model, batch, generator):
        return flow_loss(model, batch, generator, null=frozen.null_context(device_of(model)))

    return recipe(
        "flow_unet",
        prepare=prepare,
        make_batch=_batch(device),
        loss=loss,
        steps=3000,
        batch_size=64,
        lr=5e-4,
        warmup_steps=100,
        ema_decay=0.995,
        evaluate=_evaluate_student("euler", 4, 4.0, pipeline=FlowPipeline),
        dataset=_DATA,
        description="rectified flow: the ldm_unet's architecture trained on the straight path's velocity x_1 - x_0 "
                    "(sigma ~ U(0, 1), t = 1000 sigma), started from the ldm_unet's weights, captions dropped 10%",
    )


RECIPES = {  # name -> (device -> Recipe)
    "lcm_unet": _lcm_unet,
    "lcm_lora": _lcm_lora,
    "flow_unet": _flow_unet,
}
