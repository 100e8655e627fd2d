"""Our UNet, autoencoder and CLIP text tower as diffusers' and transformers' own classes, weight for weight.

Each of our blocks has the layout of its diffusers counterpart (tests/test_unet.py,
tests/test_vae.py), so most of the export is renaming. Three places need more than a
new name, and each is exact (the same function, not an approximation):

* The UNet's feed-forward. Ours is Linear-GELU-Linear; diffusers' SD UNet builds GEGLU,
  h * GELU(g) with [h, g] = W x + b. Setting the h half of W to 0 and its bias to 1 gives
  h = 1, so GEGLU computes GELU(W_g x + b_g): our MLP, in a layer twice as wide.
* The autoencoder's GroupNorms. Ours takes min(32, C) groups (a 16-channel layer
  normalises each channel alone); diffusers' AutoencoderKL uses 32 groups everywhere,
  which 16 channels cannot hold. A 16-channel layer is exported 32 wide with every channel
  written twice: a group of two equal copies has the mean and variance of the one channel.
  The layer after it reads the first copy and gives the second a weight of 0.
* Block counts. diffusers' decoder has one ResBlock per level more than its encoder, and
  its middle block two ResBlocks where ours has one. The extra blocks are identities:
  a ResBlock whose last convolution is zero adds nothing to its skip path.

What does not map: the encoder's stride-2 convolutions. Ours pad one pixel on every
side; diffusers' encoder pads only the right and bottom edges, so its 3x3 windows sit one
pixel further right and down. No choice of weights moves a window, so the exported
encoder (used by diffusers' image-to-image) differs from ours; `check_export` measures
by how much. Text to image never runs the encoder and is exact.

Notation: C channels; k the copies of each channel (1, or 32 / C for C < 32).
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion_notes.data.tokenizer import END_ID, PAD_ID, START_ID, to_compact
from diffusion_notes.nn.attention import SpatialTransformer
from diffusion_notes.nn.resnet import ResBlock

OPEN_CLIP_VOCAB_SIZE = 49408
VAE_GROUPS = 32  # diffusers' AutoencoderKL: one GroupNorm group count for every layer (SD's 32)


class MappingError(ValueError):
    """One of our models has a layout that diffusers' classes cannot hold."""


# --------------------------------------------------------------------------------------------
# The UNet


def unet_config(unet) -> dict:
    """The UNet2DConditionModel config that holds our UNet (SD v1's block types, our widths)."""
    c = unet.config
    if c.scale_shift_norm or not c.mid_attention or not any(c.attention):
        raise MappingError("only a text-conditional UNet with additive timestep embeddings and a middle "
                           "attention block maps to diffusers' UNet2DConditionModel (Stable Diffusion's layout)")
    for name, module in unet.named_modules():
        if isinstance(module, nn.GroupNorm) and module.num_groups != c.norm_groups:
            raise MappingError(f"{name} normalises {module.num_channels} channels in {module.num_groups} groups; "
                               f"diffusers' UNet uses norm_num_groups={c.norm_groups} in every layer")
    return dict(
        sample_size=c.sample_size, in_channels=c.in_channels, out_channels=c.out_channels,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in c.attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(c.attention)],
        mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=list(c.channels),
        layers_per_block=c.layers_per_block, cross_attention_dim=c.context_dim,
        attention_head_dim=c.heads,  # in SD v1's configs this field holds the number of heads
        norm_num_groups=c.norm_groups, norm_eps=1e-6, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
        downsample_padding=1, center_input_sample=False,
    )


def _resblock(ours: ResBlock, prefix: str) -> dict[str, str]:
    names = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
             "skip": "conv_shortcut"}
    return {f"{k}.{p}": f"{prefix}.{v}.{p}" for k, v in names.items()
            for p in ("weight", "bias") if getattr(ours, k) is not None and hasattr(getattr(ours, k), p)}


def _transformer(prefix: str) -> dict[str, str]:
    """Our SpatialTransformer's parameters -> diffusers' Transformer2DModel's (the MLP's first layer aside)."""
    block = f"{prefix}.transformer_blocks.0"
    names = {"norm": f"{prefix}.norm", "proj_in": f"{prefix}.proj_in", "proj_out": f"{prefix}.proj_out",
             "norm1": f"{block}.norm1", "norm2": f"{block}.norm2", "norm3": f"{block}.norm3",
             "attn1.to_out": f"{block}.attn1.to_out.0", "attn2.to_out": f"{block}.attn2.to_out.0",
             "mlp.2": f"{block}.ff.net.2", "mlp.0": f"{block}.ff.net.0.proj"}
    out = {f"{k}.{p}": f"{v}.{p}" for k, v in names.items() for p in ("weight", "bias")}
    for attn in ("attn1", "attn2"):
        out.update({f"{attn}.{q}.weight": f"{block}.{attn}.{q}.weight" for q in ("to_q", "to_k", "to_v")})
    return out


def unet_names(unet) -> dict[str, str]:
    """Our UNet's parameter names -> UNet2DConditionModel's, in our order (the MLP rows are widened by `geglu`)."""
    c = unet.config
    names = {"time_embed.0.weight": "time_embedding.linear_1.weight", "time_embed.0.bias": "time_embedding.linear_1.bias",
             "time_embed.2.weight": "time_embedding.linear_2.weight", "time_embed.2.bias": "time_embedding.linear_2.bias",
             "conv_in.weight": "conv_in.weight", "conv_in.bias": "conv_in.bias"}

    def add(ours_prefix, module, theirs_prefix):
        sub = _resblock(module, theirs_prefix) if isinstance(module, ResBlock) else \
            _transformer(theirs_prefix) if isinstance(module, SpatialTransformer) else \
            {"conv.weight": f"{theirs_prefix}.conv.weight", "conv.bias": f"{theirs_prefix}.conv.bias"}
        names.update({f"{ours_prefix}.{k}": v for k, v in sub.items()})

    i = 0
    for level in range(len(c.channels)):
        for layer in range(c.layers_per_block):
            for j, module in enumerate(unet.down[i]):
                kind = "resnets" if isinstance(module, ResBlock) else "attentions"
                add(f"down.{i}.{j}", module, f"down_blocks.{level}.{kind}.{layer}")
            i += 1
        if level < len(c.channels) - 1:
            add(f"down.{i}.0", unet.down[i][0], f"down_blocks.{level}.downsamplers.0")
            i += 1
    for j, module in enumerate(unet.mid):
        add(f"mid.{j}", module, "mid_block.attentions.0" if j == 1 else f"mid_block.resnets.{j // 2}")
    i = 0
    for block in range(len(c.channels)):
        for layer in range(c.layers_per_block + 1):
            for j, module in enumerate(unet.up[i]):
                kind = "resnets" if isinstance(module, ResBlock) else "attentions"
                add(f"up.{i}.{j}", module, f"up_blocks.{block}.{kind}.{layer}")
            i += 1
        if block < len(c.channels) - 1:
            add(f"up.{i}.0", unet.up[i][0], f"up_blocks.{block}.upsamplers.0")
            i += 1
    names.update({"norm_out.weight": "conv_norm_out.weight", "norm_out.bias": "conv_norm_out.bias",
                  "conv_out.weight": "conv_out.weight", "conv_out.bias": "conv_out.bias"})
    return names


def geglu(name: str, value: torch.Tensor) -> torch.Tensor:
    """Our MLP's first layer as GEGLU's [h; g] projection: h = 0 x + 1, g = ours. Other tensors unchanged."""
    if not name.endswith("ff.net.0.proj.weight") and not name.endswith("ff.net.0.proj.bias"):
        return value
    h = torch.zeros_like(value) if value.ndim == 2 else torch.ones_like(value)  # (4C, C) zeros, or (4C,) ones
    return torch.cat([h, value], dim=0)  # (8C, C) or (8C,)


def unet_state(unet) -> dict[str, torch.Tensor]:
    """Our UNet's weights under UNet2DConditionModel's names."""
    names = unet_names(unet)
    state = unet.state_dict()
    if set(names) != set(state):
        missing = sorted(set(state) - set(names))[:5]
        raise MappingError(f"the UNet has parameters with no diffusers name: {missing}")
    return {names[k]: geglu(names[k], v.detach().float().cpu()) for k, v in state.items()}


# --------------------------------------------------------------------------------------------
# The autoencoder


def copies(vae) -> int:
    """k: how many times every channel of the autoencoder is written so that 32 groups normalise as ours do.

    A C-channel GroupNorm of ours has min(32, C) groups. Written k times, channel by channel,
    C channels become kC in 32 groups: for C < 32 each group holds copies of one channel
    (k a multiple of 32 / C), for C a multiple of 32 each holds the copies of our group's
    C / 32 channels. One k for the whole model keeps two layers of different widths different,
    so diffusers builds a 1x1 skip convolution exactly where ours has one.
    """
    k = 1
    for width in vae.config.channels:
        if width % VAE_GROUPS and VAE_GROUPS % width:
            raise MappingError(f"a {width}-channel level cannot be normalised as ours in {VAE_GROUPS} groups")
        if width < VAE_GROUPS:
            k = max(k, VAE_GROUPS // width)
    return k


def widen(value: torch.Tensor, k_out: int, k_in: int = 1) -> torch.Tensor:
    """A conv weight (C_out, C_in, ...), a bias or a norm's (C,) for inputs and outputs written k times.

    Each output channel is repeated k_out times; an input read k_in times takes the weight on its first copy.
    """
    value = value.repeat_interleave(k_out, dim=0)  # (k_out C_out, ...)
    if value.ndim >= 2 and k_in > 1:
        wide = torch.zeros(value.shape[0], value.shape[1] * k_in, *value.shape[2:], dtype=value.dtype)
        wide[:, ::k_in] = value  # (k_out C_out, k_in C_in, ...)
        value = wide
    return value


def vae_widths(vae) -> list[int]:
    """diffusers' block_out_channels: our widths, each times k."""
    return [w * copies(vae) for w in vae.config.channels]


def vae_config(vae, scale_factor: float) -> dict:
    c = vae.config
    n = len(c.channels)
    return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
                up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=vae_widths(vae),
                layers_per_block=c.blocks_per_level, act_fn="silu", latent_channels=c.latent_channels,
                norm_num_groups=VAE_GROUPS, sample_size=32, scaling_factor=float(scale_factor),
                mid_block_add_attention=False, use_quant_conv=True, use_post_quant_conv=True)


def _conv(state, ours, theirs, out, k_out, k_in):
    out[f"{theirs}.weight"] = widen(state[f"{ours}.weight"], k_out, k_in)
    out[f"{theirs}.bias"] = widen(state[f"{ours}.bias"], k_out)


def _vae_resblock(state, ours, block: ResBlock, theirs, out, k):
    for name, theirs_name, k_in in (("norm1", "norm1", 1), ("conv1", "conv1", k), ("norm2", "norm2", 1),
                                    ("conv2", "conv2", k)):
        _conv(state, f"{ours}.{name}", f"{theirs}.{theirs_name}", out, k, k_in)
    if isinstance(block.skip, nn.Conv2d):
        _conv(state, f"{ours}.skip", f"{theirs}.conv_shortcut", out, k, k)


def _identity_resblock(channels: int, theirs: str, out: dict) -> None:
    """A ResnetBlock2D that returns its input: its last convolution is zero (norms 1 and 0, first conv zero)."""
    for norm in ("norm1", "norm2"):
        out[f"{theirs}.{norm}.weight"], out[f"{theirs}.{norm}.bias"] = torch.ones(channels), torch.zeros(channels)
    for conv in ("conv1", "conv2"):
        out[f"{theirs}.{conv}.weight"] = torch.zeros(channels, channels, 3, 3)
        out[f"{theirs}.{conv}.bias"] = torch.zeros(channels)


def _identity_conv(channels: int, theirs: str, out: dict) -> None:
    out[f"{theirs}.weight"] = torch.eye(channels)[:, :, None, None]  # (C, C, 1, 1)
    out[f"{theirs}.bias"] = torch.zeros(channels)


def vae_state(vae) -> dict[str, torch.Tensor]:
    """Our autoencoder's weights under diffusers' AutoencoderKL names, widened and padded as the module says."""
    state = {k: v.detach().float().cpu() for k, v in vae.state_dict().items()}
    c, out, k = vae.config, {}, copies(vae)
    L, n = c.blocks_per_level, len(c.channels)
    wide = vae_widths(vae)
    # encoder: conv_in, [L ResBlocks (+ Downsample)] per level, mid ResBlock (+ identity), norm, conv_out
    enc = vae.encoder
    _conv(state, "encoder.conv_in", "encoder.conv_in", out, k, 1)
    i = 0
    for level in range(n):
        for layer in range(L):
            _vae_resblock(state, f"encoder.blocks.{i}", enc.blocks[i], f"encoder.down_blocks.{level}.resnets.{layer}", out, k)
            i += 1
        if level < n - 1:
            _conv(state, f"encoder.blocks.{i}.conv", f"encoder.down_blocks.{level}.downsamplers.0.conv", out, k, k)
            i += 1
    _vae_resblock(state, "encoder.mid", enc.mid, "encoder.mid_block.resnets.0", out, k)
    _identity_resblock(wide[-1], "encoder.mid_block.resnets.1", out)
    _conv(state, "encoder.norm_out", "encoder.conv_norm_out", out, k, 1)
    _conv(state, "encoder.conv_out", "encoder.conv_out", out, 1, k)
    _identity_conv(2 * c.latent_channels, "quant_conv", out)
    _identity_conv(c.latent_channels, "post_quant_conv", out)
    # decoder: conv_in, mid ResBlock (+ identity), [L ResBlocks + identity (+ Upsample)] per level, norm, conv_out
    dec = vae.decoder
    _conv(state, "decoder.conv_in", "decoder.conv_in", out, k, 1)
    _vae_resblock(state, "decoder.mid", dec.mid, "decoder.mid_block.resnets.0", out, k)
    _identity_resblock(wide[-1], "decoder.mid_block.resnets.1", out)
    i = 0
    for block in range(n):
        for layer in range(L):
            _vae_resblock(state, f"decoder.blocks.{i}", dec.blocks[i], f"decoder.up_blocks.{block}.resnets.{layer}", out, k)
            i += 1
        _identity_resblock(wide[::-1][block], f"decoder.up_blocks.{block}.resnets.{L}", out)
        if block < n - 1:
            _conv(state, f"decoder.blocks.{i}.conv", f"decoder.up_blocks.{block}.upsamplers.0.conv", out, k, k)
            i += 1
    _conv(state, "decoder.norm_out", "decoder.conv_norm_out", out, k, 1)
    _conv(state, "decoder.conv_out", "decoder.conv_out", out, 1, k)
    return out


# --------------------------------------------------------------------------------------------
# The text encoder


def text_config(clip) -> dict:
    """transformers' CLIPTextConfig for our text tower (exact GELU, not CLIP's quick_gelu)."""
    c = clip.config
    block = clip.text.transformer.blocks[0]
    return dict(vocab_size=OPEN_CLIP_VOCAB_SIZE, hidden_size=c.text_width,
                intermediate_size=block.mlp[0].out_features, num_hidden_layers=c.text_layers,
                num_attention_heads=c.text_heads, max_position_embeddings=clip.text.positional_embedding.shape[0],
                hidden_act="gelu", layer_norm_eps=block.ln_1.eps, projection_dim=c.embed_dim,
                pad_token_id=PAD_ID, bos_token_id=START_ID, eos_token_id=END_ID)


def text_state(clip) -> dict[str, torch.Tensor]:
    """Our text tower's weights under CLIPTextModel's names (transformers >= 5.6: no `text_model.` prefix).

    The embedding table grows from our compact rows to all 49,408 open_clip ids: every id
    a caption never uses gets the <unk> row, exactly what our `to_compact` look-up reads.
    """
    text = clip.text
    ids = torch.arange(OPEN_CLIP_VOCAB_SIZE)
    rows = to_compact(ids, text.vocabulary.cpu())  # (49408,) row of each id in our table
    out = {"embeddings.token_embedding.weight": text.token_embedding.weight.detach().cpu()[rows],  # (49408, D)
           "embeddings.position_embedding.weight": text.positional_embedding.detach().cpu()}  # (77, D)
    D = clip.config.text_width
    for i, block in enumerate(text.transformer.blocks):
        p = f"encoder.layers.{i}"
        w, b = block.attn.in_proj.weight.detach().cpu(), block.attn.in_proj.bias.detach().cpu()
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"{p}.self_attn.{name}.weight"], out[f"{p}.self_attn.{name}.bias"] = w[j * D:(j + 1) * D], b[j * D:(j + 1) * D]
        pairs = {"self_attn.out_proj": block.attn.out_proj, "layer_norm1": block.ln_1, "layer_norm2": block.ln_2,
                 "mlp.fc1": block.mlp[0], "mlp.fc2": block.mlp[2]}
        for name, module in pairs.items():
            out[f"{p}.{name}.weight"], out[f"{p}.{name}.bias"] = module.weight.detach().cpu(), module.bias.detach().cpu()
    out["final_layer_norm.weight"] = text.ln_final.weight.detach().cpu()
    out["final_layer_norm.bias"] = text.ln_final.bias.detach().cpu()
    return {k: v.float().contiguous() for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# Building the modules


def _load(module, state: dict, what: str):
    theirs = module.state_dict()
    missing = sorted(set(theirs) - set(state) - {k for k in theirs if k.endswith("position_ids")})
    unexpected = sorted(set(state) - set(theirs))
    if missing or unexpected:
        raise MappingError(f"{what}: no value for {missing[:5]}, no place for {unexpected[:5]}")
    bad = [k for k in state if state[k].shape != theirs[k].shape]
    if bad:
        raise MappingError(f"{what}: shapes differ at {bad[:3]}: {[(tuple(state[k].shape), tuple(theirs[k].shape)) for k in bad[:3]]}")
    module.load_state_dict(state, strict=False)
    return module.eval()


def diffusers_unet(unet):
    from diffusers import UNet2DConditionModel

    return _load(UNet2DConditionModel(**unet_config(unet)), unet_state(unet), "UNet2DConditionModel")


def diffusers_vae(vae, scale_factor: float):
    from diffusers import AutoencoderKL

    return _load(AutoencoderKL(**vae_config(vae, scale_factor)), vae_state(vae), "AutoencoderKL")


def transformers_text_encoder(clip):
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig(**text_config(clip)))
    state = text_state(clip)
    if any(k.startswith("text_model.") for k in model.state_dict()):  # transformers < 5.6 nests the tower
        state = {f"text_model.{k}": v for k, v in state.items()}
    return _load(model, state, "CLIPTextModel")
