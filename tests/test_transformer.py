"""The pre-LN Transformer block: causal masking, attention maps, and torch's attention as reference."""

import pytest
import torch
from torch import nn

from diffusion_notes.nn.transformer import SelfAttention, Transformer, TransformerBlock


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_torch_multihead_attention(causal):
    torch.manual_seed(0)
    ours = SelfAttention(32, 4, causal=causal)
    ref = nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.in_proj.weight)
        ref.in_proj_bias.copy_(ours.in_proj.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(3, 7, 32)
    mask = torch.ones(7, 7).triu(1).bool() if causal else None  # torch: True = may NOT attend
    expected, expected_maps = ref(x, x, x, attn_mask=mask, average_attn_weights=False)
    y, maps = ours(x, return_attention=True)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps, expected_maps, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)  # the fused path


def test_causal_output_ignores_later_tokens():
    torch.manual_seed(0)
    model = Transformer(32, layers=2, heads=4, causal=True).eval()
    x = torch.randn(2, 10, 32)
    changed = x.clone()
    changed[:, 6:] = torch.randn(2, 4, 32)
    y, y_changed = model(x), model(changed)
    torch.testing.assert_close(y[:, :6], y_changed[:, :6])
    assert not torch.allclose(y[:, 6:], y_changed[:, 6:])


def test_full_attention_sees_later_tokens():
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, causal=False)
    x = torch.randn(1, 5, 16)
    changed = x.clone()
    changed[:, -1] = torch.randn(16)  # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(block(x)[:, 0], block(changed)[:, 0])


@pytest.mark.parametrize("causal", [False, True])
def test_attention_maps_are_distributions(causal):
    torch.manual_seed(0)
    model = Transformer(32, layers=3, heads=4, causal=causal)
    y, maps = model(torch.randn(2, 9, 32), return_attention=True)
    assert y.shape == (2, 9, 32) and len(maps) == 3
    for attention in maps:
        assert attention.shape == (2, 4, 9, 9)
        assert (attention >= 0).all()
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4, 9))
        if causal:
            assert (attention.triu(1) == 0).all()


def test_mask_combines_with_causal_and_is_checked():
    torch.manual_seed(0)
    attention = SelfAttention(8, 2, causal=True)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[:, 0] = False
    mask[0, 0] = True  # every row keeps at least one position
    _, maps = attention(torch.randn(1, 4, 8), mask=mask, return_attention=True)
    assert (maps[..., 1:, 0] == 0).all() and (maps.triu(1) == 0).all()
    with pytest.raises(ValueError, match="bool"):
        attention(torch.randn(1, 4, 8), mask=mask.float())
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention(10, 3)
