"""unCLIP against GLIDE (and Stable Diffusion) with bootstrap intervals; writes benchmarks/results/unclip_vs_glide.json.

The paper's claim (Ramesh et al. 2022, section 5): unCLIP matches GLIDE in photorealism and caption
similarity and beats it in diversity, most clearly at high guidance. Measured here with the shipped
weights, on captions no model trained on, the same captions and seeds for every pipeline:

* fidelity: colour and shape both right (the evaluation kit's classifier), per image;
* precision (k = 3) and the Fréchet distance against real pictures of the same kind (one or two objects);
* diversity: mean pairwise distance, in classifier feature space, between the pictures of one caption.

Every number comes with a 95% percentile bootstrap interval that resamples captions and, within each
caption, its pictures (seeds): `evaluation.metrics.bootstrap_interval`. The Fréchet distance's percentile
interval is stored as computed; the distance is biased upwards in small samples, more so in a resample that
repeats pictures, so that interval can lie wholly above the full-sample value, and the chapters report it
moved onto the value by `evaluation.metrics.bias_corrected_interval` (`report.ci(..., bias_corrected=True)`).

Caption sets: "seen" (one object, colour-shape pairs of the training split, new captions and pictures),
"heldout" (one object, the held-out colour-shape pairs) and "two" (two objects, training split).
The guidance sweep runs on "seen" for unCLIP and GLIDE, and the three sets at the default scale for
both; unCLIP with the autoregressive prior, Stable Diffusion and the pixel-space cascades run on
"seen". Chapter 8 reads the JSON.

Run: python benchmarks/unclip_vs_glide.py [--prompts 32] [--per-prompt 8] [--threads 2] [--resume]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from diffusion_notes import pretrained
from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.evaluation.metrics import (
    bootstrap_interval,
    classifier_features,
    diversity,
    fidelity_per_image,
    frechet_distance,
    precision_per_image,
)
from diffusion_notes.unclip.pipeline import DEFAULT_GUIDANCE_SCALE

SCALES = (1.0, 2.0, 3.0, 5.0, 8.0)
SETS = {"seen": ("train", 0.0, 11), "heldout": ("heldout", 0.0, 12), "two": ("train", 1.0, 13)}  # split, p_two, seed


def caption_set(name: str, n: int) -> tuple[list[str], list[dict]]:
    split, p_two, seed = SETS[name]
    dataset = ShapesDataset(split, n, seed=seed, p_two_objects=p_two)
    attributes = [dataset.attributes(i) for i in range(n)]
    return [dataset.caption(i, a) for i, a in enumerate(attributes)], attributes


def reference(name: str, classifier, n: int = 2000) -> torch.Tensor:
    """Classifier features of n real pictures of the set's kind (unseen seed)."""
    split, p_two, _ = SETS[name]
    return classifier_features(classifier, ShapesDataset(split, n, seed=3, p_two_objects=p_two).images())


def draw(pipe, prompts, per_prompt, scale) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = pipe(prompts, num_images_per_prompt=per_prompt, guidance_scale=scale,
               generator=torch.Generator().manual_seed(0))
    return out.images * 2 - 1, time.perf_counter() - start  # (P k, 3, 32, 32) in [-1, 1]


def summarise(images, attributes, per_prompt, classifier, real, resamples: int, fd_resamples: int) -> dict:
    """Point values and intervals, resampling captions and then each caption's pictures."""
    P, k = len(attributes), per_prompt
    repeated = [a for a in attributes for _ in range(k)]
    right = fidelity_per_image(images, repeated, classifier)["colour_shape"].view(P, k).double()
    feats = classifier_features(classifier, images).view(P, k, -1).double()  # (P, k, F)
    inside = precision_per_image(real, feats.flatten(0, 1)).view(P, k).double()
    inner = torch.Generator().manual_seed(1)

    def pick(idx):  # (P,) captions -> (P, k) pictures, each caption's pictures drawn again with replacement
        return idx[:, None], torch.randint(k, (len(idx), k), generator=inner)

    def div(f):  # (P, k, F) -> mean over captions of the pairwise distance (repeated draws excluded)
        return sum(diversity(torch.unique(f[p], dim=0)) if len(torch.unique(f[p], dim=0)) > 1 else 0.0
                   for p in range(len(f))) / len(f)

    stats = {
        "fidelity": lambda idx: right[pick(idx)].mean(),
        "precision": lambda idx: inside[pick(idx)].mean(),
        "diversity": lambda idx: div(feats[pick(idx)]),
    }
    out = {"fidelity": float(right.mean()), "precision": float(inside.mean()), "diversity": div(feats)}
    for name, fn in stats.items():
        out[name + "_ci"] = [round(v, 4) for v in bootstrap_interval(fn, P, resamples if name != "diversity" else
                                                                     max(resamples // 5, 50))]
    out["frechet_distance"] = frechet_distance(real, feats.flatten(0, 1))
    out["frechet_distance_ci"] = [round(v, 3) for v in bootstrap_interval(
        lambda idx: frechet_distance(real, feats[pick(idx)].flatten(0, 1)), P, fd_resamples)]
    return {key: (round(v, 4) if isinstance(v, float) else v) for key, v in out.items()}


@torch.no_grad()
def ceilings(vae, classifier, real, n: int, resamples: int) -> dict:
    """Precision and Fréchet distance of n other real pictures of the seen kind, as they are and after a round
    trip through the autoencoder: what a perfect pixel model and a perfect latent model would score."""
    x = ShapesDataset("train", n, seed=4, p_two_objects=0.0).images()  # (n, 3, 32, 32) in [-1, 1]
    out = {}
    for name, images in (("real", x), ("real_through_vae", vae.decode(vae.encode(x).mean).clamp(-1, 1))):
        feats = classifier_features(classifier, images).double()
        inside = precision_per_image(real, feats).double()
        interval = bootstrap_interval(lambda idx, inside=inside: inside[idx].mean(), n, resamples)
        out[name] = {"precision": round(float(inside.mean()), 4),
                     "precision_ci": [round(v, 4) for v in interval],
                     "frechet_distance": round(frechet_distance(real, feats), 4)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--per-prompt", type=int, default=8)
    parser.add_argument("--scales", default=",".join(str(s) for s in SCALES))
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--fd-resamples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="keep the settings already measured in --out")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "unclip_vs_glide.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scales = [float(s) for s in args.scales.split(",")]
    classifier = pretrained.load("shapes_classifier")
    pipes = {"unclip": pretrained.unclip(), "glide": pretrained.glide()}
    others = {"unclip_ar": pretrained.unclip(prior="ar_prior"), "stable_diffusion": pretrained.stable_diffusion(),
              "unclip_pixel": pretrained.unclip(space="pixel"), "glide_pixel": pretrained.glide(space="pixel")}
    sets = {name: caption_set(name, args.prompts) for name in SETS}
    reals = {name: reference(name, classifier) for name in SETS}
    invocation = " ".join(sys.argv[1:] if argv is None else argv)
    results = {"command": "python benchmarks/" + Path(__file__).name + " " + invocation,
               "prompts": args.prompts, "per_prompt": args.per_prompt, "scales": scales,
               "resamples": args.resamples, "fd_resamples": args.fd_resamples,
               "default_guidance_scale": DEFAULT_GUIDANCE_SCALE, "sweep": {}, "sets": {}}
    started = time.perf_counter()
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if args.resume and out_path.is_file():  # keep what an interrupted run with the same settings measured
        saved = json.loads(out_path.read_text())
        if all(saved.get(k) == results[k] for k in ("prompts", "per_prompt", "resamples", "fd_resamples")):
            results["sweep"], results["sets"] = saved.get("sweep", {}), saved.get("sets", {})

    def save():  # after every setting, so an interrupted run keeps what it measured
        out_path.write_text(json.dumps(results, indent=2) + "\n")

    def run(pipe, set_name, scale):
        prompts, attributes = sets[set_name]
        images, seconds = draw(pipe, prompts, args.per_prompt, scale)
        r = summarise(images, attributes, args.per_prompt, classifier, reals[set_name], args.resamples,
                      args.fd_resamples)
        r["seconds"], r["guidance_scale"] = round(seconds, 1), scale
        return r

    for name, pipe in pipes.items():
        results["sweep"][name] = results["sweep"].get(name, {})
        for scale in scales:
            if str(scale) in results["sweep"][name]:
                continue
            r = results["sweep"][name][str(scale)] = run(pipe, "seen", scale)
            print(f"{name:7s} scale {scale:>4}: " + ", ".join(f"{k} {v}" for k, v in r.items()), flush=True)
            save()
    for name, pipe in {**pipes, **others}.items():
        results["sets"][name] = results["sets"].get(name, {})
        scale = 4.0 if name == "stable_diffusion" else float(DEFAULT_GUIDANCE_SCALE)  # each pipeline's default
        for set_name in SETS if name in pipes else ("seen",):  # the others on the seen captions only
            if results["sets"][name].get(set_name, {}).get("guidance_scale") == scale:
                continue
            if set_name == "seen" and str(scale) in results["sweep"].get(name, {}):  # measured in the sweep
                results["sets"][name][set_name] = results["sweep"][name][str(scale)]
                continue
            r = results["sets"][name][set_name] = run(pipe, set_name, scale)
            print(f"{name} on {set_name} (scale {scale}): " + ", ".join(f"{k} {v}" for k, v in r.items()), flush=True)
            save()
    results["ceilings"] = ceilings(pretrained.load("vae"), classifier, reals["seen"], args.prompts * args.per_prompt,
                                   args.resamples)
    print("ceilings:", results["ceilings"], flush=True)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    save()
    print(f"wrote {args.out} in {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
