"""Our shipped Stable Diffusion against diffusers' own pipeline loading its export: pixels and times.

Exports the shipped pipeline as a diffusers folder and as one SD-v1-style file, loads both back
offline, and draws 8 prompts x 3 samplers (DDIM, Euler a, DPM++ 2M; 25 steps, guidance 4, seed = prompt
index) with ours and with each loaded pipeline, printing the largest |difference| on [0, 1]
pixels per sampler, and the export and load times (one thread). Writes benchmarks/results/diffusers_export.json.

Run: HF_HUB_OFFLINE=1 python benchmarks/diffusers_export.py [--steps 25]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import StableDiffusionPipeline

from diffusion_notes import pretrained
from diffusion_notes.practice.checkpoints import export
from diffusion_notes.practice.checkpoints.compare import max_difference
from diffusion_notes.stable_diffusion.ldm import eval_prompts


def timed(f):
    start = time.perf_counter()
    value = f()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = pretrained.load("stable_diffusion", device="cpu")
    prompts, _ = eval_prompts("heldout", 8)
    with tempfile.TemporaryDirectory() as tmp:
        folder, file = Path(tmp) / "sd_tiny", Path(tmp) / "sd_tiny.safetensors"
        _, t_export = timed(lambda: export.write_diffusers(pipe, folder))
        _, t_single = timed(lambda: export.write_single_file(pipe, file))
        loaded, t_load = timed(lambda: StableDiffusionPipeline.from_pretrained(folder, local_files_only=True))
        single, t_load_single = timed(lambda: StableDiffusionPipeline.from_single_file(
            str(file), config=str(folder), local_files_only=True))
        result = {"prompts": prompts, "steps": args.steps, "guidance_scale": 4.0,
                  "folder_mb": round(export.folder_size(folder) / 1e6, 1),
                  "file_mb": round(file.stat().st_size / 1e6, 1),
                  "export_s": round(t_export, 2), "export_single_file_s": round(t_single, 2),
                  "load_s": round(t_load, 2), "load_single_file_s": round(t_load_single, 2)}
        (diffs, t_draw) = timed(lambda: max_difference(pipe, loaded, prompts, steps=args.steps))
        result["max_difference_from_pretrained"] = {k: float(f"{v:.2e}") for k, v in diffs.items()}
        diffs = max_difference(pipe, single, prompts, steps=args.steps)
        result["max_difference_from_single_file"] = {k: float(f"{v:.2e}") for k, v in diffs.items()}
        result["compare_s"] = round(t_draw, 1)
    for key, value in result.items():
        print(f"{key}: {value}")
    out = Path(__file__).parent / "results" / "diffusers_export.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
