"""Quality and speed of the shipped Stable Diffusion pipeline; writes benchmarks/results/ldm_quality.json.

Measures, with the shipped weights:
* prompt fidelity (colour and shape both right) at the default guidance scale, 25 DPM++ 2M steps,
  on captions of seen and of held-out colour-shape combinations (targets: >= 0.90 and >= 0.70);
* the Fréchet distance (classifier features) of 25-step DPM++ 2M and 50-step DDIM samples against
  1000-step DDPM samples of the same captions (target: each within 1.1x of DDPM's);
* a guidance sweep from 1 to 10 (fidelity should rise and diversity fall);
* one widget update: 8 guided images at 25 steps (target: <= 1 s on a 2-core CPU).
Chapter 13 reads the JSON. The 1000-step DDPM run dominates: about 15 minutes on 2 cores.

Run: python benchmarks/ldm_quality.py [--n 300] [--threads 2] [--out benchmarks/results/ldm_quality.json]
"""

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from diffusion_notes import pretrained
from diffusion_notes.stable_diffusion import evaluate as ldm_eval
from diffusion_notes.stable_diffusion import ldm
from diffusion_notes.training.ship import machine_info


def widget_update_seconds(pipe, repeats: int = 5) -> float:
    """Median wall time of one panel update: 8 images of one prompt, 25 DPM++ 2M steps, guided."""
    def once(seed):
        pipe("a small red circle on the left", num_inference_steps=25, num_images_per_prompt=8,
             generator=torch.Generator().manual_seed(seed))
    once(0)
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        once(seed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="captions for the sampler comparison")
    parser.add_argument("--n-fidelity", type=int, default=500, help="captions per split for prompt fidelity")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ldm_quality.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe, classifier = pretrained.load("stable_diffusion"), pretrained.load("shapes_classifier")
    invocation = " ".join(sys.argv[1:] if argv is None else argv)
    results = {"command": "python benchmarks/" + Path(__file__).name + " " + invocation,
               "date": date.today().isoformat(), "machine": machine_info("cpu", args.threads),
               "default_guidance_scale": ldm.DEFAULT_GUIDANCE_SCALE}
    started = time.perf_counter()

    results["widget_update_s"] = round(widget_update_seconds(pipe), 3)
    print(f"widget update (8 images, 25 steps, guided): {results['widget_update_s']:.2f} s "
          f"on {args.threads} threads (target <= 1 s)", flush=True)

    results["fidelity"] = {}
    for split, name in (("train", "seen"), ("heldout", "heldout")):
        f = ldm_eval.fidelity(pipe, classifier, split, n=args.n_fidelity, num_inference_steps=25)
        results["fidelity"][name] = {k: round(v, 4) for k, v in f.items()}
        target = 0.9 if name == "seen" else 0.7
        print(f"fidelity, {name} combinations: colour+shape {f['colour_shape']:.3f} (target >= {target}: "
              f"{'meets' if f['colour_shape'] >= target else 'misses'}); one-object captions "
              f"{f['one_object/colour_shape']:.3f}, two-object captions {f['two_objects/colour_shape']:.3f}; "
              f"all attributes {f['all']:.3f}", flush=True)

    sweep = ldm_eval.guidance_sweep(pipe, classifier, (1, 2, 3, 4, 5, 6, 8, 10), n_prompts=32, per_prompt=8,
                                    num_inference_steps=25)
    results["guidance_sweep"] = [{k: round(v, 4) for k, v in row.items()} for row in sweep]
    for row in sweep:
        print(f"guidance {row['guidance_scale']:4.1f}: fidelity {row['fidelity']:.3f}, "
              f"diversity {row['diversity']:.3f}, recall {row['recall']:.3f}", flush=True)

    configs = {"DPM++ 2M, 25 steps": {"sampler": "dpmpp_2m", "num_inference_steps": 25},
               "DDIM, 50 steps": {"sampler": "ddim", "num_inference_steps": 50},
               "DDPM, 25 steps": {"sampler": "ddpm", "num_inference_steps": 25},
               "DDPM, 1000 steps": {"sampler": "ddpm", "num_inference_steps": 1000}}
    rows = ldm_eval.sampler_quality(pipe, classifier, configs, n=args.n)
    results["samplers"] = {k: {m: round(v, 4) for m, v in row.items()} for k, row in rows.items()}
    reference = rows["DDPM, 1000 steps"]["frechet_distance"]
    for name, row in rows.items():
        fd = row["frechet_distance"]
        print(f"{name:22s} FD {fd:7.3f}  ratio to DDPM-1000 {fd / reference:5.2f}", flush=True)
    for name in ("DPM++ 2M, 25 steps", "DDIM, 50 steps"):
        ratio = rows[name]["frechet_distance"] / reference
        print(f"  {name}: {ratio:.2f}x DDPM-1000's FD -> {'meets' if ratio <= 1.1 else 'misses'} the 1.1x target")
    results["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
