"""Seconds for one web-UI job at 32x32, at 512x512, and drawn at 32x32 then taken to 512x512 by hires fix.

All three: txt2img, one image, 20 DPM++ 2M steps, CFG 4, the same seed, through `generate`. The hires
job draws its first pass at 32x32 and its second pass (the "Latent" upscaler, 20 steps at strength
0.5) at 512x512; its hr_scale is 16. Each is timed `repeats` times after one warm-up at 32x32;
medians of wall-clock seconds and of the process's CPU seconds (on a shared machine, with one
thread, the CPU seconds are the steadier measure), and the ratio of each to the 32x32 job timed in
the same run. Writes benchmarks/results/webui_sizes.json.

Run: python benchmarks/webui_sizes.py [--threads N] [--repeats R]
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from diffusion_notes import pretrained
from diffusion_notes.practice.webui.generate import Settings, generate

ROOT = Path(__file__).resolve().parents[1]
JOB = dict(prompt="a small red circle on the left", steps=20, sampler_name="DPM++ 2M", cfg_scale=4.0, seed=1)
JOBS = {
    "32x32": dict(width=32, height=32),
    "512x512": dict(width=512, height=512),
    "32x32 + hires fix to 512x512": dict(width=32, height=32, enable_hr=True, hr_scale=16.0, hr_upscaler="Latent",
                                         denoising_strength=0.5),
}


def seconds(pipe, size: dict) -> tuple[float, float, tuple[int, int]]:
    """(wall-clock seconds, CPU seconds, picture size) of one job."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = generate(pipe, Settings(**JOB, **size))
    return time.perf_counter() - wall, time.process_time() - cpu, result.images[0].size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each job (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = pretrained.load("stable_diffusion", device="cpu")
    seconds(pipe, JOBS["32x32"])  # warm-up
    runs = {name: [] for name in JOBS}
    for _ in range(args.repeats):
        for name, size in JOBS.items():
            runs[name].append(seconds(pipe, size))
    rows = {}
    for name, found in runs.items():
        wall, cpu = statistics.median(r[0] for r in found), statistics.median(r[1] for r in found)
        rows[name] = {"seconds": wall, "cpu_seconds": cpu, "picture": list(found[0][2])}
    for name, row in rows.items():
        row["ratio_to_32x32"] = row["seconds"] / rows["32x32"]["seconds"]
        row["cpu_ratio_to_32x32"] = row["cpu_seconds"] / rows["32x32"]["cpu_seconds"]
        print(f"{name:30s} {row['seconds']:8.2f} s ({row['ratio_to_32x32']:6.1f}x)  CPU {row['cpu_seconds']:8.2f} s "
              f"({row['cpu_ratio_to_32x32']:6.1f}x the 32x32 job)  -> {row['picture'][0]}x{row['picture'][1]}")
    out = {"threads": args.threads, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "repeats": args.repeats,
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "jobs": rows,
           "job": JOB}
    (ROOT / "benchmarks/results").mkdir(exist_ok=True)
    (ROOT / "benchmarks/results/webui_sizes.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
