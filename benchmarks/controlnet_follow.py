"""Where the shipped ControlNet puts objects, and what it keeps: IoU, shape and colour by caption kind and place.

    python benchmarks/controlnet_follow.py [--n 48] [--threads 1]

Scores `practice.controlnet.evaluate.evaluate_controlnet` on the shipped ControlNet (20 steps of
DPM++ 2M, guidance 4, scale 1): outlines, masks and Canny edges with captions that name no
position, the object's cell or another cell; the plain pipeline beside them; and outlines off the
grid, at intermediate and small sizes, and two objects, each IoU with its 95% bootstrap interval.
Writes benchmarks/results/controlnet_follow.json, which Chapter 17 prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from diffusion_notes import pretrained
from diffusion_notes.practice.controlnet.evaluate import evaluate_controlnet
from diffusion_notes.training.ship import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "controlnet_follow.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=48, help="unseen scenes per set")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = pretrained.load("stable_diffusion_controlnet", "cpu")
    judge = pretrained.load("shapes_classifier", "cpu")
    start = time.perf_counter()
    metrics = evaluate_controlnet(pipe, judge, args.n)
    result = {"command": " ".join(["python", "benchmarks/controlnet_follow.py", *sys.argv[1:]]),
              "machine": machine_info("cpu", torch.get_num_threads()), "n": args.n, "num_inference_steps": 20,
              "seconds": round(time.perf_counter() - start, 1), "run": pretrained.info("controlnet")["train_command"],
              "metrics": metrics}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    for key, value in metrics.items():
        print(f"{key:28s} {value:.3f}")
    print("wrote", RESULTS)


if __name__ == "__main__":
    main()
