"""Do the book's heavy cells draw the same pictures on a GPU as on the CPU, and how much faster are they?

The functions behind the heavy cells of book/13_text_to_image.ipynb (the Stable Diffusion chapter) and of
the unCLIP chapters run once on the CPU and once on the accelerator (CUDA, then MPS), with the same seeds:

  1. a denoising trace: 25 DPM++ 2M steps, a callback decoding each step's z0_hat (the animation);
  2. the slider panel's render(sampler, steps, guidance, seed): 8 images per setting, as the panel shows;
  3. a small guidance sweep, `stable_diffusion.evaluate.guidance_sweep` with the "shapes_classifier"
     (its images, and its fidelity numbers on both devices);
  4. the unCLIP pipeline on a few prompts.

Each model is loaded with `pretrained.load(name, device)` on each device. Noise is drawn on the CPU from
seeded generators and moved, so the pictures should agree up to floating-point differences between the
kernels: to TOL on [0, 1] pixels. TF32 is switched off on CUDA for a like-for-like comparison (`--tf32`
keeps PyTorch's defaults, TF32 convolutions included, to see what it changes). For each function it prints
the CPU seconds (torch's thread count: OMP_NUM_THREADS=2 is the book's machine), the accelerator seconds
(both after a warm-up run, the device synchronised before each clock reading), the speed-up and the
largest |difference| between the two devices' images. Timings are printed, never asserted.

Run:  python benchmarks/gpu_check.py                       # CUDA, else MPS; without either it skips (exit 0)
      python benchmarks/gpu_check.py --device cpu --quick  # dry run, CPU against CPU: differences must be 0
Options: --device cuda|mps|cpu, --quick (fewer prompts and steps), --tf32.
Exit status 1 when a comparison fails badly (images differ by more than BAD, or a function raises on the
accelerator); differences between TOL and BAD are reported but do not fail the run.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from diffusion_notes import pretrained
from diffusion_notes.stable_diffusion import evaluate as ldm_eval
from diffusion_notes.stable_diffusion.ldm import DEFAULT_GUIDANCE_SCALE as SD_GUIDANCE

TOL = 1e-2  # accelerator against CPU: other kernels (and their summation orders) make the last bits differ
BAD = 0.25  # beyond this a seed no longer gives the book's picture
DRY_TOL = 1e-6  # CPU against CPU: the same kernels, so 0 (or float32 rounding, ~1e-7)
W = 46  # width of the checks' names
PROMPTS = ["a large blue square on the right", "a small yellow star at the top",
           "a large red triangle in the center", "a small white cross at the bottom left"]
PANEL_PROMPT = "a small red circle on the left"
FULL = {"trace": (4, 25), "unclip": (4, 25), "sweep": ((1.0, SD_GUIDANCE, 10.0), 6, 8, 15),
        "panel": [("DPM++ 2M", 25, SD_GUIDANCE, 0), ("Euler a", 25, SD_GUIDANCE, 1), ("DDIM", 25, 9.0, 0),
                  ("DPM++ 2M Karras", 15, 1.0, 1)]}
QUICK = {"trace": (2, 10), "unclip": (2, 10), "sweep": ((1.0, SD_GUIDANCE), 2, 4, 10),
         "panel": [("DPM++ 2M", 10, SD_GUIDANCE, 0), ("Euler a", 10, SD_GUIDANCE, 1), ("DDIM", 10, 9.0, 0)]}


def available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return kind == "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Side:
    """One device's shipped models: side.sd, side.unclip, side.classifier, loaded on first use on side.device."""

    NAMES = {"sd": "stable_diffusion", "unclip": "unclip", "classifier": "shapes_classifier"}

    def __init__(self, device):
        self.device = torch.device(device)

    def __getattr__(self, key):
        if key not in Side.NAMES:
            raise AttributeError(key)
        self.__dict__[key] = pretrained.load(Side.NAMES[key], self.device)
        return self.__dict__[key]


class Recording:
    """The pipeline, keeping the images of every call: guidance_sweep returns only its scores."""

    def __init__(self, pipe):
        self.pipe, self.images = pipe, []

    def __call__(self, *args, **kwargs):
        out = self.pipe(*args, **kwargs)
        self.images.append(out.images)
        return out


# The functions behind the heavy cells. Each returns (images in [0, 1] on the CPU, fidelity numbers or None).

def trace(side, n_prompts, steps):
    """Chapter 13's denoising animation: DPM++ 2M with a callback decoding z0_hat at every step."""
    pipe, frames = side.sd, []
    out = pipe(PROMPTS[:n_prompts], num_inference_steps=steps, sampler="dpmpp_2m",
               generator=torch.Generator().manual_seed(1),
               callback=lambda i, t, z_t, z0_hat: frames.append(pipe.decode_latents(z0_hat).cpu()))
    return torch.stack([*frames, out.images]), None  # (steps + 1, B, 3, 32, 32)


def render(side, sampler, steps, guidance, seed):
    """Chapter 13's slider panel: the 8 images one panel update draws."""
    return side.sd(PANEL_PROMPT, num_inference_steps=steps, guidance_scale=guidance, sampler=sampler,
                   generator=torch.Generator().manual_seed(seed), num_images_per_prompt=8).images, None


def sweep(side, scales, n_prompts, per_prompt, steps, classifier=None):
    """Chapter 13's guidance sweep (one-object prompts, as the chapter runs it)."""
    pipe = Recording(side.sd)
    rows = ldm_eval.guidance_sweep(pipe, classifier or side.classifier, scales, n_prompts=n_prompts,
                                   per_prompt=per_prompt, n_objects=1, num_inference_steps=steps)
    return torch.cat(pipe.images), [row["fidelity"] for row in rows]


def unclip(side, n_prompts, steps):
    """The unCLIP chapters' pipeline call: prior, 16x16 decoder, upsampler."""
    return side.unclip(PROMPTS[:n_prompts], num_inference_steps=steps,
                       generator=torch.Generator().manual_seed(0)).images, None


def timed(fn, side):
    """fn(side) after a warm-up call (CUDA's lazy start, the allocator, kernel choices), in seconds."""
    fn(side)
    synchronize(side.device)
    start = time.perf_counter()
    out = fn(side)
    synchronize(side.device)
    return out, time.perf_counter() - start


def compare(name, fn, cpu, acc, tol, bad, fidelity_tol):
    """Run fn on both sides and print one line; returns "ok", "off" (beyond tol), "bad" or "error"."""
    (images_cpu, fid_cpu), t_cpu = timed(fn, cpu)
    try:
        (images_acc, fid_acc), t_acc = timed(fn, acc)
    except Exception as err:  # any error: report it, it is what this check looks for
        print(f"{name:<{W}} CPU {t_cpu:6.2f} s | {acc.device.type} FAILED: {type(err).__name__}: {err}")
        return "error"
    diff = (images_cpu - images_acc.cpu()).abs()
    worst = float(diff.max())
    status = "ok" if worst <= tol else "bad" if worst > bad else "off"
    verdict = {"ok": f"<= {tol:.0e} holds", "off": f"> {tol:.0e} DIFFERS (but < {bad:g})",
               "bad": f"> {bad:g} FAILS"}[status]
    print(f"{name:<{W}} CPU {t_cpu:6.2f} s | {acc.device.type} {t_acc:6.2f} s | x{t_cpu / t_acc:5.1f} | "
          f"max |diff| {worst:.1e} (mean {float(diff.mean()):.1e}) {verdict}")
    if fid_cpu is not None:
        gap = max(abs(a - b) for a, b in zip(fid_cpu, fid_acc))
        same = gap <= fidelity_tol + 1e-12
        status = status if same or status == "bad" else "bad" if fidelity_tol == 0 else "off"
        print(f"{'':<{W}} fidelity per scale: CPU {[round(f, 3) for f in fid_cpu]}, {acc.device.type} "
              f"{[round(f, 3) for f in fid_acc]}: {'agree' if same else 'DIFFER'} (to {fidelity_tol:.3g})")
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "mps", "cpu"),
                        help="the accelerator side (default: CUDA, then MPS); cpu is a CPU-against-CPU dry run")
    parser.add_argument("--quick", action="store_true", help="fewer prompts and steps")
    parser.add_argument("--tf32", action="store_true", help="leave TF32 as PyTorch sets it (convolutions on)")
    args = parser.parse_args(argv)
    kind = args.device or next((k for k in ("cuda", "mps") if available(k)), None)
    if kind is None:
        print("gpu_check: skipped: no CUDA or MPS device: nothing to compare; the chapters ran on the CPU")
        return 0
    if not available(kind):
        parser.error(f"--device {kind}: torch reports no {kind} device on this machine")
    dry = kind == "cpu"
    tol, bad = (DRY_TOL, DRY_TOL) if dry else (TOL, BAD)
    if kind == "cuda" and not args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = False  # like-for-like float32 on both sides
        torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name() if kind == "cuda" else kind
    tf32 = (f", TF32 matmul {torch.backends.cuda.matmul.allow_tf32} / convolutions "
            f"{torch.backends.cudnn.allow_tf32}" if kind == "cuda" else "")
    print(f"gpu_check: CPU ({torch.get_num_threads()} thread(s)) against {name}{' (dry run)' if dry else ''}; "
          f"torch {torch.__version__}{tf32}; {'quick' if args.quick else 'full'} settings")
    print(f"images compared on [0, 1] pixels: agree to {tol:.0e}; fail badly beyond {bad:g}")
    config = QUICK if args.quick else FULL
    cpu, acc = Side("cpu"), Side(kind)
    scales, n_prompts, per_prompt, _ = config["sweep"]
    fidelity_tol = 0.0 if dry else 1 / (n_prompts * per_prompt)  # one image read differently
    checks = [(f"denoising trace ({config['trace'][1]} DPM++ 2M steps)", lambda s: trace(s, *config["trace"]))]
    checks += [(f"panel {sampler}, {steps} steps, g={g:g}, seed {seed}",
                lambda s, o=(sampler, steps, g, seed): render(s, *o)) for sampler, steps, g, seed in config["panel"]]
    checks += [(f"guidance sweep {list(scales)}", lambda s: sweep(s, *config["sweep"]))]
    checks += [(f"unCLIP ({config['unclip'][1]} decoder steps)", lambda s: unclip(s, *config["unclip"]))]
    results = {}
    for label, fn in checks:
        results[label] = compare(label, fn, cpu, acc, tol, bad, fidelity_tol)
        if label.startswith("guidance sweep") and results[label] == "error":
            print(f"{'':<{W}} again with the classifier on the CPU, to compare the images:")
            results[label + " (CPU classifier)"] = compare(
                "guidance sweep, classifier on CPU", lambda s: sweep(s, *config["sweep"], classifier=cpu.classifier),
                cpu, acc, tol, bad, fidelity_tol)
    failed = [k for k, v in results.items() if v in ("bad", "error")]
    off = [k for k, v in results.items() if v == "off"]
    print(f"gpu_check: {len(results) - len(failed) - len(off)} of {len(results)} comparisons hold"
          + (f"; differ beyond {tol:.0e}: {', '.join(off)}" if off else "")
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
