"""Our ControlNet as diffusers' ControlNetModel (Chapter 17): the condition encoder has diffusers' layout, the
export is a renaming, and diffusers' StableDiffusionControlNetPipeline draws our pictures."""

import pytest
import torch

from diffusion_notes.data.shapes import sample_attributes
from diffusion_notes.practice.checkpoints import to_diffusers
from diffusion_notes.practice.checkpoints.controlnet_diffusers import (
    TOLERANCE,
    controlnet_config,
    controlnet_pipeline,
    controlnet_state,
    max_difference,
    to_controlnet_model,
)
from diffusion_notes.practice.controlnet.conditions import make_condition
from diffusion_notes.practice.controlnet.model import ConditionEmbedding, ControlNet, controlled_eps
from diffusion_notes.practice.controlnet.pipeline import ControlNetPipeline

diffusers = pytest.importorskip("diffusers")


def moved(net: ControlNet, seed: int = 0) -> ControlNet:
    """`net` with every zero convolution moved off zero, as training moves them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [*net.zero_convs, net.mid_out, net.cond_embedding.conv_out]:
            conv.weight.copy_(0.05 * torch.randn(conv.weight.shape, generator=g))
            conv.bias.copy_(0.05 * torch.randn(conv.bias.shape, generator=g))
    return net.eval()


def test_the_condition_encoder_has_diffusers_names_shapes_and_output():
    """diffusers.models.controlnets.controlnet.ControlNetConditioningEmbedding: conv_in, blocks (a 3x3 conv and a
    stride-2 3x3 conv per pair of widths), conv_out, SiLU after every conv but the last."""
    from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

    torch.manual_seed(0)
    ours = ConditionEmbedding(3, (16, 32, 64), 64)
    theirs = ControlNetConditioningEmbedding(64, 3, (16, 32, 64))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    with torch.no_grad():
        ours.conv_out.weight.normal_(0, 0.1)
    theirs.load_state_dict(ours.state_dict())
    c = torch.rand(2, 3, 32, 32)
    out = ours(c)
    assert out.shape == (2, 64, 8, 8) and torch.allclose(out, theirs(c), atol=1e-6) and out.abs().max() > 0


@pytest.fixture(scope="module")
def exported(pipe):
    net = moved(ControlNet.from_unet(pipe.unet))
    return net, to_controlnet_model(net), to_diffusers.diffusers_unet(pipe.unet)


def test_controlnet_model_gives_our_residuals_and_eps(pipe, exported):
    net, d_net, d_unet = exported
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([999, 500, 10])
    context = pipe.encode_prompt(["a red star", "", "a small blue circle on the left"])  # (3, 77, 128)
    condition = make_condition([sample_attributes(i, seed=5) for i in range(3)], ["outline", "mask", "canny"])
    with torch.no_grad():
        down, mid = net(x, t, context, condition)
        d_down, d_mid = d_net(x, t, context, condition, return_dict=False)
        assert len(d_down) == len(down) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(down, d_down))
        assert torch.allclose(mid, d_mid, atol=1e-5) and mid.abs().max() > 1e-3
        ours = controlled_eps(pipe.unet, net, x, t, context, condition)
        theirs = d_unet(x, t, context, down_block_additional_residuals=d_down,
                        mid_block_additional_residual=d_mid).sample
    assert (ours - theirs).abs().max() < 1e-4 and (ours - pipe.unet(x, t, context)).abs().max() > 1e-3


def test_diffusers_controlnet_pipeline_draws_our_pictures(pipe, exported):
    net = exported[0]
    ours = ControlNetPipeline(pipe.unet, pipe.vae, pipe.clip, pipe.scale_factor, net)
    conditions = make_condition([sample_attributes(i, seed=6) for i in range(2)], "outline")
    prompts = ["a large red star", "a small green square"]
    d_pipe = controlnet_pipeline(ours)
    assert max_difference(ours, d_pipe, prompts, conditions, steps=4) < TOLERANCE
    assert max_difference(ours, d_pipe, prompts[:1], conditions[:1], steps=4, controlnet_conditioning_scale=0.5,
                          control_guidance_start=0.25) < TOLERANCE


def test_config_and_every_name_map(exported):
    net = exported[0]
    config = controlnet_config(net)
    assert config["conditioning_embedding_out_channels"] == [16, 32, 64] and config["conditioning_channels"] == 3
    state = controlnet_state(net)
    assert len(state) == len(net.state_dict())
    assert {k for k in state if k.startswith("controlnet_down_blocks.")} == {
        f"controlnet_down_blocks.{i}.{p}" for i in range(len(net.zero_convs)) for p in ("weight", "bias")}
    with pytest.raises(to_diffusers.MappingError, match="no diffusers name"):
        net.extra = torch.nn.Linear(1, 1)
        try:
            controlnet_state(net)
        finally:
            del net.extra
