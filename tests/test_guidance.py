"""guidance.py and guided sampling: conventions, condition dropout, the single 2B model call."""

import math

import pytest
import torch

from diffusion_notes.device import make_generator, randn
from diffusion_notes.foundations.guidance import (
    MAX_GUIDED_BATCH,
    CFGDenoiser,
    cfg_combine,
    concat_conditions,
    drop_condition,
    guided_eps,
)
from diffusion_notes.foundations.samplers import sample
from diffusion_notes.foundations.schedules import make_schedule
from diffusion_notes.foundations.toy2d import ToyDenoiser, ToyDenoiserConfig

SHAPE = (3, 2)


class CountingModel:
    """eps = 0.1 x + 0.001 t + 0.05 * label, counting its calls and the batch sizes it saw."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, x_t, t, cond=None):
        self.batch_sizes.append(x_t.shape[0])
        label = torch.zeros(x_t.shape[0]) if cond is None else cond.float()
        return 0.1 * x_t + 0.001 * t.float()[:, None] + 0.05 * label[:, None]


def test_cfg_combine_conventions():
    g = make_generator(0)
    eps_uncond, eps_cond = randn((4, 3), g), randn((4, 3), g)
    torch.testing.assert_close(cfg_combine(eps_uncond, eps_cond, 1.0), eps_cond)
    torch.testing.assert_close(cfg_combine(eps_uncond, eps_cond, 0.0), eps_uncond)
    for w in (0.5, 3.0, 6.5):  # Ho & Salimans: (1 + w) eps_cond - w eps_uncond, i.e. s = 1 + w
        ho_salimans = (1 + w) * eps_cond - w * eps_uncond
        torch.testing.assert_close(cfg_combine(eps_uncond, eps_cond, 1 + w), ho_salimans)
    with pytest.raises(ValueError, match="same shape"):
        cfg_combine(eps_uncond, eps_cond[:2], 2.0)


def test_guided_sampling_makes_one_batched_call_per_step():
    model = CountingModel()
    cond, uncond = torch.full((3,), 2), torch.zeros(3, dtype=torch.long)
    sample(model, SHAPE, sampler="ddim", num_inference_steps=7, cond=cond, uncond=uncond, guidance_scale=4.0)
    assert model.batch_sizes == [6] * 7
    model.batch_sizes.clear()
    sample(model, SHAPE, sampler="ddim", num_inference_steps=7, cond=cond, uncond=uncond, guidance_scale=1.0)
    assert model.batch_sizes == [3] * 7  # scale 1: the conditional call only


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "euler_a", "dpmpp_2m"])
def test_guided_sample_equals_two_separate_calls(sampler):
    model = CountingModel()
    cond, uncond = torch.full((3,), 2), torch.zeros(3, dtype=torch.long)
    scale = 3.0

    def two_calls(x_t, t):
        return cfg_combine(model(x_t, t, uncond), model(x_t, t, cond), scale)

    kwargs = dict(sampler=sampler, num_inference_steps=8, schedule=make_schedule("linear"))
    guided = sample(model, SHAPE, generator=make_generator(1), cond=cond, uncond=uncond,
                    guidance_scale=scale, **kwargs)
    reference = sample(two_calls, SHAPE, generator=make_generator(1), **kwargs)
    torch.testing.assert_close(guided, reference)


def test_guided_eps_with_a_toy_denoiser_and_structured_conditions():
    torch.manual_seed(0)
    model = ToyDenoiser(ToyDenoiserConfig(hidden=16, num_blocks=1, num_classes=3)).eval()
    x, t = torch.randn(4, 2), torch.full((4,), 500)
    cond, uncond = torch.tensor([0, 1, 2, 1]), torch.full((4,), model.null_label)
    with torch.no_grad():
        guided = guided_eps(model, x, t, cond, uncond, 2.5)
        expected = cfg_combine(model(x, t, uncond), model(x, t, cond), 2.5)
    torch.testing.assert_close(guided, expected, atol=1e-6, rtol=1e-5)

    a, b = torch.ones(2, 3), torch.zeros(2, 3)
    assert concat_conditions((a, a[:, :1]), (b, b[:, :1]))[1].shape == (4, 1)
    merged = concat_conditions({"text": a}, {"text": b})
    torch.testing.assert_close(merged["text"], torch.cat([a, b]))
    with pytest.raises(ValueError, match="cond and uncond must both be tensors"):
        concat_conditions({"text": a}, b)
    with pytest.raises(ValueError, match="same shape"):
        concat_conditions(a, b[:1])


def test_cfg_denoiser_picks_one_2b_call_or_two_b_calls_by_batch_size():
    model = CountingModel()
    rows = MAX_GUIDED_BATCH // 2  # 2B exactly at the limit: one call; one more row: two calls
    for B, calls in ((rows, [2 * rows]), (rows + 1, [rows + 1, rows + 1])):
        model.batch_sizes.clear()
        cond, uncond = torch.full((B,), 2), torch.zeros(B, dtype=torch.long)
        CFGDenoiser(model, cond, uncond, 3.0)(torch.zeros(B, 2), torch.full((B,), 10))
        assert model.batch_sizes == calls
    model.batch_sizes.clear()
    CFGDenoiser(model, torch.full((3,), 2), None, 1.0)(torch.zeros(3, 2), torch.full((3,), 10))
    assert model.batch_sizes == [3]  # scale 1: the conditional call alone


@pytest.mark.parametrize("B", [5, 1500])
def test_cfg_denoiser_one_call_and_two_calls_agree(B):
    torch.manual_seed(0)
    model = ToyDenoiser(ToyDenoiserConfig(hidden=32, num_blocks=2, num_classes=3)).eval()
    g = make_generator(3)
    x, t = randn((B, 2), g), torch.randint(0, 1000, (B,), generator=g)
    cond, uncond = torch.randint(0, 3, (B,), generator=g), torch.full((B,), model.null_label)
    with torch.no_grad():
        one = CFGDenoiser(model, cond, uncond, 4.0, max_batch=None)(x, t)
        two = CFGDenoiser(model, cond, uncond, 4.0, max_batch=0)(x, t)
        by_rule = CFGDenoiser(model, cond, uncond, 4.0)(x, t)
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_rule, one, rtol=1e-5, atol=1e-5)


def test_cfg_denoiser_needs_uncond_to_guide():
    with pytest.raises(ValueError, match="needs both a condition `cond` and an unconditional"):
        CFGDenoiser(CountingModel(), torch.zeros(3), None, 2.0)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        CFGDenoiser(CountingModel(), torch.zeros(3), torch.zeros(3), -1.0)


def test_drop_condition_frequency_and_values():
    labels = torch.arange(20_000) % 5
    dropped = drop_condition(labels, 0.1, null=5, generator=make_generator(0))
    is_null = dropped == 5
    # Binomial(20000, 0.1): standard deviation 42; 5 sigma either side.
    assert abs(is_null.sum().item() - 2000) < 5 * math.sqrt(20_000 * 0.1 * 0.9)
    assert torch.equal(dropped[~is_null], labels[~is_null])  # kept rows are untouched
    assert labels.max() == 4  # the input is not modified
    assert torch.equal(drop_condition(labels, 0.0, 5), labels)
    assert (drop_condition(labels, 1.0, 5) == 5).all()


def test_drop_condition_on_embeddings_replaces_whole_rows():
    emb = torch.randn(1000, 4, 8)  # (B, L, D)
    null = torch.zeros(4, 8)
    out = drop_condition(emb, 0.5, null, generator=make_generator(1))
    rows_null = (out == 0).flatten(1).all(1)
    rows_kept = (out == emb).flatten(1).all(1)
    assert (rows_null | rows_kept).all() and 400 < rows_null.sum() < 600
    # the same draws as torch.rand(B, generator) < p, as the toy training loop makes them
    expected = torch.rand(1000, generator=make_generator(1)) < 0.5
    assert torch.equal(rows_null, expected)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_drop_condition_rejects_bad_probabilities(p):
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\]"):
        drop_condition(torch.zeros(4, dtype=torch.long), p, 1)


def test_drop_condition_rejects_a_null_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"null must be shaped like one row of cond, \(8,\)"):
        drop_condition(torch.zeros(4, 8), 0.5, torch.zeros(3))
