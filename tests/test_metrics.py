"""Tests for the image metrics: closed forms, synthetic Gaussians, stubs, and sanity checks with the classifier."""

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion_notes.data.shapes import ShapesDataset, render
from diffusion_notes.evaluation.metrics import (
    bias_corrected_interval,
    bootstrap_interval,
    classifier_features,
    clip_score,
    diversity,
    evaluate_images,
    feature_stats,
    frechet_distance,
    frechet_distance_gaussians,
    mean_interval,
    precision_recall,
    prompt_fidelity,
    psnr,
)

torch.set_num_threads(1)



# ----------------------------------------------------------------------------- Fréchet distance

def _random_spd(n, seed):
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)


def test_frechet_closed_form_for_diagonal_covariances():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, -1.0])
    var1, var2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((var1.sqrt() - var2.sqrt()) ** 2).sum()  # 10 + 4 + 1 + 0
    got = frechet_distance_gaussians(mu1, torch.diag(var1), mu2, torch.diag(var2))
    assert got == pytest.approx(float(expected), rel=1e-10)
    assert frechet_distance_gaussians(mu1, torch.diag(var1), mu1, torch.diag(var1)) == pytest.approx(0, abs=1e-10)


def test_frechet_matches_a_direct_computation_for_full_covariances():
    n = 6
    s1, s2 = _random_spd(n, 1), _random_spd(n, 2)
    mu1, mu2 = torch.zeros(n, dtype=torch.float64), torch.linspace(0, 1, n, dtype=torch.float64)
    # Tr (S1 S2)^(1/2) = sum of square roots of the (real, non-negative) eigenvalues of S1 S2
    eig = np.linalg.eigvals(s1.numpy() @ s2.numpy())
    direct = float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * np.sqrt(eig.real).sum())
    assert frechet_distance_gaussians(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-9)
    assert frechet_distance_gaussians(mu2, s2, mu1, s1) == pytest.approx(direct, rel=1e-9)


def test_frechet_distance_of_samples_uses_mean_and_unbiased_covariance():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 5, generator=g), 2 + 0.5 * torch.randn(300, 5, generator=g)
    mu, sigma = feature_stats(a)
    torch.testing.assert_close(mu, a.double().mean(0))
    torch.testing.assert_close(sigma, torch.from_numpy(np.cov(a.double().numpy(), rowvar=False)))
    d = frechet_distance(a, b)
    assert d == pytest.approx(frechet_distance_gaussians(*feature_stats(a), *feature_stats(b)))
    assert d == pytest.approx(5 * 2**2 + 5 * (1 - 0.5) ** 2, rel=0.15)  # population value 21.25
    with pytest.raises(ValueError):
        frechet_distance(torch.randn(1, 5), b)


# ----------------------------------------------------------------------------- precision, recall, diversity

def test_precision_recall_by_hand():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # k = 1: every radius is 1
    assert precision_recall(real, torch.tensor([[0.5], [2.9], [10.0], [-5.0]]), k=1)["precision"] == 0.5
    # fakes at 0 and 10 with k = 1: each ball reaches the other, so all of the real points are covered
    assert precision_recall(real, torch.tensor([[0.0], [10.0]]), k=1)["recall"] == 1.0
    assert precision_recall(real, torch.tensor([[0.0], [1.0]]), k=1)["recall"] == 0.75  # 3 is out of reach


def test_precision_recall_on_gaussians():
    g = torch.Generator().manual_seed(0)
    real, same = torch.randn(1000, 8, generator=g), torch.randn(1000, 8, generator=g)
    shifted = torch.randn(1000, 8, generator=g) + 3.0
    collapsed = 0.1 * torch.randn(1000, 8, generator=g)  # all samples near the mode
    pr = precision_recall(real, same)
    assert pr["precision"] > 0.8 and pr["recall"] > 0.8
    pr = precision_recall(real, shifted)
    assert pr["precision"] < 0.2 and pr["recall"] < 0.2
    pr = precision_recall(real, collapsed)
    assert pr["precision"] > 0.95 and pr["recall"] < 0.2


def test_diversity_closed_forms():
    assert diversity(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    assert diversity(3 * torch.eye(6)) == pytest.approx(3 * math.sqrt(2))  # a regular simplex
    assert diversity(torch.ones(5, 3)) == 0.0
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    pairs = [torch.linalg.norm(x[i] - x[j]).item() for i, j in itertools.combinations(range(7), 2)]
    assert diversity(x) == pytest.approx(sum(pairs) / len(pairs), rel=1e-6)


# ----------------------------------------------------------------------------- prompt fidelity, CLIP score

def _obj(shape, colour, size="small", position="center"):
    return {"shape": shape, "colour": colour, "size": size, "position": position}


class StubClassifier:
    def __init__(self, readings):
        self.readings = readings

    def predict_attributes(self, images):
        return [{"objects": objs} for objs in self.readings[:len(images)]]


def test_prompt_fidelity_with_a_stub_classifier():
    red_circle, blue_square = _obj("circle", "red", "large", "left"), _obj("square", "blue", "small", "right")
    prompts = [{"objects": [red_circle, blue_square]}] * 4 + [{"objects": [dict(red_circle, size=None, position=None)]}]
    readings = [
        [blue_square, red_circle],                                          # right, other order
        [_obj("circle", "blue", "large", "left"), _obj("square", "red", "small", "right")],  # colours swapped
        [red_circle],                                                       # one object missing
        [red_circle, dict(blue_square, position="top")],                    # wrong position
        [_obj("circle", "red", "small", "bottom")],                         # size, position not checked
    ]
    got = prompt_fidelity(torch.zeros(5, 3, 32, 32), prompts, StubClassifier(readings))
    # swapped colours keep the multisets of colours and of shapes, but not the (colour, shape) pairs
    assert got == {"colour": 4 / 5, "shape": 4 / 5, "size": 4 / 5, "position": 3 / 5, "count": 4 / 5,
                   "colour_shape": 3 / 5, "all": 2 / 5}
    with pytest.raises(ValueError):
        prompt_fidelity(torch.zeros(2, 3, 32, 32), prompts, StubClassifier(readings))


def test_clip_score_with_a_stand_in_model():
    z_i = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    z_t = torch.tensor([[1.0, 1.0], [0.0, 5.0], [-1.0, 0.0]])
    stand_in = SimpleNamespace(encode_image=lambda images: z_i[:len(images)],
                               encode_text=lambda captions: SimpleNamespace(z_t=z_t[:len(captions)]))
    score = clip_score(stand_in, torch.zeros(3, 3, 32, 32), ["a", "b", "c"])
    assert score == pytest.approx(100 * (1 / math.sqrt(2) + 1 + 0) / 3)  # negative cosine counts as 0
    with pytest.raises(ValueError):
        clip_score(stand_in, torch.zeros(3, 3, 32, 32), ["a", "b"])


# ----------------------------------------------------------------------------- sanity checks with the classifier

@pytest.fixture(scope="module")
def classifier():
    """The shipped classifier: a missing or corrupt file fails these tests."""
    from diffusion_notes import pretrained

    return pretrained.load("shapes_classifier")


def _blur(images):
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 256).expand(3, 1, 5, 5)  # binomial, sigma ~ 1 px
    padded = F.pad(images, (2, 2, 2, 2), mode="replicate")
    return F.conv2d(padded, kernel, groups=3)  # (B, 3, 32, 32)


@pytest.fixture(scope="module")
def sets(classifier):
    """Features of two disjoint sets of 1000 unseen images and of spoiled copies of the first."""
    dataset = ShapesDataset("train", length=2000, seed=1)
    attributes = [dataset.attributes(i) for i in range(2000)]
    images = render(attributes)
    real_a, real_b = images[:1000], images[1000:]
    noise = torch.rand(1000, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # every object drawn red: the colour distribution of a generator that ignores colour words
    all_red = render([dict(a, objects=[dict(o, colour="red") for o in a["objects"]]) for a in attributes[:1000]])
    spoiled = {"noise": noise, "all_red": all_red, "blurred": _blur(real_a)}
    feats = {name: classifier_features(classifier, x) for name, x in {"a": real_a, "b": real_b, **spoiled}.items()}
    return SimpleNamespace(feats=feats, images=dict(a=real_a, **spoiled), attributes=attributes[:1000])


@pytest.mark.slow
def test_frechet_distance_real_vs_real_is_far_below_spoiled_sets(sets):
    f = sets.feats
    real = frechet_distance(f["a"], f["b"])
    for name in ("noise", "all_red", "blurred"):
        assert frechet_distance(f[name], f["b"]) > 5 * real, name
    assert real < 0.05 * frechet_distance(f["noise"], f["b"])


@pytest.mark.slow
def test_precision_recall_real_vs_real_high_and_blurred_worse(sets):
    f = sets.feats
    real = precision_recall(f["b"], f["a"])
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    blurred = precision_recall(f["b"], f["blurred"])
    assert blurred["precision"] < real["precision"] - 0.2
    noise = precision_recall(f["b"], f["noise"])
    assert noise["precision"] < 0.05 and noise["recall"] < 0.05


@pytest.mark.slow
def test_prompt_fidelity_of_real_and_recoloured_images(sets, classifier):
    real = prompt_fidelity(sets.images["a"], sets.attributes, classifier)
    assert min(real.values()) > 0.98
    # permuting the colour channels maps the palette roughly onto itself (red -> green-ish, blue -> red-ish):
    # the colour distribution hardly changes, but the colour named in each prompt is wrong
    recoloured = prompt_fidelity(sets.images["a"][:, [2, 0, 1]], sets.attributes, classifier)
    assert recoloured["colour"] < 0.3 and recoloured["shape"] > 0.9


@pytest.mark.slow
def test_evaluate_images_on_real_images(sets, classifier):
    dataset = ShapesDataset("train", length=40, seed=1)
    attributes = [dataset.attributes(i % 4) for i in range(40)]  # 4 prompts, 10 images each
    images = render(attributes)
    out = evaluate_images(images, attributes, classifier, reference_images=sets.images["a"][:200])
    assert out["fidelity/all"] == 1.0
    assert out["diversity"] == pytest.approx(0.0, abs=1e-6)  # identical images of each prompt
    assert {"frechet_distance", "precision", "recall"} <= set(out)


def test_mean_interval_brackets_the_mean_and_narrows_with_more_items():
    few = torch.tensor([0.0, 1.0] * 8)  # 16 fair coin flips
    many = torch.tensor([0.0, 1.0] * 512)
    (m_few, lo_few, hi_few), (m_many, lo_many, hi_many) = mean_interval(few), mean_interval(many)
    assert m_few == m_many == 0.5
    assert lo_few < 0.5 < hi_few and lo_many < 0.5 < hi_many
    assert hi_many - lo_many < (hi_few - lo_few) / 4  # the width falls as 1/sqrt(N): 64 times the items, an eighth of the width
    assert mean_interval(torch.ones(5)) == (1.0, 1.0, 1.0)


def test_the_bias_corrected_interval_holds_a_small_sample_frechet_distance_that_the_percentile_one_misses():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(2000, 8, generator=g, dtype=torch.float64)  # the reference: many pictures' features
    fake = torch.randn(24, 8, generator=g, dtype=torch.float64)  # a few from the same distribution
    estimate = frechet_distance(real, fake)
    lo, hi = bootstrap_interval(lambda idx: frechet_distance(real, fake[idx]), len(fake), n_resamples=200)
    assert not lo <= estimate <= hi  # repeated rows narrow the spread and add distance: the interval sits above
    assert lo > estimate
    lo_bc, hi_bc = bias_corrected_interval(estimate, (lo, hi))
    assert lo_bc <= estimate <= hi_bc
    assert hi_bc - lo_bc == pytest.approx(hi - lo)  # moved, not widened
    assert bias_corrected_interval(0.5, (0.4, 0.6)) == pytest.approx((0.4, 0.6))  # an unbiased one stays put
    with pytest.raises(ValueError, match="lo <= hi"):
        bias_corrected_interval(1.0, (2.0, 1.5))


# ----------------------------------------------------------------------------- PSNR

def test_psnr_of_a_constant_offset_on_either_scale():
    """x_hat = x + delta on [0, 1] pictures: MSE = delta^2, so PSNR = 10 log10(1 / delta^2); on [-1, 1] the same pictures."""
    x = torch.full((3, 3, 4, 4), 0.5)
    deltas = torch.tensor([0.1, 0.01, 0.001])
    got = psnr(x, x + deltas.view(3, 1, 1, 1), value_range=(0.0, 1.0))
    assert torch.allclose(got, 10 * torch.log10(1 / deltas**2), atol=1e-3)  # 20, 40, 60 dB
    assert torch.allclose(psnr(2 * x - 1, 2 * (x + deltas.view(3, 1, 1, 1)) - 1), got, atol=1e-3)


def test_psnr_clamps_to_the_range_and_is_per_image():
    x = torch.zeros(2, 3, 4, 4)
    beyond = torch.stack([torch.full((3, 4, 4), 5.0), torch.full((3, 4, 4), 1.0)])  # both clamp to 1
    got = psnr(x, beyond, value_range=(0.0, 1.0))
    assert got.shape == (2,) and torch.allclose(got, torch.zeros(2))  # an error of the whole range is 0 dB
    assert psnr(x, x).tolist() == [120.0, 120.0]  # identical pictures: the floor of 1e-12 on the MSE
