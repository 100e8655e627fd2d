"""Numbers for generated Shapes images: fidelity to the prompt, Fréchet distance,
precision and recall, diversity and CLIP score; and PSNR, for a picture against the one it should be.

Image quality cannot be judged by eye in a test, and Inception-based FID needs
downloaded weights trained on photographs. Here the judge is our own
:class:`diffusion_notes.classifier.ShapesClassifier`: it reads the objects in an
image (prompt fidelity), and its features (``classifier.features``, (B, F)) are
the space in which distributions are compared.

Feature-space metrics take feature matrices (N, F), so they work for any
features, and compute in float64.

Book: the chapters that train image models use it to score their samples.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

import torch

ATTRIBUTE_KEYS = ("colour", "shape", "size", "position")


# --------------------------------------------------------------------------- PSNR

def psnr(x: torch.Tensor, x_hat: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    r"""Peak signal-to-noise ratio in dB of each image, (B,): $10 \log_{10}(1 / \mathrm{MSE})$ on the [0, 1] scale.

    Images (B, ...) with values in `value_range` ((-1, 1) for the library's images, (0, 1) for pictures
    as the pipelines return them) are clamped to it, and their squared error is measured as a fraction
    of its width squared: 20 dB is an RMS error of 10% of the range, 30 dB about 3%, 40 dB 1%.
    """
    lo, hi = value_range
    dims = tuple(range(1, x.ndim))
    mse = (x.clamp(lo, hi) - x_hat.clamp(lo, hi)).pow(2).mean(dim=dims) / (hi - lo) ** 2  # (B,) on the [0, 1] scale
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-12))


# --------------------------------------------------------------------------- prompt fidelity

def _matches(prompt_obj: dict, predicted_obj: dict, keys) -> bool:
    """Every key of `keys` agrees; a prompt value of None (or a missing key) matches anything."""
    return all(prompt_obj.get(k) is None or prompt_obj.get(k) == predicted_obj[k] for k in keys)


def _same_objects(prompt_objects: list[dict], predicted_objects: list[dict], keys) -> bool:
    """The two lists are equal as multisets of objects compared on `keys` (None = wildcard)."""
    if len(prompt_objects) != len(predicted_objects):
        return False
    return any(all(_matches(p, q, keys) for p, q in zip(prompt_objects, order))
               for order in itertools.permutations(predicted_objects))


def _predict(classifier, images: torch.Tensor, batch_size: int = 500) -> list[dict]:
    out = []
    for i in range(0, len(images), batch_size):
        out += classifier.predict_attributes(images[i:i + batch_size])
    return out


def prompt_fidelity(images: torch.Tensor, attributes: list[dict], classifier) -> dict:
    """Fraction of images whose objects, as the classifier reads them, match the prompt.

    images: (B, 3, 32, 32) in [-1, 1]; attributes: one attribute dict per image in the
    dataset's format ({"objects": [{"shape", "colour", "size", "position"}, ...]}).
    A prompt may leave an attribute out: a value of None (or a missing key) for
    "size" or "position" means "not checked" and matches whatever the classifier reads.

    Returns, each a fraction in [0, 1] (higher is better; real images score about 1):
    * "colour", "shape", "size", "position": the multiset of that attribute over the
      predicted objects equals the prompt's (so the number of objects must match too);
    * "count": the number of predicted objects equals the prompt's;
    * "colour_shape": the multiset of (colour, shape) pairs equals the prompt's, the test
      of binding ("a red circle and a blue square", not a blue circle and a red square);
    * "all": the predicted objects equal the prompt's objects in every attribute.

    Paper: the per-attribute object checks follow GenEval (Ghosh et al. 2023), with our
    classifier in place of an object detector.
    """
    if len(images) != len(attributes):
        raise ValueError(f"need one attribute dict per image, got {len(images)} images "
                         f"and {len(attributes)} attribute dicts")
    if len(images) == 0:
        raise ValueError("prompt_fidelity needs at least one image")
    return {name: float(right.double().mean()) for name, right in fidelity_per_image(images, attributes, classifier).items()}


def fidelity_per_image(images: torch.Tensor, attributes: list[dict], classifier) -> dict:
    """`prompt_fidelity`'s checks image by image: {name: (B,) bool}, the same names. What bootstrap
    intervals resample."""
    if len(images) != len(attributes):
        raise ValueError(f"need one attribute dict per image, got {len(images)} images "
                         f"and {len(attributes)} attribute dicts")
    predicted = _predict(classifier, images)
    checks = {k: (k,) for k in ATTRIBUTE_KEYS}
    checks["colour_shape"] = ("colour", "shape")
    checks["all"] = ATTRIBUTE_KEYS
    right = {name: [] for name in (*ATTRIBUTE_KEYS, "count", "colour_shape", "all")}
    for prompt, reading in zip(attributes, predicted):
        right["count"].append(len(prompt["objects"]) == len(reading["objects"]))
        for name, keys in checks.items():
            right[name].append(_same_objects(prompt["objects"], reading["objects"], keys))
    return {name: torch.tensor(values, dtype=torch.bool) for name, values in right.items()}


def bootstrap_interval(statistic, n_groups: int, n_resamples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval: `statistic(groups)` on n_resamples draws, with replacement, of
    n_groups group indices (captions, or captions and seeds), and the central `level` of the results.

    Resampling whole groups keeps the images of one caption together, so the interval counts the
    captions as the unit of variation (Efron and Tibshirani 1993, chapter 13).
    """
    if n_groups < 2:
        raise ValueError(f"a bootstrap needs at least 2 groups, got {n_groups}")
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([float(statistic(torch.randint(n_groups, (n_groups,), generator=g)))
                           for _ in range(n_resamples)], dtype=torch.float64)
    tail = (1 - level) / 2
    return float(values.quantile(tail)), float(values.quantile(1 - tail))


def bias_corrected_interval(estimate: float, interval) -> tuple[float, float]:
    """A percentile interval `(lo, hi)` moved by the bootstrap's estimate of the statistic's bias.

    A statistic that is biased in small samples (the Fréchet distance: a resample repeats pictures, which
    narrows the feature spread and adds distance) is biased again in every resample, so its percentile
    interval can lie wholly above the full-sample `estimate`. The bias is estimated as the middle of the
    resampled values (the interval's midpoint) minus the estimate (Efron and Tibshirani 1993, chapter 10),
    and the interval is moved down by it: it keeps its width and is centred on the estimate, so it always
    contains it. Works from the two stored ends alone, so it applies to intervals already written.
    """
    lo, hi = (float(v) for v in interval)
    if not lo <= hi:
        raise ValueError(f"an interval needs lo <= hi, got ({lo}, {hi})")
    bias = (lo + hi) / 2 - float(estimate)
    return lo - bias, hi - bias


def mean_interval(values, n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """The mean of (N,) per-item values (0/1 checks, cosines, dB) and its percentile bootstrap interval over the
    N items: (mean, lo, hi). `bootstrap_interval` with the statistic "mean of the resampled items"."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    lo, hi = bootstrap_interval(lambda idx: v[idx].mean(), len(v), n_resamples, level, seed)
    return float(v.mean()), lo, hi


# --------------------------------------------------------------------------- Fréchet distance

def feature_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and unbiased covariance (F, F) of features (N, F), in float64."""
    feats = _check_feats(feats, "feats", min_rows=2)
    mu = feats.mean(dim=0)  # (F,)
    centred = feats - mu  # (N, F)
    sigma = centred.T @ centred / (len(feats) - 1)  # (F, F)
    return mu, sigma


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
    eigvals, eigvecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return eigvecs @ torch.diag(eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_distance_gaussians(mu1: torch.Tensor, sigma1: torch.Tensor,
                               mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    r"""Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    .. math:: d^2 = \lVert\mu_1 - \mu_2\rVert^2 + \operatorname{Tr}\big(\Sigma_1 + \Sigma_2
              - 2\,(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}\big)

    The inner matrix is symmetric PSD, so both square roots come from a symmetric
    eigendecomposition (no scipy.linalg.sqrtm, no complex parts to discard); the
    trace of its square root is the sum of the square roots of its eigenvalues.

    Paper: Dowson & Landau 1982; as FID, Heusel et al. 2017. Good: 0 for
    identical Gaussians; it grows with the mean shift and covariance mismatch.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"means must be (F,) and covariances (F, F), got {tuple(mu1.shape)}, "
                         f"{tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    sqrt_sigma1 = _sqrt_psd(sigma1)
    inner = sqrt_sigma1 @ sigma2 @ sqrt_sigma1  # (F, F), symmetric PSD
    eigvals = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0)
    trace_sqrt = eigvals.sqrt().sum()
    d2 = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(d2), 0.0)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F).

    With classifier features this is "FID with our own network". Lower is better;
    two samples of the same distribution give a small positive number (it is biased
    upwards for finite N, so compare only numbers computed with the same N).

    Paper: Heusel et al. 2017.
    """
    return frechet_distance_gaussians(*feature_stats(feats_a), *feature_stats(feats_b))


# --------------------------------------------------------------------------- precision and recall

def _check_feats(feats: torch.Tensor, name: str, min_rows: int = 1) -> torch.Tensor:
    feats = torch.as_tensor(feats)
    if feats.dim() != 2 or len(feats) < min_rows:
        raise ValueError(f"{name} must be a (N, F) feature matrix with N >= {min_rows}, got {tuple(feats.shape)}")
    return feats.detach().to(torch.float64)


def _knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest neighbour among the other rows, (N,)."""
    dist = torch.cdist(feats, feats)  # (N, N)
    return dist.kthvalue(k + 1, dim=1).values  # +1: the row itself is at distance 0


def _inside_manifold(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """For each query, is it within radii[j] of some manifold point j? (M,) bool."""
    dist = torch.cdist(queries, manifold)  # (M, N)
    return (dist <= radii[None, :]).any(dim=1)


def precision_per_image(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3) -> torch.Tensor:
    """(M,) bool: is each fake sample inside the real manifold? `precision_recall`'s precision is its mean."""
    real, fake = _check_feats(real_feats, "real_feats", k + 1), _check_feats(fake_feats, "fake_feats", 1)
    return _inside_manifold(real, _knn_radii(real, k), fake)


def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3) -> dict:
    """Improved precision and recall of a generative model.

    The manifold of a sample is the union of balls around each point with radius
    the distance to its k-th nearest neighbour in the same sample. Precision: the
    fraction of fake samples inside the real manifold (are samples realistic?).
    Recall: the fraction of real samples inside the fake manifold (is all of the
    data covered?). Both in [0, 1], higher is better; same-distribution samples
    score high (about 0.9 with k = 3). Returns {"precision", "recall"}.

    Paper: Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
    Assessing Generative Models", section 2.
    """
    real, fake = _check_feats(real_feats, "real_feats", k + 1), _check_feats(fake_feats, "fake_feats", k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in width: {real.shape[1]} vs {fake.shape[1]}")
    precision = precision_per_image(real, fake, k).double().mean()
    recall = _inside_manifold(fake, _knn_radii(fake, k), real).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def diversity(feats: torch.Tensor) -> float:
    """Mean Euclidean distance between the N(N-1)/2 pairs of distinct rows of (N, F).

    Used among samples for one prompt: 0 means every sample looks the same (mode
    collapse, as very high guidance scales do); real images of one prompt set the
    level to aim for. Paper: the pairwise-distance diversity score of Mao et al. 2019
    (mode-seeking GANs), in classifier feature space.
    """
    feats = _check_feats(feats, "feats", min_rows=2)
    dist = torch.cdist(feats, feats)  # (N, N)
    n = len(feats)
    return float(dist.sum() / (n * (n - 1)))  # the diagonal is 0


# --------------------------------------------------------------------------- CLIP score

@torch.no_grad()
def clip_score(clip_model, images: torch.Tensor, captions: list[str]) -> float:
    """Mean over images of 100 * max(cos(z_i, z_t), 0) between each image and its caption.

    clip_model needs encode_image(images) -> (B, E) and encode_text(captions) with
    ``.z_t`` (B, E) (or a plain tensor). Hessel et al. 2021 scale by w = 2.5 (their
    CLIPScore); we scale by 100, as torchmetrics does, so the score reads as a
    cosine in percent. Higher is better; compare only scores from the same CLIP.

    Paper: Hessel et al. 2021, "CLIPScore", the CLIP-S definition.
    """
    if len(images) != len(captions) or len(images) == 0:
        raise ValueError(f"need one caption per image and at least one image, got {len(images)} images "
                         f"and {len(captions)} captions")
    z_i = clip_model.encode_image(images)  # (B, E)
    text = clip_model.encode_text(list(captions))
    z_t = getattr(text, "z_t", text)  # (B, E)
    cos = torch.nn.functional.cosine_similarity(z_i.cpu().double(), z_t.cpu().double(), dim=-1)  # (B,), float64 on the CPU (MPS has none)
    return float(100 * cos.clamp(min=0).mean())


# --------------------------------------------------------------------------- everything at once

@torch.no_grad()
def classifier_features(classifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """classifier.features over images in batches, on the classifier's device: (N, F) on the CPU."""
    device = next(classifier.parameters()).device
    return torch.cat([classifier.features(images[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(images), batch_size)])


def _prompt_key(attributes: dict) -> str:
    objects = [{k: o.get(k) for k in ATTRIBUTE_KEYS} for o in attributes["objects"]]
    return json.dumps([objects, attributes.get("relation")], sort_keys=True)


def evaluate_images(images: torch.Tensor, attributes: list[dict], classifier,
                    reference_images: torch.Tensor | None = None, k: int = 3) -> dict:
    """Every metric of this module for a set of generated images.

    Returns "fidelity/<name>" (see `prompt_fidelity`), "diversity" (mean over the
    prompts with at least two images of `diversity` of their features; absent if no
    prompt repeats) and, given real reference images, "frechet_distance", "precision"
    and "recall" against them.
    """
    out = {f"fidelity/{k_}": v for k_, v in prompt_fidelity(images, attributes, classifier).items()}
    feats = classifier_features(classifier, images)  # (N, F)
    groups = defaultdict(list)
    for i, attrs in enumerate(attributes):
        groups[_prompt_key(attrs)].append(i)
    per_prompt = [diversity(feats[idx]) for idx in groups.values() if len(idx) >= 2]
    if per_prompt:
        out["diversity"] = sum(per_prompt) / len(per_prompt)
    if reference_images is not None:
        real = classifier_features(classifier, reference_images)
        out["frechet_distance"] = frechet_distance(real, feats)
        out.update(precision_recall(real, feats, k=k))
    return out
