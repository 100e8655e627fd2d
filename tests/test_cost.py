"""cost.py: the latent-against-pixel comparison measures the same network on both inputs."""

import dataclasses

import pytest

from diffusion_notes.nn.unet import UNet, UNetConfig
from diffusion_notes.stable_diffusion.cost import latent_vs_pixel_cost, n_parameters, pixel_config, unet_flops

TINY = UNetConfig(channels=(16, 32), heads=2)


def test_pixel_config_changes_only_the_input_side():
    pixel = pixel_config(TINY)
    changed = {f.name for f in dataclasses.fields(TINY) if getattr(TINY, f.name) != getattr(pixel, f.name)}
    assert changed == {"in_channels", "out_channels", "sample_size"}
    assert (pixel.in_channels, pixel.out_channels, pixel.sample_size) == (3, 3, 32)
    # Same widths: only conv_in / conv_out differ by a channel, so the counts are within 1%.
    assert abs(n_parameters(UNet(pixel)) / n_parameters(UNet(TINY)) - 1) < 0.01


def test_flops_scale_with_the_number_of_positions():
    latent, pixel = unet_flops(TINY), unet_flops(pixel_config(TINY))
    # 16x the positions: the 3x3 convs inside cost 16x; conv_in/conv_out change channels, so allow a little.
    assert 15.0 < pixel["convolution"] / latent["convolution"] < 16.5
    # Self-attention products grow with the square of the positions: far more than 16x.
    assert pixel["attention"] / latent["attention"] > 100
    assert latent["total"] >= latent["convolution"] + latent["linear"] + latent["attention"] - 1


def test_one_attention_layer_matches_the_closed_form():
    # Q K^T and weights V of one cross-attention over L positions and M tokens: 2 * (2 B L M D) flops.
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diffusion_notes.nn.attention import CrossAttention

    B, L, M, D = 2, 64, 77, 32
    layer = CrossAttention(D, 128, heads=4)
    x, ctx = torch.randn(B, L, D), torch.randn(B, M, 128)
    with FlopCounterMode(display=False) as counter:
        layer(x, ctx, return_attention=True)
    counts = {str(op).split(".")[1]: n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["bmm"] == 4 * B * L * M * D


def test_timing_runs_on_a_tiny_config_and_ratios_are_consistent(one_thread):
    out = latent_vs_pixel_cost(TINY, batch_size=1, repeats=1, warmup=0)
    times = [v for k, v in out.items() if k.endswith("_s")]
    assert times and all(v > 0 for v in times)
    ratio_keys = [k for k in out if "ratio" in k]
    assert ratio_keys and all(out[k] > 0 for k in ratio_keys)


def test_bad_arguments():
    with pytest.raises(ValueError):
        latent_vs_pixel_cost(TINY, repeats=0)
