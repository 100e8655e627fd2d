"""diffusers' tensor names -> the names inside an original Stable Diffusion v1 checkpoint (one file, three models).

The web UIs load SD v1 as one file laid out as CompVis' training code left it:

    model.diffusion_model.   the UNet  (input_blocks, middle_block, output_blocks, out)
    first_stage_model.       the autoencoder  (encoder.down.i.block.j, decoder.up.i ..., quant_conv)
    cond_stage_model.transformer.text_model.   the CLIP text encoder, in transformers' names

diffusers splits the same tensors into three folders under other names. These functions
rename one way (diffusers -> single file); diffusers' `from_single_file` renames back.

The UNet's numbering: `input_blocks.0` is conv_in; then each level has L blocks of
[ResBlock, SpatialTransformer] and, except the last, one block holding the downsampling
conv (`.0.op`). `output_blocks` has L + 1 blocks per level, the last of each (except the
last level's) ending in the upsampling conv (`.1.conv`, or `.2.conv` after an attention).
The decoder's `up.i` counts from the full-resolution end (diffusers' up_blocks count from the latent).
"""

from __future__ import annotations

import re

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str) -> str:
    for ours, theirs in _RESNET:
        if rest.startswith(ours + "."):
            return theirs + rest[len(ours):]
    raise ValueError(f"not a ResnetBlock2D tensor: {rest}")


def unet_key(name: str, config: dict) -> str:
    """One UNet2DConditionModel tensor name -> its name in an SD v1 checkpoint (without the prefix)."""
    L = config["layers_per_block"]
    module, _, param = name.rpartition(".")
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{param}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        b, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = 1 + b * (L + 1) + layer
        return f"input_blocks.{i}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", name)
    if m:
        return f"input_blocks.{1 + int(m[1]) * (L + 1) + L}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * j}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        b, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = b * (L + 1) + layer
        return f"output_blocks.{i}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", name)
    if m:
        b = int(m[1])
        after = 2 if config["up_block_types"][b].startswith("CrossAttn") else 1
        return f"output_blocks.{b * (L + 1) + L}.{after}.conv.{m[2]}"
    raise ValueError(f"no SD v1 name for the UNet tensor {name}")


def vae_key(name: str, config: dict) -> str:
    """One AutoencoderKL tensor name -> its SD v1 name (without the prefix)."""
    n = len(config["block_out_channels"])
    name = name.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    name = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", name)
    name = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", name)
    name = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block.", name)
    name = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample.", name)
    return name


def single_file_state(unet_state: dict, unet_config: dict, vae_state: dict, vae_config: dict,
                      text_state: dict) -> dict:
    """The three diffusers state dicts as one SD v1 checkpoint's tensors (the text encoder's under transformers' names)."""
    out = {UNET_PREFIX + unet_key(k, unet_config): v for k, v in unet_state.items()}
    out.update({VAE_PREFIX + vae_key(k, vae_config): v for k, v in vae_state.items()})
    out.update({TEXT_PREFIX + k.removeprefix("text_model."): v for k, v in text_state.items()
                if not k.endswith("position_ids")})
    return out
