"""Variations, interpolations and text diffs of the shipped unCLIP; writes benchmarks/results/unclip_edits.json.

All three start from the picture's bipartite latent (z_i, x_T): z_i from CLIP, x_T from DDIM inversion
under the decoder (Ramesh et al. 2022, section 3). Measured on one-object pictures of the training
split's pairs that no model trained on:

* variations: the share of variations whose colour and shape (the classifier's reading) are the
  source's, and their mean pairwise diversity in classifier feature space, against two baselines:
  re-encoding the same picture (the autoencoder's posterior sampled again, so only its noise differs)
  and decoding z_i from fresh noise (no inversion);
* interpolations: PSNR of the first and last frames against the two input pictures;
* text diffs ("a red circle" -> "a blue circle", and shape edits): for each theta, the share of edits
  whose named attribute became the new value while every other attribute stayed.

Every share has a 95% bootstrap interval over the pictures. Chapter 7 reads the JSON.

Run: python benchmarks/unclip_edits.py [--n 32] [--threads 2]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from diffusion_notes import pretrained
from diffusion_notes.data.shapes import (
    COLOURS,
    HELDOUT_PAIRS,
    SHAPES,
    ShapesDataset,
    render,
)
from diffusion_notes.evaluation.metrics import (
    classifier_features,
    diversity,
    mean_interval,
    psnr,
)
from diffusion_notes.unclip.pipeline import DEFAULT_VARIATION_ETA

THETAS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0)


def share(values: torch.Tensor, resamples: int = 1000) -> dict:
    """Mean of a (N,) 0/1 tensor and its bootstrap interval over the N items."""
    return mean_ci(values.double().tolist(), resamples)


def mean_ci(values: list[float], resamples: int = 1000) -> dict:
    mean, lo, hi = mean_interval(values, resamples)
    return {"mean": round(mean, 4), "ci": [round(lo, 4), round(hi, 4)]}


def sources(n: int, seed: int = 21) -> list[dict]:
    dataset = ShapesDataset("train", n, seed=seed, p_two_objects=0.0)
    return [dataset.attributes(i) for i in range(n)]


def reading(classifier, images01: torch.Tensor) -> list[dict]:
    return [r["objects"][0] if len(r["objects"]) == 1 else None
            for r in classifier.predict_attributes(images01 * 2 - 1)]


def variations(pipe, classifier, vae, attrs, k: int, eta: float) -> dict:
    x = (render(attrs) + 1) / 2  # (n, 3, 32, 32) in [0, 1]
    kept = {"inverted": [], "fresh": []}
    div = {"inverted": [], "fresh": [], "re_encoded": []}
    g = torch.Generator().manual_seed(0)
    for j, a in enumerate(attrs):
        want = (a["objects"][0]["colour"], a["objects"][0]["shape"])
        for mode in ("inverted", "fresh"):
            out = pipe.variations(x[j], k, eta=eta, invert=mode == "inverted", generator=g).images
            for obj in reading(classifier, out):
                kept[mode].append(obj is not None and (obj["colour"], obj["shape"]) == want)
            div[mode].append(diversity(classifier_features(classifier, out * 2 - 1)))
        with torch.no_grad():  # the same picture re-encoded: k posterior samples through the autoencoder
            posterior = vae.encode(x[j:j + 1].expand(k, -1, -1, -1) * 2 - 1)
            again = vae.decode(posterior.sample(g)).clamp(-1, 1)
        div["re_encoded"].append(diversity(classifier_features(classifier, again)))
    return {"eta": eta, "per_source": k,
            "kept": {m: share(torch.tensor(v)) for m, v in kept.items()},
            "diversity": {m: mean_ci(v) for m, v in div.items()}}


def interpolations(pipe, attrs, frames: int) -> dict:
    x = (render(attrs) + 1) / 2
    first, last = [], []
    for j in range(0, len(attrs) - 1, 2):
        out = pipe.interpolate(x[j], x[j + 1], frames).images  # (frames, 3, 32, 32)
        first.append(float(psnr(out[:1], x[j:j + 1], value_range=(0.0, 1.0))))
        last.append(float(psnr(out[-1:], x[j + 1:j + 2], value_range=(0.0, 1.0))))
    both = first + last
    return {"pairs": len(first), "frames": frames, "psnr_first_db": mean_ci(first), "psnr_last_db": mean_ci(last),
            "psnr_ends_db": mean_ci(both), "psnr_ends_min_db": round(min(both), 2)}


def edit_for(a: dict, j: int) -> tuple[str, str, str, str]:
    """(attribute, old caption, new caption, new value): colour edits for even j, shape edits for odd j,
    to a value that keeps the pair out of the held-out pairs."""
    obj = a["objects"][0]
    colour, shape = obj["colour"], obj["shape"]
    if j % 2 == 0:
        options = [c for c in COLOURS if c != colour and (shape, c) not in HELDOUT_PAIRS]
        new = options[j // 2 % len(options)]
        return "colour", f"a {colour} {shape}", f"a {new} {shape}", new
    options = [s for s in SHAPES if s != shape and (s, colour) not in HELDOUT_PAIRS]
    new = options[j // 2 % len(options)]
    return "shape", f"a {colour} {shape}", f"a {colour} {new}", new


def text_diffs(pipe, classifier, attrs) -> dict:
    x = (render(attrs) + 1) / 2
    changed = {t: [] for t in THETAS}
    for j, a in enumerate(attrs):
        key, old, new, value = edit_for(a, j)
        out = pipe.text_diff(x[j], old, new, len(THETAS), max_theta=max(THETAS)).images
        source = a["objects"][0]
        for theta, obj in zip(THETAS, reading(classifier, out)):
            others = [k for k in ("colour", "shape", "size", "position") if k != key]
            changed[theta].append(obj is not None and obj[key] == value
                                  and all(obj[k] == source[k] for k in others))
    some = torch.tensor([any(changed[t][j] for t in THETAS if 0.3 <= t <= 0.7) for j in range(len(attrs))])
    return {"edits": len(attrs), "by_theta": {str(t): share(torch.tensor(v)) for t, v in changed.items()},
            "some_theta_0.3_to_0.7": share(some)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="source pictures")
    parser.add_argument("--per-source", type=int, default=6, help="variations per picture")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--eta", type=float, default=DEFAULT_VARIATION_ETA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "unclip_edits.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe, classifier = pretrained.unclip(), pretrained.load("shapes_classifier")
    attrs = sources(args.n)
    invocation = " ".join(sys.argv[1:] if argv is None else argv)
    results = {"command": "python benchmarks/" + Path(__file__).name + " " + invocation}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for name, fn in (("variations", lambda: variations(pipe, classifier, pipe.vae, attrs,
                                                       args.per_source, args.eta)),
                     ("interpolations", lambda: interpolations(pipe, attrs, args.frames)),
                     ("text_diffs", lambda: text_diffs(pipe, classifier, attrs))):
        t0 = time.perf_counter()
        results[name] = fn()
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(results[name]), flush=True)
        out_path.write_text(json.dumps(results, indent=2) + "\n")
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} in {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
