"""ControlNet (Chapter 17): the zero start, the copied encoder, the residual wiring, conditions, the pipeline's checks."""

import pytest
import torch

from diffusion_notes.data.shapes import render, sample_attributes
from diffusion_notes.nn.unet import UNet, UNetConfig
from diffusion_notes.practice.controlnet.conditions import (
    condition_region,
    controlnet_loss,
    drawn_region,
    iou,
    make_condition,
    training_items,
)
from diffusion_notes.practice.controlnet.model import (
    ControlNet,
    config_for,
    controlled_eps,
    controlnet_residuals,
    guess_mode_scales,
)
from diffusion_notes.practice.controlnet.pipeline import ControlNetPipeline
from diffusion_notes.practice.controlnet.units import ControlledUNet, ControlUnit, check_control, control_keep

TINY = UNetConfig(channels=(32, 64), context_dim=16, heads=2, norm_groups=8)


def tiny(seed=0):
    torch.manual_seed(seed)
    unet = UNet(TINY).eval().requires_grad_(False)
    return unet, ControlNet.from_unet(unet, config_for(TINY, hint_channels=(8, 8, 16))).eval()


def inputs(B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    attributes = [sample_attributes(i, seed=seed) for i in range(B)]
    return (torch.randn(B, 4, 8, 8, generator=g), torch.randint(0, 1000, (B,), generator=g),
            torch.randn(B, 77, 16, generator=g), make_condition(attributes, "outline"))


def test_controlled_unet_equals_the_base_unet_at_initialisation():
    unet, net = tiny()
    x, t, context, condition = inputs()
    with torch.no_grad():
        base = unet(x, t, context)
        for guess in (False, True):
            assert torch.equal(controlled_eps(unet, net, x, t, context, condition, scale=1.7, guess_mode=guess), base)


def test_residual_wiring_without_residuals_is_the_unet_and_nonzero_convs_change_it():
    unet, net = tiny()
    x, t, context, condition = inputs()
    with torch.no_grad():
        down, mid = net(x, t, context, condition)  # all zero at the start
        assert torch.equal(unet(x, t, context, down_residuals=down, mid_residual=mid), unet(x, t, context))
        for conv in [*net.zero_convs, net.mid_out, net.cond_embedding.conv_out]:
            conv.weight.normal_(0, 0.1)
        controlled = controlled_eps(unet, net, x, t, context, condition)
        assert (controlled - unet(x, t, context)).abs().max() > 1e-3
        assert torch.equal(controlled_eps(unet, net, x, t, context, condition, scale=0.0), unet(x, t, context))
        other = make_condition([sample_attributes(i, seed=7) for i in range(3)], "mask")
        assert not torch.equal(controlled_eps(unet, net, x, t, context, other), controlled)


def moved(net, seed):
    """`net` with its zero convolutions moved off zero, as training moves them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [*net.zero_convs, net.mid_out, net.cond_embedding.conv_out]:
            conv.weight.copy_(0.1 * torch.randn(conv.weight.shape, generator=g))
    return net


def test_one_wrapper_sums_its_units_residuals_inside_their_windows():
    """Two units, each its weight times its ControlNet's residuals, added up (diffusers' MultiControlNet), each
    only at the steps its window keeps: over 4 steps, unit a acts at steps 0-1, unit b at steps 1-3."""
    unet, net_a = tiny()
    net_a, net_b = moved(net_a, 1), moved(tiny()[1], 2)
    x, t, context, condition = inputs(B=3)
    a = ControlUnit(condition[:1], "a", 0.7, 0.0, 0.5, net=net_a)
    b = ControlUnit(condition[1:2], "b", 1.3, 0.25, 1.0, net=net_b)
    timesteps = [900, 600, 300, 50]
    wrapper = ControlledUNet(unet, [a, b], timesteps)

    def residuals(unit, t):
        return controlnet_residuals(unit.net, x, t, context, unit.image, unit.weight)

    with torch.no_grad():
        for i, step in enumerate(timesteps):
            t = torch.full((3,), step)
            acting = [u for u, window in ((a, (0, 1)), (b, (1, 2, 3))) if i in window]
            parts = [residuals(u, t) for u in acting]
            down = [sum(rs) for rs in zip(*(d for d, _ in parts))]
            expected = unet(x, t, context, down_residuals=down, mid_residual=sum(m for _, m in parts))
            assert torch.allclose(wrapper(x, t, context), expected, atol=1e-6), i
        t = torch.full((3,), 600)
        b_alone = ControlledUNet(unet, [b], timesteps)(x, t, context)
        assert not torch.allclose(wrapper(x, t, context), b_alone, atol=1e-4)
        # a weight of 0 is no control; row weights (the pipeline's dict) scale each row's residuals
        silent = ControlledUNet(unet, [ControlUnit(condition[:1], "a", 0.0, net=net_a)], timesteps)
        assert torch.equal(silent(x, t, context), unet(x, t, context))
        rows = ControlledUNet(unet, [a], timesteps)(x, t, {"context": context, "weight": torch.tensor([1.0, 0.0, 1.0])})
        steered = ControlledUNet(unet, [a], timesteps)(x, t, context)
        assert torch.equal(rows[1], unet(x, t, context)[1]) and torch.allclose(rows[[0, 2]], steered[[0, 2]], atol=1e-6)


def test_the_copy_starts_from_the_unets_encoder_and_the_convolutions_at_zero():
    unet, net = tiny()
    state = unet.state_dict()
    for key, value in net.state_dict().items():
        if key.startswith(("time_embed.", "conv_in.", "down.", "mid.")):
            assert torch.equal(value, state[key]), key
    zero = [*net.zero_convs, net.mid_out, net.cond_embedding.conv_out]
    assert len(net.zero_convs) == 4 and all(float(p.detach().abs().max()) == 0 for m in zero for p in m.parameters())
    with pytest.raises(ValueError, match="does not copy"):
        ControlNet.from_unet(unet, config_for(UNetConfig()))


def test_gradients_reach_the_controlnet_only():
    unet, net = tiny()
    x, _, context, condition = inputs(B=4)
    batch = {"z0": x, "context": context, "condition": condition}
    loss = controlnet_loss(net.train(), batch, torch.Generator().manual_seed(0), unet=unet, null=torch.zeros(77, 16))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in unet.parameters())
    assert float(net.zero_convs[0].weight.grad.abs().max()) > 0 and float(net.mid_out.weight.grad.abs().max()) > 0


def test_conditions_follow_the_renderer():
    attributes = [sample_attributes(i, seed=3, p_two_objects=0.5) for i in range(40)]
    picture = (render(attributes) + 1) / 2  # (B, 3, 32, 32) in [0, 1]
    region = condition_region(attributes)
    assert float(iou(drawn_region(picture), region).mean()) > 0.8  # the renderer's own pictures
    mask, outline = make_condition(attributes, "mask"), make_condition(attributes, "outline")
    assert mask.shape == outline.shape == (40, 3, 32, 32) and 0 <= float(outline.min()) and float(mask.max()) <= 1
    assert torch.equal(mask[:, 0] > 0.5, region)  # the mask is the region itself
    inside = region & ~(outline[:, 0] > 0)  # the outline is thin: most of a large shape's inside is dark
    assert inside.sum() > 0.3 * region.sum()
    with pytest.raises(ValueError, match="kind"):
        make_condition(attributes, "scribble")
    a, captions, kinds = training_items(5, 64, seed=0)
    assert (a, captions, kinds) == training_items(5, 64, seed=0) and set(kinds) == {"outline", "mask", "canny"}
    assert any("radius" in o for s in a for o in s["objects"]) and any("radius" not in s["objects"][0] for s in a)


def test_iou_counts_pixels():
    a = torch.zeros(1, 4, 4, dtype=torch.bool)
    b = a.clone()
    a[0, :2], b[0, 1:3] = True, True  # 8 and 8 pixels, 4 shared, 12 in the union
    assert iou(a, b).tolist() == [pytest.approx(4 / 12)]


def test_the_step_window_and_guess_mode_weights():
    assert control_keep(4, 0.0, 1.0) == [1.0, 1.0, 1.0, 1.0]
    assert control_keep(4, 0.5, 1.0) == [0.0, 0.0, 1.0, 1.0]
    assert control_keep(5, 0.0, 0.4) == [1.0, 1.0, 0.0, 0.0, 0.0]
    w = guess_mode_scales(4)
    assert len(w) == 5 and w[0] == pytest.approx(0.1) and w[-1] == pytest.approx(1.0) and bool((w.diff() > 0).all())


@pytest.mark.parametrize("args, message", [
    ((-0.5, 0.0, 1.0), "must be >= 0"),
    ((1.0, 0.6, 0.4), "start < end"),
    ((1.0, 0.0, 1.5), "start < end"),
    ((float("nan"), 0.0, 1.0), "must be a number"),
    ((True, 0.0, 1.0), "must be a number"),
])
def test_bad_scale_or_window(args, message):
    with pytest.raises(ValueError, match=message):
        check_control(*args)


def test_bad_condition_images():
    _, net = tiny()
    good = torch.zeros(1, 3, 32, 32)
    assert net.check_condition(good) is good
    for bad, message in [(torch.zeros(1, 3, 64, 64), "shape"), (torch.zeros(1, 1, 32, 32), "3 channels"),
                         (torch.full((1, 3, 32, 32), 255.0), r"\[0, 1\]"), (torch.zeros(1, 3, 32, 32) - 1, r"\[0, 1\]"),
                         (torch.zeros(3, 32, 32), "shape")]:
        with pytest.raises(ValueError, match=message):
            net.check_condition(bad)
    with pytest.raises(ValueError, match="one condition image or 4"):
        net.check_condition(torch.zeros(2, 3, 32, 32), batch_size=4)


@pytest.fixture(scope="module")
def control_pipe(pipe):
    return ControlNetPipeline(pipe.unet, pipe.vae, pipe.clip, pipe.scale_factor, ControlNet.from_unet(pipe.unet))


def test_pipeline_with_a_fresh_controlnet_draws_what_the_plain_pipeline_draws(pipe, control_pipe):
    condition = make_condition([sample_attributes(0, seed=2)], "outline")
    options = dict(num_inference_steps=4, guidance_scale=4.0)
    plain = pipe(["a red star", "a blue circle"], generator=torch.Generator().manual_seed(3), **options).images
    for guess in (False, True):
        steered = control_pipe(["a red star", "a blue circle"], image=condition, guess_mode=guess,
                               generator=torch.Generator().manual_seed(3), **options).images
        assert torch.allclose(steered, plain, atol=1e-6)


def test_pipeline_rejects_bad_input(control_pipe):
    from PIL import Image

    good = torch.zeros(1, 3, 32, 32)
    cases = [(dict(image=torch.zeros(1, 3, 16, 16)), "shape"), (dict(image=Image.new("RGB", (64, 64))), "32x32"),
             (dict(image=torch.zeros(1, 4, 32, 32)), "3 channels"), (dict(image=good + 2), r"\[0, 1\]"),
             (dict(image=good, controlnet_conditioning_scale=-1.0), ">= 0"),
             (dict(image=good, control_guidance_start=0.8, control_guidance_end=0.2), "start < end"),
             (dict(image=torch.zeros(3, 3, 32, 32)), "one per prompt")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            control_pipe(["a red star", "a blue circle"], num_inference_steps=2, **kwargs)


def test_the_shipped_controlnet_follows_unseen_outlines(pipe):
    from diffusion_notes import pretrained
    from diffusion_notes.practice.controlnet.evaluate import eval_set, follow

    if "controlnet" not in pretrained.available():
        pytest.skip("no shipped ControlNet")
    steered = ControlNetPipeline(pipe.unet, pipe.vae, pipe.clip, pipe.scale_factor, pretrained.load("controlnet", "cpu"))
    judge = pretrained.load("shapes_classifier", "cpu")
    items = eval_set(8, "outline", "none")  # the caption names no position: only the outline says where
    with_control = follow(steered, items, judge, num_inference_steps=10)
    without = follow(steered, items, judge, control=False, num_inference_steps=10)
    assert with_control["iou"] > without["iou"] + 0.3 and with_control["iou"] > 0.7
