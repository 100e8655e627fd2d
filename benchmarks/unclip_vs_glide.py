"""unCLIP against GLIDE under a guidance sweep; writes benchmarks/results/unclip_vs_glide.json.

The paper's claim (Ramesh et al. 2022, section 5): unCLIP matches GLIDE in photorealism and caption
similarity and beats it in diversity, most clearly at high guidance. Measured here, with the shipped
weights, on the same captions (seen colour-shape combinations, not in training) for both models:

* fidelity: colour and shape both right, and every attribute right (the evaluation kit's classifier);
* diversity: mean pairwise distance, in classifier feature space, between the images of one caption;
* precision and recall (k = 3) and the Fréchet distance against real images of the training split;
* CLIP score: 100 x the mean cosine of each image's CLIP embedding with its caption's.

For each decoder guidance scale both pipelines draw `per_prompt` images per caption with the
same seeds; unCLIP's prior keeps its default guidance (2) and best-of-two. unCLIP with the
autoregressive prior is measured at the default decoder scale. Chapter 8 reads the JSON.

Run: python benchmarks/unclip_vs_glide.py [--prompts 32] [--per-prompt 8] [--threads 2]
"""

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import torch

from diffusion_notes import pretrained
from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.evaluation.metrics import clip_score, evaluate_images
from diffusion_notes.stable_diffusion import ldm
from diffusion_notes.training.ship import machine_info
from diffusion_notes.unclip.pipeline import DEFAULT_GUIDANCE_SCALE

SCALES = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
KEYS = ("fidelity/colour_shape", "fidelity/all", "diversity", "precision", "recall", "frechet_distance")


def measure(pipe, prompts, attributes, per_prompt, scale, classifier, real, clip) -> dict:
    start = time.perf_counter()
    out = pipe(prompts, num_images_per_prompt=per_prompt, guidance_scale=scale,
               generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    images = out.images * 2 - 1  # (N, 3, 32, 32) in [-1, 1]
    repeated = [a for a in attributes for _ in range(per_prompt)]
    metrics = evaluate_images(images, repeated, classifier, reference_images=real)
    result = {k: round(float(metrics[k]), 4) for k in KEYS}
    captions = [p for p in prompts for _ in range(per_prompt)]
    result["clip_score"] = round(clip_score(clip, images, captions), 3)
    result["seconds"] = round(seconds, 1)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--per-prompt", type=int, default=8)
    parser.add_argument("--scales", default=",".join(str(s) for s in SCALES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "unclip_vs_glide.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scales = [float(s) for s in args.scales.split(",")]
    classifier, clip = pretrained.load("shapes_classifier"), pretrained.load("clip")
    pipes = {"glide": pretrained.load("glide"), "unclip": pretrained.load("unclip")}
    prompts, attributes = ldm.eval_prompts("train", args.prompts)
    real = ShapesDataset("train", 2000, seed=3).images()
    results = {"command": "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:] if argv is None else argv),
               "date": date.today().isoformat(), "machine": machine_info("cpu", args.threads),
               "prompts": args.prompts, "per_prompt": args.per_prompt, "scales": scales,
               "default_guidance_scale": DEFAULT_GUIDANCE_SCALE, "sweep": {}}
    started = time.perf_counter()
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every setting, so an interrupted run keeps what it measured
        out_path.write_text(json.dumps(results, indent=2) + "\n")

    for name, pipe in pipes.items():
        results["sweep"][name] = {}
        for scale in scales:
            r = measure(pipe, prompts, attributes, args.per_prompt, scale, classifier, real, clip)
            results["sweep"][name][str(scale)] = r
            print(f"{name:7s} scale {scale:>4}: " + ", ".join(f"{k} {v}" for k, v in r.items()), flush=True)
            save()
    ar_pipe = pretrained.unclip(prior="ar_prior")
    r = measure(ar_pipe, prompts, attributes, args.per_prompt, DEFAULT_GUIDANCE_SCALE, classifier, real, clip)
    results["unclip_ar"] = r
    print(f"unclip with the AR prior, scale {DEFAULT_GUIDANCE_SCALE}: {r}", flush=True)
    real_b = ShapesDataset("train", len(prompts) * args.per_prompt, seed=4).images()
    floor = evaluate_images(real_b, [ShapesDataset("train", 1, seed=4).attributes(0)] * len(real_b), classifier,
                            reference_images=real)
    results["real"] = {k: round(float(floor[k]), 4) for k in ("precision", "recall", "frechet_distance")}
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    save()
    print(f"wrote {args.out} in {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
