"""Our ControlNet as diffusers' ControlNetModel, weight for weight, and as StableDiffusionControlNetPipeline.

    net = to_controlnet_model(pipe.controlnet)                  # a diffusers ControlNetModel
    net.save_pretrained("controlnet_tiny")                      # ControlNetModel.from_pretrained loads it
    d_pipe = controlnet_pipeline(pipe)                          # our UNet, autoencoder, text tower and ControlNet

The ControlNet's copy of the UNet's encoder has the UNet's own layout, so its names are the UNet's
(`to_diffusers.unet_names`, the feed-forward widened to GEGLU the same way). The condition encoder
E has the layout of diffusers' ControlNetConditioningEmbedding (conv_in, a 3x3 and a stride-2 3x3
conv per pair of widths, conv_out), and each zero convolution is one of `controlnet_down_blocks`
(one per skip connection) or the `controlnet_mid_block`: the rest is renaming.
"""

from __future__ import annotations

import torch

from diffusion_notes.nn.unet import UNet
from diffusion_notes.practice.checkpoints import to_diffusers
from diffusion_notes.practice.checkpoints.schedulers import diffusers_scheduler

TOLERANCE = 1e-4  # largest |ours - diffusers'| allowed on [0, 1] pixels


def controlnet_config(net) -> dict:
    """The ControlNetModel config that holds our ControlNet: the UNet's encoder fields and E's widths."""
    unet = to_diffusers.unet_config(UNet(net.config.unet_config()))
    keep = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "block_out_channels",
            "layers_per_block", "downsample_padding", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim",
            "attention_head_dim", "mid_block_type")
    return {**{k: unet[k] for k in keep}, "conditioning_channels": net.config.condition_channels,
            "conditioning_embedding_out_channels": list(net.config.hint_channels), "mid_block_scale_factor": 1}


def controlnet_names(net) -> dict[str, str]:
    """Our ControlNet's parameter names -> ControlNetModel's."""
    encoder = ("time_embed.", "conv_in.", "down.", "mid.")
    names = {k: v for k, v in to_diffusers.unet_names(UNet(net.config.unet_config())).items() if k.startswith(encoder)}
    e = net.cond_embedding
    convs = {"cond_embedding.conv_in": "controlnet_cond_embedding.conv_in",
             "cond_embedding.conv_out": "controlnet_cond_embedding.conv_out",
             **{f"cond_embedding.blocks.{i}": f"controlnet_cond_embedding.blocks.{i}" for i in range(len(e.blocks))},
             **{f"zero_convs.{i}": f"controlnet_down_blocks.{i}" for i in range(len(net.zero_convs))},
             "mid_out": "controlnet_mid_block"}
    names.update({f"{ours}.{p}": f"{theirs}.{p}" for ours, theirs in convs.items() for p in ("weight", "bias")})
    return names


def controlnet_state(net) -> dict[str, torch.Tensor]:
    """Our ControlNet's weights under ControlNetModel's names."""
    names, state = controlnet_names(net), net.state_dict()
    if set(names) != set(state):
        raise to_diffusers.MappingError(f"the ControlNet has parameters with no diffusers name: "
                                        f"{sorted(set(state) - set(names))[:5]}, or names with no parameter: "
                                        f"{sorted(set(names) - set(state))[:5]}")
    return {names[k]: to_diffusers.geglu(names[k], v.detach().float().cpu()) for k, v in state.items()}


def to_controlnet_model(net):
    """A diffusers ControlNetModel (float32, CPU, eval mode) holding our ControlNet's weights."""
    from diffusers import ControlNetModel

    return to_diffusers._load(ControlNetModel(**controlnet_config(net)), controlnet_state(net), "ControlNetModel")


def controlnet_pipeline(pipe, sampler: str = "dpmpp_2m"):
    """Our ControlNetPipeline as diffusers' StableDiffusionControlNetPipeline (in memory, float32, CPU)."""
    from diffusers import StableDiffusionControlNetPipeline

    from diffusion_notes.practice.checkpoints.export import diffusers_pipeline

    parts = diffusers_pipeline(pipe, sampler).components
    return StableDiffusionControlNetPipeline(**parts, controlnet=to_controlnet_model(pipe.controlnet))


@torch.no_grad()
def max_difference(pipe, d_pipe, prompts: list[str], conditions: torch.Tensor, sampler: str = "dpmpp_2m", *,
                   steps: int = 10, guidance_scale: float = 4.0, seed: int = 0, **control) -> float:
    """Largest |ours - diffusers'| over [0, 1] pixels: each prompt with its condition (N, 3, 32, 32) in [0, 1].

    `control`: controlnet_conditioning_scale, control_guidance_start, control_guidance_end, guess_mode,
    passed to both pipelines under the same names.
    """
    worst = 0.0
    d_pipe.scheduler = diffusers_scheduler(sampler, pipe.schedule)
    d_pipe.set_progress_bar_config(disable=True)
    for k, (prompt, condition) in enumerate(zip(prompts, conditions)):
        ours = pipe(prompt, image=condition[None], num_inference_steps=steps, guidance_scale=guidance_scale,
                    sampler=sampler, generator=torch.Generator().manual_seed(seed + k), **control).images
        theirs = d_pipe(prompt, image=condition[None], num_inference_steps=steps, guidance_scale=guidance_scale,
                        generator=torch.Generator().manual_seed(seed + k), output_type="pt", **control).images
        worst = max(worst, float((ours.float().cpu() - theirs.float().cpu()).abs().max()))
    return worst
