"""The ControlNet's "sudden convergence": IoU against training step, from the checkpoints of a training run.

    python -m diffusion_notes train controlnet --threads 1 --checkpoint-every 50 --out runs/controlnet &
    python benchmarks/controlnet_convergence.py --watch runs/controlnet --snapshots runs/controlnet_snapshots
    python benchmarks/controlnet_convergence.py --snapshots runs/controlnet_snapshots --every 100 --dense-until 300

`--watch` copies the ControlNet's weights out of each new checkpoint (the run overwrites one file);
without it, every snapshot (and step 0, the fresh copy of the shipped UNet) is scored on the same
unseen outlines, captioned without a position (`--caption`), with the shipped Stable Diffusion, and the curve goes to
benchmarks/results/controlnet_convergence.json, which Chapter 17 draws.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from diffusion_notes import pretrained
from diffusion_notes.practice.controlnet.evaluate import eval_set, follow
from diffusion_notes.practice.controlnet.model import ControlNet
from diffusion_notes.practice.controlnet.pipeline import ControlNetPipeline
from diffusion_notes.run_files import load_checkpoint, read_metadata, save_checkpoint
from diffusion_notes.training.ship import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "controlnet_convergence.json"


def watch(run_dir: Path, out: Path, steps: int) -> None:
    """Copy model.* of run_dir/checkpoint.safetensors to out/step_XXXXX.safetensors whenever its step changes."""
    out.mkdir(parents=True, exist_ok=True)
    source, seen = run_dir / "checkpoint.safetensors", -1
    while seen < steps:
        if source.is_file():
            try:
                step = read_metadata(source)["step"]
                if step != seen:
                    tensors, _ = load_checkpoint(source)
                    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
                    save_checkpoint(out / f"step_{step:05d}.safetensors", weights, {"step": step})
                    seen = step
                    print("saved step", step, flush=True)
            except (OSError, ValueError, KeyError):  # caught mid-write: try again
                pass
        time.sleep(5)


def measure(snapshots: Path, n: int, steps: int, kind: str, caption: str, every: int, dense_until: int) -> dict:
    sd = pretrained.stable_diffusion("cpu")
    judge = pretrained.load("shapes_classifier", "cpu")
    items = eval_set(n, kind, caption)
    curve = []
    files = [f for f in sorted(snapshots.glob("step_*.safetensors"))
             if int(f.stem.split("_")[1]) % (50 if int(f.stem.split("_")[1]) <= dense_until else every) == 0]
    for path in [None, *files]:
        net = ControlNet.from_unet(sd.unet)
        if path is not None:
            net.load_state_dict(load_checkpoint(path)[0])
        pipe = ControlNetPipeline(sd.unet, sd.vae, sd.clip, sd.scale_factor, net)
        score = follow(pipe, items, judge, num_inference_steps=steps)
        step = 0 if path is None else int(path.stem.split("_")[1])
        curve.append({"step": step, **{k: round(score[k], 4) for k in ("iou", "shape", "colour")}})
        print(curve[-1], flush=True)
    return {"command": " ".join(["python", "benchmarks/controlnet_convergence.py", *sys.argv[1:]]),
            "machine": machine_info("cpu", torch.get_num_threads()), "kind": kind, "caption": caption, "n": n,
            "num_inference_steps": steps, "run": pretrained.info("controlnet")["train_command"], "curve": curve}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--snapshots", default="runs/controlnet_snapshots")
    p.add_argument("--watch", help="a run directory to copy checkpoints from, until --steps")
    p.add_argument("--steps", type=int, default=2000, help="the run's last step (with --watch)")
    p.add_argument("--n", type=int, default=32, help="unseen conditions scored per checkpoint")
    p.add_argument("--sampling-steps", type=int, default=10)
    p.add_argument("--kind", default="outline")
    p.add_argument("--caption", default="none", help="none, same or other: what the captions say about the place")
    p.add_argument("--every", type=int, default=50, help="score the snapshots whose step is a multiple of this")
    p.add_argument("--dense-until", type=int, default=0, help="up to this step, score every snapshot (each 50 steps)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.watch:
        watch(Path(args.watch), Path(args.snapshots), args.steps)
        return
    result = measure(Path(args.snapshots), args.n, args.sampling_steps, args.kind, args.caption, args.every,
                     args.dense_until)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", RESULTS)


if __name__ == "__main__":
    main()
