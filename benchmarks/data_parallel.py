"""Is data parallelism worth it on a CPU? 1 process x 2 threads against 2 processes x 1 thread.

Both run the same training command (`python -m diffusion_notes train RECIPE`) at the same global
batch, the second under torchrun (gloo). Each run's time is read from its own losses.csv (the
`seconds` column), from the end of the warm-up steps to the last step, so process start-up and
imports are not counted. Printed: milliseconds per step of each (and of 1 process x 1 thread, for
reference), their ratio (measured in this run, one after the other on the same machine), and the
largest loss difference between the two.

Run: python benchmarks/data_parallel.py [--recipe toy2d] [--steps 300] [--batch-size 512] [--set KEY=VALUE ...]
"""

import argparse
import csv
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

WARMUP_STEPS = 20  # not timed: the first steps allocate and warm the caches


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(launcher: list[str], args, out: Path, threads: int) -> list[tuple[float, float]]:
    cmd = launcher + ["-m", "diffusion_notes", "train", args.recipe, "--steps", str(args.steps),
                      "--batch-size", str(args.batch_size), "--threads", str(threads), "--no-progress",
                      "--checkpoint-every", str(10**9), "--out", str(out)]
    cmd += [w for item in args.set for w in ("--set", item)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), DIFFUSION_NOTES_DEVICE="cpu")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    with open(out / "losses.csv") as f:
        return [(float(row["loss"]), float(row["seconds"])) for row in csv.DictReader(f)]


def _per_step(rows) -> float:
    return (rows[-1][1] - rows[WARMUP_STEPS - 1][1]) / (len(rows) - WARMUP_STEPS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="toy2d")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    if args.steps <= WARMUP_STEPS:
        sys.exit(f"--steps must be more than the {WARMUP_STEPS} warm-up steps")
    with tempfile.TemporaryDirectory() as tmp:
        single = _run([sys.executable], args, Path(tmp) / "single", threads=1)  # the baseline both beat, or not
        one = _run([sys.executable], args, Path(tmp) / "one", threads=2)
        two = _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                    "--master-addr", "127.0.0.1", "--master-port", str(_port())], args, Path(tmp) / "two", threads=1)
    a, b = _per_step(one), _per_step(two)
    diff = max(abs(x[0] - y[0]) for x, y in zip(one, two))
    print(f"{args.recipe}, {args.steps} steps at a global batch of {args.batch_size} "
          f"(timed after {WARMUP_STEPS} warm-up steps), {os.cpu_count()} CPUs")
    print(f"  1 process  x 1 thread:  {1000 * _per_step(single):8.2f} ms/step (for reference)")
    print(f"  1 process  x 2 threads: {1000 * a:8.2f} ms/step")
    print(f"  2 processes x 1 thread: {1000 * b:8.2f} ms/step")
    print(f"  ratio (2 processes / 1 process): {b / a:.2f}x the time per step")
    print(f"  largest loss difference: {diff:.2e} (2 threads and 2 processes sum in other orders)")


if __name__ == "__main__":
    main()
