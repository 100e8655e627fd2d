"""Chapter 18's table: quality against steps for the base model, the two LCM students and the flow model.

For each method and each number of steps in 1, 2, 4, 8, 25: 64 seen captions, 4 pictures each, the
same starting noise for every method and step count, read by the Shapes classifier. Fidelity
(colour and shape right), Fréchet distance to 256 real pictures, diversity within a caption, each
with a 95% bootstrap interval over captions (`fewer_steps.evaluate`). Then, for the deterministic
samplers, the RMS distance of n steps from 50 steps from the same noise. Then the targets' fidelity
on a larger sample: 500 seen captions, one picture each (the students and the flow model at 4 steps,
the base model at 25). And each model's training cost in CPU-minutes, from the manifest.

Methods: the base ldm_unet with DPM++ 2M and with DDIM (trailing spacing, so one step starts at
t = 999), guided at 4; the LCM student and the base with the LCM-LoRA, sampler LCM, guidance 1
(guidance was folded in); the flow model with Euler, guided at 4, on diffusers' grid and on the
uniform grid whose n steps all move (`flow.uniform_flow_sigmas`).

Writes benchmarks/results/fewer_steps.json (Chapter 18 prints it). Rows already in the file are kept
unless --force; --only picks methods. Run: python benchmarks/fewer_steps.py [--threads 2]
"""

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from diffusion_notes import pretrained
from diffusion_notes.evaluation.metrics import fidelity_per_image, mean_interval
from diffusion_notes.fewer_steps.evaluate import STEPS, distance_to_many_steps, steps_quality
from diffusion_notes.fewer_steps.pipeline import FlowPipeline
from diffusion_notes.practice.finetune.lora_files import applied
from diffusion_notes.stable_diffusion.evaluate import generate
from diffusion_notes.stable_diffusion.ldm import eval_prompts
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline
from diffusion_notes.training import frozen

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "fewer_steps.json"


def methods():
    """name -> (pipeline, context that applies a LoRA or nothing, call options, deterministic?)."""
    base = pretrained.stable_diffusion("cpu")
    parts = (base.vae, base.clip, base.scale_factor)
    lcm = LatentDiffusionPipeline(pretrained.load("lcm_unet"), *parts)
    flow = FlowPipeline(pretrained.load("flow_unet"), *parts)
    return {
        "base, DPM++ 2M": (base, nullcontext, {"sampler": "dpmpp_2m", "guidance_scale": 4.0}, True),
        "base, DDIM": (base, nullcontext, {"sampler": "ddim", "spacing": "trailing", "guidance_scale": 4.0}, True),
        "LCM student": (lcm, nullcontext, {"sampler": "lcm", "guidance_scale": 1.0}, False),
        "LCM-LoRA": (base, lambda: applied(base.unet, [(pretrained.load("lcm"), 1.0)]),
                     {"sampler": "lcm", "guidance_scale": 1.0}, False),
        "flow, Euler": (flow, nullcontext, {"guidance_scale": 4.0}, True),
        "flow, Euler, uniform grid": (flow, nullcontext, {"guidance_scale": 4.0, "grid": "uniform"}, True),
    }


def fidelity_right(pipe, classifier, n: int, **options) -> torch.Tensor:
    """(n,) colour-and-shape checks of one picture for each of n seen captions (seed 0)."""
    prompts, attributes = eval_prompts("train", n)
    return fidelity_per_image(generate(pipe, prompts, **options), attributes, classifier)["colour_shape"]


def cpu_minutes(name: str) -> float:
    info = pretrained.info(name)
    return round(info["wall_time_s"] * info["machine"]["threads"] / 60, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", help="methods to (re)compute")
    p.add_argument("--force", action="store_true", help="recompute rows already in the file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = json.loads(OUT.read_text()) if OUT.is_file() else {"rows": {}, "distance_to_50": {}}
    classifier = frozen.classifier("cpu")
    for name, (pipe, context, options, deterministic) in methods().items():
        if args.only and name not in args.only or (name in result["rows"] and not args.force and not args.only):
            continue
        t0 = time.perf_counter()
        with context():
            result["rows"][name] = steps_quality(pipe, classifier, STEPS, **options,
                                                 progress=lambda row, name=name: print(name, row, flush=True))
            if deterministic:
                result["distance_to_50"][name] = distance_to_many_steps(pipe, STEPS, 50, **options)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        OUT.write_text(json.dumps(result, indent=1) + "\n")  # each row as soon as it is done
    if "fidelity_500" not in result or args.force or (args.only and "fidelity_500" in args.only):
        result["fidelity_500"] = {}
        for name in ("base, DPM++ 2M", "LCM student", "LCM-LoRA", "flow, Euler, uniform grid"):
            pipe, context, options, _ = methods()[name]
            steps = 25 if name.startswith("base") else 4
            with context():
                right = fidelity_right(pipe, classifier, 500, num_inference_steps=steps, **options)
            result["fidelity_500"][name] = {"steps": steps, "fidelity": mean_interval(right)}
            print(name, result["fidelity_500"][name], flush=True)
    base_models = {"base": "ldm_unet", "LCM student": "lcm_unet", "LCM-LoRA": "lcm", "flow": "flow_unet"}
    result["cpu_minutes"] = {k: cpu_minutes(v) for k, v in base_models.items() if v in pretrained.available()}
    result["machine"] = {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["cpu_minutes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
