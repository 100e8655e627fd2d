"""nn/attention.py, nn/resnet.py and nn/unet.py: attention against torch and diffusers, the UNet's contract."""

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from diffusion_notes.nn.attention import CrossAttention, SpatialTransformer, attention
from diffusion_notes.nn.resnet import Downsample, ResBlock, Upsample, group_norm
from diffusion_notes.nn.unet import UNet, UNetConfig

M = 77  # text tokens
D_C = 128  # text width (the shipped CLIP's)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random values in every parameter (norm weights and biases too), so a copied layout is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def copy_in_order(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy source's state dict into target's, pairing entries in registration order (shapes must agree)."""
    src, dst = source.state_dict(), target.state_dict()
    assert len(src) == len(dst)
    target.load_state_dict({k_dst: v for k_dst, v in zip(dst, src.values(), strict=True)})


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(UNetConfig()).eval()


def context(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, M, D_C, generator=torch.Generator().manual_seed(seed))


# --- attention ------------------------------------------------------------------------


@pytest.mark.parametrize("L, M_", [(5, 5), (6, 11), (9, 3)])
def test_attention_equals_torch_sdpa(L, M_):
    g = torch.Generator().manual_seed(L * 100 + M_)
    q = torch.randn(2, 3, L, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, 3, M_, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, M_, 8, generator=g, dtype=torch.float64)
    out, weights = attention(q, k, v)
    assert out.shape == (2, 3, L, 8) and weights.shape == (2, 3, L, M_)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-12, atol=1e-12)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, L, dtype=torch.float64))


def test_attention_weights_are_softmax_of_scaled_scores():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(4, 16, generator=g) for _ in range(3))
    _, weights = attention(q, k, v)
    torch.testing.assert_close(weights, torch.softmax(q @ k.T / 4.0, dim=-1))  # sqrt(16) = 4


def _diffusers_attention(ours: CrossAttention, query_dim: int, context_dim: int | None, heads: int) -> Attention:
    ref = Attention(query_dim, cross_attention_dim=context_dim, heads=heads, dim_head=query_dim // heads, bias=False)
    with torch.no_grad():
        for name in ("to_q", "to_k", "to_v"):
            getattr(ref, name).weight.copy_(getattr(ours, name).weight)
        ref.to_out[0].weight.copy_(ours.to_out.weight)
        ref.to_out[0].bias.copy_(ours.to_out.bias)
    return ref.eval()


@pytest.mark.parametrize("context_dim", [None, 24], ids=["self", "cross"])
def test_cross_attention_equals_diffusers_attention(context_dim):
    torch.manual_seed(2)
    D, H, B, L = 32, 4, 2, 10
    ours = CrossAttention(D, context_dim, heads=H)
    randomize(ours, 3)
    ref = _diffusers_attention(ours, D, context_dim, H)
    x = torch.randn(B, L, D)
    ctx = None if context_dim is None else torch.randn(B, 7, context_dim)
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=ctx)
        got = ours(x, ctx)
        got_explicit, maps = ours(x, ctx, return_attention=True)
        # diffusers' own attention probabilities, (B H, L, M) with heads split like ours
        source = x if ctx is None else ctx
        probs = ref.get_attention_scores(ref.head_to_batch_dim(ref.to_q(x)), ref.head_to_batch_dim(ref.to_k(source)))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_explicit, got, rtol=1e-5, atol=1e-5)
    M_ = L if ctx is None else 7
    assert maps.shape == (B, H, L, M_)
    torch.testing.assert_close(maps.reshape(B * H, L, M_), probs, rtol=1e-5, atol=1e-6)


def test_cross_attention_checks_its_arguments():
    with pytest.raises(ValueError, match="divisible by heads"):
        CrossAttention(30, heads=4)
    attn = CrossAttention(32, 24, heads=4)
    with pytest.raises(ValueError, match="context must have width 24"):
        attn(torch.randn(1, 5, 32), torch.randn(1, 7, 16))


def test_spatial_transformer_equals_diffusers_transformer2d():
    """Same layout as diffusers' Transformer2DModel (one BasicTransformerBlock, GELU feed-forward)."""
    C, H, D_c = 32, 4, 24
    ref = Transformer2DModel(num_attention_heads=H, attention_head_dim=C // H, in_channels=C,
                             cross_attention_dim=D_c, norm_num_groups=32, activation_fn="gelu").eval()
    ours = SpatialTransformer(C, D_c, heads=H).eval()
    randomize(ref, 4)
    copy_in_order(ref, ours)
    g = torch.Generator().manual_seed(5)
    x, ctx = torch.randn(2, C, 4, 6, generator=g), torch.randn(2, 7, D_c, generator=g)
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=ctx, return_dict=False)[0]
        got = ours(x, ctx)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_spatial_transformer_keeps_shape_and_returns_self_and_cross_maps():
    torch.manual_seed(6)
    block = SpatialTransformer(16, 24, heads=2).eval()
    x, ctx = torch.randn(3, 16, 4, 5), torch.randn(3, 9, 24)
    with torch.no_grad():
        out = block(x, ctx)
        out2, maps = block(x, ctx, return_attention=True)
    assert out.shape == x.shape
    torch.testing.assert_close(out2, out, rtol=1e-5, atol=1e-6)
    assert set(maps) == {"self", "cross"}
    assert maps["self"].shape == (3, 2, 20, 20) and maps["cross"].shape == (3, 2, 20, 9)
    for m in maps.values():
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))


# --- resnet blocks ----------------------------------------------------------------------


@pytest.mark.parametrize("channels, expected", [(8, 8), (16, 16), (20, 20), (32, 32), (48, 24), (64, 32),
                                                (96, 32), (7, 7), (100, 25), (33, 11)])
def test_group_norm_picks_the_largest_divisor_up_to_32(channels, expected):
    norm = group_norm(channels)
    assert norm.num_groups == expected == max(g for g in range(1, 33) if channels % g == 0)
    assert norm.num_channels == channels and norm.eps == 1e-6


@pytest.mark.parametrize("cin, cout, temb", [(16, 32, 64), (16, 16, None)])
def test_resblock_equals_diffusers_resnet_block(cin, cout, temb):
    ours = ResBlock(cin, cout, temb).eval()
    ref = ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=temb, eps=1e-6,
                        groups=group_norm(cin).num_groups, groups_out=group_norm(cout).num_groups).eval()
    randomize(ours, 7)
    copy_in_order(ours, ref)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, cin, 6, 6, generator=g)
    e = torch.randn(2, temb, generator=g) if temb else None
    with torch.no_grad():
        torch.testing.assert_close(ours(x, e), ref(x, e), rtol=1e-5, atol=1e-5)


def test_resblock_with_temb_requires_temb():
    block = ResBlock(8, 8, temb_dim=16)
    with pytest.raises(ValueError, match="temb"):
        block(torch.randn(1, 8, 4, 4))


def test_down_and_upsample_equal_diffusers():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 8, 6, 6, generator=g)
    for ours, ref, size in ((Downsample(8), Downsample2D(8, use_conv=True, padding=1), 3),
                            (Upsample(8), Upsample2D(8, use_conv=True), 12)):
        randomize(ours, 10)
        ref.conv.load_state_dict(ours.conv.state_dict())  # (Downsample2D also names its conv Conv2d_0)
        with torch.no_grad():
            out = ours(x)
            torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
        assert out.shape == (2, 8, size, size)


# --- the UNet ----------------------------------------------------------------------------


def test_unet_latent_config_keeps_the_input_shape(unet):
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        eps = unet(x, torch.tensor([10, 900]), context(2, 0))
    assert eps.shape == x.shape and torch.isfinite(eps).all()


def test_unet_pixel_config_keeps_the_input_shape(one_thread):
    torch.manual_seed(1)
    model = UNet(UNetConfig(in_channels=3, out_channels=3, sample_size=32, channels=(32, 64))).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        eps = model(x, torch.tensor([3]), context(1, 1))
    assert eps.shape == (1, 3, 32, 32)


def test_unet_attention_maps(unet):
    """Attention at 8x8 (L = 64) in the first level and at 4x4 (L = 16) in the middle block, none at level 2."""
    x, ctx, t = torch.randn(2, 4, 8, 8), context(2, 2), torch.tensor([5, 500])
    with torch.no_grad():
        eps, maps = unet(x, t, ctx, return_attention=True)
        plain = unet(x, t, ctx)
    torch.testing.assert_close(eps, plain, rtol=1e-5, atol=1e-5)
    n_transformers = sum(isinstance(m, SpatialTransformer) for m in unet.modules())
    assert len(maps) == n_transformers == 4
    assert set(maps) == {"down.0", "mid", "up.3", "up.4"}
    H = unet.config.heads
    for name, m in maps.items():
        L = 16 if name == "mid" else 64
        assert set(m) == {"self", "cross"}
        assert m["self"].shape == (2, H, L, L), name
        assert m["cross"].shape == (2, H, L, M), name
        torch.testing.assert_close(m["cross"].sum(-1), torch.ones(2, H, L))


def test_unet_accepts_a_scalar_timestep(unet):
    x, ctx = torch.randn(3, 4, 8, 8), context(3, 3)
    with torch.no_grad():
        full = unet(x, torch.full((3,), 250, dtype=torch.long), ctx)
        torch.testing.assert_close(unet(x, 250, ctx), full, rtol=0, atol=0)
        torch.testing.assert_close(unet(x, torch.tensor(250), ctx), full, rtol=0, atol=0)


def test_unet_output_depends_on_context_and_t_per_example(unet):
    """Changing example 0's caption or timestep changes eps[0] only: examples do not mix."""
    x, ctx, t = torch.randn(2, 4, 8, 8), context(2, 4), torch.tensor([100, 700])
    other_ctx = ctx.clone()
    other_ctx[0] = context(1, 5)[0]
    with torch.no_grad():
        base = unet(x, t, ctx)
        by_context = unet(x, t, other_ctx)
        by_t = unet(x, torch.tensor([101, 700]), ctx)
    for changed in (by_context, by_t):
        assert (changed[0] - base[0]).abs().max() > 1e-4
        torch.testing.assert_close(changed[1], base[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_shape, ctx_shape, what", [
    ((2, 3, 8, 8), (2, M, D_C), "x must have shape"),
    ((2, 4, 8), (2, M, D_C), "x must have shape"),
    ((2, 4, 8, 8), (3, M, D_C), "context must have shape"),
    ((2, 4, 8, 8), (2, M, 64), "context must have shape"),
    ((2, 4, 8, 8), (M, D_C), "context must have shape"),
    ((2, 4, 8, 8), None, "context must have shape"),
])
def test_unet_rejects_bad_shapes(unet, x_shape, ctx_shape, what):
    ctx = None if ctx_shape is None else torch.randn(ctx_shape)
    with pytest.raises(ValueError, match=what):
        unet(torch.randn(x_shape), torch.tensor([1, 2]), ctx)


def test_unet_config_is_checked():
    with pytest.raises(ValueError, match="one flag per level"):
        UNet(UNetConfig(channels=(16, 32), attention=(True,)))
    with pytest.raises(ValueError, match="cannot be halved"):
        UNet(UNetConfig(channels=(16, 32, 32, 32), attention=(True, False, False, False), sample_size=12))


@pytest.mark.parametrize("config", [UNetConfig(channels=(16, 32)),
                                    UNetConfig(channels=(16, 32), layers_per_block=2, attention=(True, True))],
                         ids=["default-layout", "two-layers-attention-everywhere"])
def test_every_unet_parameter_gets_a_gradient(config, one_thread):
    torch.manual_seed(11)
    model = UNet(config).train()
    x = torch.randn(2, 4, 8, 8)
    model(x, torch.tensor([3, 600]), context(2, 6)).square().mean().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unused, f"parameters without gradient: {unused}"


def test_an_added_embedding_shifts_the_timestep_embedding_and_attention_free_unets_need_no_context():
    torch.manual_seed(0)
    config = UNetConfig(in_channels=3, out_channels=3, sample_size=8, channels=(8, 16), attention=(False, True), heads=2,
                        scale_shift_norm=True)
    unet = UNet(config).eval()
    for p in unet.parameters():  # no zero-initialised output layers, so every input shows in the output
        torch.nn.init.normal_(p, std=0.2)
    x, t, context = torch.randn(2, 3, 8, 8), torch.tensor([3, 500]), torch.randn(2, 5, 128)
    base = unet(x, t, context)
    assert torch.allclose(unet(x, t, context, emb=torch.zeros(2, unet.temb_dim)), base)
    assert not torch.allclose(unet(x, t, context, emb=torch.randn(2, unet.temb_dim)), base, atol=1e-4)
    with pytest.raises(ValueError, match="emb must have shape"):
        unet(x, t, context, emb=torch.zeros(2, 3))
    plain = UNet(UNetConfig(in_channels=6, out_channels=3, sample_size=8, channels=(8, 16), attention=(False, False),
                            mid_attention=False))
    assert not plain.uses_context and unet.uses_context
    assert plain(torch.randn(2, 6, 8, 8), t).shape == (2, 3, 8, 8)
    assert not any("SpatialTransformer" in type(m).__name__ for m in plain.modules())


def test_with_one_channel_per_group_only_scale_shift_lets_the_timestep_through():
    """DDPM's "add temb, then GroupNorm" loses a per-group constant shift: with <= 32 channels each group is
    one channel, and the timestep vanishes. GLIDE's scale-shift norm applies it after the norm."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    for scale_shift, changes in ((False, False), (True, True)):
        block = ResBlock(8, 8, temb_dim=16, scale_shift=scale_shift)
        for p in block.parameters():
            torch.nn.init.normal_(p, std=0.3)
        a, b = block(x, torch.randn(2, 16)), block(x, torch.randn(2, 16))
        assert torch.allclose(a, b, atol=1e-5) != changes


def test_one_channel_groups_forget_each_channels_mean_and_fewer_groups_keep_it():
    """Why the unCLIP decoders use norm_groups=8: with one channel per group a picture's colour is invisible."""
    from diffusion_notes.nn.resnet import group_norm

    torch.manual_seed(0)
    x = torch.randn(2, 32, 8, 8)
    shift = torch.randn(1, 32, 1, 1)  # a different constant per channel: a change of overall colour
    per_channel, grouped = group_norm(32), group_norm(32, max_groups=8)
    assert per_channel.num_groups == 32 and grouped.num_groups == 8
    assert torch.allclose(per_channel(x + shift), per_channel(x), atol=1e-4)
    assert not torch.allclose(grouped(x + shift), grouped(x), atol=1e-2)
    config = UNetConfig(in_channels=3, out_channels=3, sample_size=8, channels=(8, 16), attention=(False, False),
                        mid_attention=False, norm_groups=2)
    norms = [m for m in UNet(config).modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups <= 2 for m in norms)


# --- ControlNet's residuals on the UNet's own forward ----------------------------------


def reference_controlled_forward(unet, x, t, ctx, down_residuals, mid_residual):
    """The controlled forward walked layer by layer, as ControlNet's cldm.py writes it: each skip (conv_in's output,
    then every down stage's) plus its residual, the middle block's output plus the middle residual."""
    from diffusion_notes.nn.embeddings import timestep_embedding

    def stage(layers, h):
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, temb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, ctx)
            else:
                h = layer(h)
        return h

    temb = unet.time_embed(timestep_embedding(t, unet.config.channels[0]))
    h = unet.conv_in(x)
    hs = [h]
    for layers in unet.down:
        h = stage(layers, h)
        hs.append(h)
    h = stage(unet.mid, h) + mid_residual
    hs = [s + r for s, r in zip(hs, down_residuals)]
    for layers in unet.up:
        if isinstance(layers[0], ResBlock):
            h = torch.cat([h, hs.pop()], dim=1)
        h = stage(layers, h)
    return unet.conv_out(F.silu(unet.norm_out(h)))


def test_unet_adds_controlnet_residuals_to_its_skips_and_middle(unet):
    x, ctx, t = torch.randn(2, 4, 8, 8), context(2, 7), torch.tensor([40, 800])
    g = torch.Generator().manual_seed(8)
    shapes = [(2, 64, 8, 8), (2, 64, 8, 8), (2, 64, 4, 4), (2, 128, 4, 4)]  # conv_in, down.0, down.1 (down), down.2
    down = [torch.randn(s, generator=g) for s in shapes]
    mid = torch.randn(2, 128, 4, 4, generator=g)
    with torch.no_grad():
        plain = unet(x, t, ctx)
        steered = unet(x, t, ctx, down_residuals=down, mid_residual=mid)
        torch.testing.assert_close(steered, reference_controlled_forward(unet, x, t, ctx, down, mid), rtol=0, atol=0)
        assert (steered - plain).abs().max() > 1e-3
        zeros = unet(x, t, ctx, down_residuals=[torch.zeros(s) for s in shapes], mid_residual=torch.zeros(2, 128, 4, 4))
        assert torch.equal(zeros, plain)  # zero residuals: the UNet itself, to the bit
        only_mid = unet(x, t, ctx, mid_residual=mid)
        assert torch.equal(only_mid, reference_controlled_forward(unet, x, t, ctx, [0.0] * 4, mid))
    with pytest.raises(ValueError, match="need 4 down residuals, one per skip connection, got 3"):
        unet(x, t, ctx, down_residuals=down[:3])
