"""The training mix, ablated: the latent UNet on 50% two-object pictures against the Shapes default of 30%.

Writes benchmarks/results/two_object_mix.json; Chapter 11 reads it.

Two runs of the same recipe, the same seed, steps, batch and learning-rate schedule, differing only
in the share of training pictures that show two objects: `ldm_unet` (0.5, the shipped UNet's mix) and
`ldm_unet_mix30` (0.3). Each is sampled through the Stable Diffusion pipeline at its defaults on
captions no model trained on, one-object and two-object, the same captions and seeds for both, and
judged by the evaluation kit's classifier (colour and shape right, per picture). Intervals are 95%
percentile bootstraps over captions and, within each, pictures; the difference between the runs is
paired (same caption, same seed). The shipped UNet (the 50% mix, trained longer) is measured too.

Run: python benchmarks/two_object_mix.py [--steps 2500] [--train] [--max-seconds S] [--threads 1]
     [--prompts 96] [--per-prompt 4]
With --train, a run that has not finished is trained (or resumed) first, in runs/mix/<recipe>; the two
runs can also be trained side by side by hand, one thread each:
     python -m diffusion_notes train ldm_unet_mix30 --steps 2500 --threads 1 --out runs/mix/ldm_unet_mix30
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffusion_notes import pretrained
from diffusion_notes.__main__ import main as cli
from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.evaluation.metrics import bootstrap_interval, fidelity_per_image
from diffusion_notes.run_files import WEIGHTS_NAME
from diffusion_notes.stable_diffusion.ldm import DEFAULT_GUIDANCE_SCALE
from diffusion_notes.training.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"ldm_unet": 0.5, "ldm_unet_mix30": 0.3}  # recipe -> share of two-object training pictures
SETS = {"one": ("train", 0.0, 21), "two": ("train", 1.0, 23)}  # split, p_two_objects, seed: captions nobody trained on


def caption_set(name: str, n: int) -> tuple[list[str], list[dict]]:
    split, p_two, seed = SETS[name]
    dataset = ShapesDataset(split, n, seed=seed, p_two_objects=p_two)
    attributes = [dataset.attributes(i) for i in range(n)]
    return [dataset.caption(i, a) for i, a in enumerate(attributes)], attributes


@torch.no_grad()
def right_per_picture(pipe, prompts, attributes, per_prompt, classifier) -> torch.Tensor:
    """(P, k) float: colour and shape right for each of the k pictures of each of the P captions."""
    images = pipe(prompts, num_images_per_prompt=per_prompt, generator=torch.Generator().manual_seed(0)).images
    repeated = [a for a in attributes for _ in range(per_prompt)]
    scores = fidelity_per_image(images * 2 - 1, repeated, classifier)["colour_shape"]  # (prompts * per_prompt,)
    return scores.view(len(prompts), per_prompt).double()


def interval(values: torch.Tensor, resamples: int) -> dict:
    """Mean of (P, k) values, with captions resampled and then each caption's pictures."""
    P, k = values.shape
    inner = torch.Generator().manual_seed(1)
    lo, hi = bootstrap_interval(lambda idx: values[idx[:, None], torch.randint(k, (P, k), generator=inner)].mean(),
                                P, resamples)
    return {"mean": round(float(values.mean()), 4), "ci": [round(lo, 4), round(hi, 4)]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2500, help="training steps of each run (default 2500)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "mix"), help="where the two runs live")
    parser.add_argument("--train", action="store_true", help="train (or resume) a run that has not finished")
    parser.add_argument("--max-seconds", type=float, default=None, help="passed to train: stop with a checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "two_object_mix.json"))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.prompts < 2 or args.per_prompt < 1:
        parser.error("--steps and --per-prompt must be at least 1, --prompts at least 2")
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)

    for recipe in ARMS:
        run = runs / recipe
        if (run / WEIGHTS_NAME).is_file():
            continue
        command = ["train", recipe, "--steps", str(args.steps), "--threads", str(args.threads), "--out", str(run),
                   "--checkpoint-every", "250"] + (["--resume"] if (run / "checkpoint.safetensors").is_file() else []) \
            + (["--max-seconds", str(args.max_seconds)] if args.max_seconds else [])
        if not args.train:
            print(f"{run / WEIGHTS_NAME} is missing: run with --train, "
                  f"or python -m diffusion_notes {' '.join(command)}")
            return 2
        if cli(command) != 0 or not (run / WEIGHTS_NAME).is_file():
            print(f"{recipe} has not finished (stopped by --max-seconds?): run again with --train to resume it")
            return 1

    classifier = pretrained.load("shapes_classifier")
    pipe = pretrained.load("stable_diffusion")
    shipped = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    sets = {name: caption_set(name, args.prompts) for name in SETS}
    invocation = " ".join(sys.argv[1:] if argv is None else argv)
    results = {"command": "python benchmarks/" + Path(__file__).name + " " + invocation,
               "prompts": args.prompts, "per_prompt": args.per_prompt, "resamples": args.resamples,
               "guidance_scale": DEFAULT_GUIDANCE_SCALE, "sampling_steps": 25,
               "arms": {}}
    right = {}
    started = time.perf_counter()
    for name, p_two in {**ARMS, "shipped": 0.5}.items():
        if name == "shipped":
            weights, info = shipped, pretrained.info("ldm_unet")
            steps, batch = info["steps"], info["batch_size"]
        else:
            weights, steps, batch = load_file(runs / name / WEIGHTS_NAME), args.steps, get_recipe(name).batch_size
        pipe.unet.load_state_dict(weights)
        right[name] = {s: right_per_picture(pipe, *sets[s], args.per_prompt, classifier) for s in SETS}
        results["arms"][name] = {"p_two_objects_train": p_two, "steps": steps, "batch_size": batch,
                                 **{s: interval(right[name][s], args.resamples) for s in SETS}}
        print(f"{name:<16} two-object share {p_two:.0%}, {steps} steps: "
              + ", ".join(f"{s} object(s) {results['arms'][name][s]['mean']:.3f} {results['arms'][name][s]['ci']}"
                          for s in SETS), flush=True)
    results["difference_50_minus_30"] = {s: interval(right["ldm_unet"][s] - right["ldm_unet_mix30"][s], args.resamples)
                                         for s in SETS}
    differences = results["difference_50_minus_30"].items()
    print("50% minus 30%: " + ", ".join(f"{s} {v['mean']:+.3f} {v['ci']}" for s, v in differences))
    results["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
