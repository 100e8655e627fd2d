"""Textual inversion, LoRA (rank 1, 4, 16), DreamBooth, and DreamBooth and LoRA with prior preservation, side by side.

Each row trains with its recipe's own settings (`python -m diffusion_notes train <recipe>`), on one
CPU thread, then draws 64 held-out heart prompts (colours the six pictures do not show) and 64 prompts
of the original concepts, 20 DPM++ 2M steps, guidance 4, read by the judge that knows hearts.
Columns: trained parameters, CPU minutes of training, heart fidelity ("all": shape, colour, size and
place right), and drift: the original prompts' fidelity before and after. The base model is row 0.
Writes benchmarks/results/finetune.json (Chapter 16 prints it); the runs stay in runs/finetune/ so
the best LoRA and the embedding can be shipped from them.

Run: python benchmarks/finetune_table.py
"""

import json
import platform
import sys
from pathlib import Path

import torch

from diffusion_notes import pretrained
from diffusion_notes.practice.finetune.concept import concept_scores
from diffusion_notes.practice.finetune.learner import learner_pipeline
from diffusion_notes.practice.finetune.lora import count_parameters
from diffusion_notes.training import frozen
from diffusion_notes.training.loop import train
from diffusion_notes.training.recipes import get_recipe

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "finetune"
ROWS = [  # (row, recipe, config overrides)
    ("textual inversion", "textual_inversion", {}),
    ("LoRA r=1", "lora", {"rank": 1, "alpha": 1.0}),
    ("LoRA r=4", "lora", {}),
    ("LoRA r=16", "lora", {"rank": 16, "alpha": 16.0}),
    ("DreamBooth", "dreambooth", {}),
    ("DreamBooth + prior", "dreambooth_prior", {}),
    ("LoRA r=16 + prior", "dreambooth_lora_prior", {}),
]


def main() -> int:
    judge, clip = frozen.concept_judge(), frozen.clip()
    base = concept_scores(pretrained.stable_diffusion("cpu"), judge)
    table = [{"method": "base model", "parameters": 0, "cpu_minutes": 0.0, **base}]
    print(table[0], flush=True)
    for row, recipe_name, overrides in ROWS:
        recipe = get_recipe(recipe_name)
        out = RUNS / row.replace(" ", "_").replace("=", "").replace("+", "and")
        done = (out / "model.safetensors").is_file()
        result = train(recipe, out_dir=out, config_overrides=overrides, progress=False,
                       resume=(out / "checkpoint.safetensors").is_file())
        learner = result.model
        scores = concept_scores(learner_pipeline(learner, clip), judge, word=learner.config.token)
        entry = {"method": row, "recipe": recipe_name, "overrides": overrides, "steps": recipe.steps,
                 "parameters": (count_parameters(learner) if learner.row is None
                                else learner.text.token_embedding.weight.shape[1]),
                 "cpu_minutes": round(result.seconds / 60, 2), "run": str(out.relative_to(ROOT)),
                 "trained_before": done, **scores}
        table.append(entry)
        print(entry, flush=True)
    out = ROOT / "benchmarks" / "results" / "finetune.json"
    out.write_text(json.dumps({"rows": table, "prompts": 64, "steps": 20, "guidance_scale": 4.0,
                               "torch": torch.__version__, "threads": 1, "machine": platform.machine()},
                              indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
