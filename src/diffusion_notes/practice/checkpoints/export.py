"""Write our Stable Diffusion as diffusers writes one: a folder of parts, or one SD-v1-style .safetensors file.

    write_diffusers(pipe, "sd_tiny")      # sd_tiny/{unet,vae,text_encoder,tokenizer,scheduler}/, model_index.json
    StableDiffusionPipeline.from_pretrained("sd_tiny")           # loads offline and draws our pictures
    write_single_file(pipe, "sd_tiny.safetensors")
    StableDiffusionPipeline.from_single_file("sd_tiny.safetensors", config="sd_tiny")

The tokenizer is transformers' CLIPTokenizer built from open_clip's own BPE table (the same
49,408 tokens and 48,894 merges OpenAI's CLIP has), so nothing is downloaded; it pads with
id 0, as open_clip and our tokenizer do (SD 2's tokenizer does too; SD 1's pads with the end id).
Like SD 2's, it takes its pad token "!" for a special token, so a "!" typed in a prompt becomes
id 0 where open_clip writes 256; the Shapes captions have none.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from diffusion_notes.practice.checkpoints import sd_keys, to_diffusers
from diffusion_notes.practice.checkpoints.schedulers import export_scheduler
from diffusion_notes.run_files import atomic_write_bytes

DEFAULT_SAMPLER = "dpmpp_2m"  # our pipeline's default, written as the folder's scheduler


def tokenizer_files(folder) -> tuple[Path, Path]:
    """vocab.json and merges.txt of open_clip's BPE, under the special-token names transformers' CLIP uses."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {special.get(token, token): i for token, i in bpe.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def clip_tokenizer():
    """A transformers CLIPTokenizer giving open_clip's ids: [start, BPE ids, end, 0, ...], 77 long."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = tokenizer_files(tmp)
        return CLIPTokenizer(vocab=str(vocab), merges=str(merges), pad_token="!", model_max_length=77)


def diffusers_pipeline(pipe, sampler: str = DEFAULT_SAMPLER):
    """Our LatentDiffusionPipeline as a diffusers StableDiffusionPipeline (in memory, float32, CPU).

    Its scheduler (`schedulers.export_scheduler`) is our default sampler's, with SD v1's steps_offset=1
    (diffusers' pipeline insists on it; the "linspace" grid does not read it) and our DDIM's options
    (no clipping, set_alpha_to_one), which a DDIMScheduler made `from_config` of it reads.
    """
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=to_diffusers.diffusers_vae(pipe.vae, pipe.scale_factor), text_encoder=to_diffusers.transformers_text_encoder(pipe.clip),
        tokenizer=clip_tokenizer(), unet=to_diffusers.diffusers_unet(pipe.unet),
        scheduler=export_scheduler(sampler, pipe.schedule), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def write_diffusers(pipe, folder, sampler: str = DEFAULT_SAMPLER) -> Path:
    """Save our pipeline as a diffusers folder that `StableDiffusionPipeline.from_pretrained(folder)` loads."""
    folder = Path(folder)
    diffusers_pipeline(pipe, sampler).save_pretrained(folder, safe_serialization=True)
    return folder


def single_file_tensors(pipe) -> dict[str, torch.Tensor]:
    """Our three parts under an SD v1 checkpoint's names (model.diffusion_model., first_stage_model., cond_stage_model.)."""
    return sd_keys.single_file_state(
        to_diffusers.unet_state(pipe.unet), to_diffusers.unet_config(pipe.unet),
        to_diffusers.vae_state(pipe.vae), to_diffusers.vae_config(pipe.vae, pipe.scale_factor),
        to_diffusers.text_state(pipe.clip))


def write_single_file(pipe, path, dtype: torch.dtype = torch.float32) -> Path:
    """One .safetensors file with SD-v1-style names, the kind a web UI's models folder holds."""
    from safetensors.torch import save

    tensors = {k: v.to(dtype).contiguous() for k, v in single_file_tensors(pipe).items()}
    metadata = {"format": "pt", "diffusion_notes": "tiny Stable Diffusion v1 layout (Chapter 15)"}
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def folder_size(folder) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------
# What `python -m diffusion_notes export stable_diffusion --format diffusers|single-file` runs.

TOLERANCE = 1e-4  # largest |ours - diffusers'| allowed on [0, 1] pixels
CHECK_PROMPT = "a small red circle on the left"
SINGLE_FILE_NAME = "diffusion_notes_sd.safetensors"


def _check(pipe, d_pipe, what: str) -> int:
    import sys

    from diffusion_notes.practice.checkpoints.compare import max_difference

    diffs = max_difference(pipe, d_pipe, [CHECK_PROMPT], steps=10)
    print(f"{what} against ours, {CHECK_PROMPT!r}, 10 steps, max |difference| on [0, 1] pixels: "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    bad = [k for k, v in diffs.items() if not v <= TOLERANCE]
    if bad:
        print(f"error: {', '.join(bad)} differ by more than {TOLERANCE}", file=sys.stderr)
        return 1
    return 0


def export_diffusers_command(pipe, out, check: bool = True) -> int:
    """Write the diffusers folder, load it back offline with diffusers and compare its pictures with ours."""
    import time

    from diffusers import StableDiffusionPipeline

    start = time.perf_counter()
    write_diffusers(pipe, out)
    print(f"wrote {out} ({folder_size(out) / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s; load it with "
          f"diffusers.StableDiffusionPipeline.from_pretrained({str(out)!r})")
    if not check:
        return 0
    return _check(pipe, StableDiffusionPipeline.from_pretrained(out, local_files_only=True), "diffusers' pipeline")


def export_single_file_command(pipe, out, check: bool = True) -> int:
    """Write one SD-v1-style .safetensors (`out` itself if it ends in .safetensors, else inside the folder `out`)."""
    from diffusers import StableDiffusionPipeline

    path = Path(out) if str(out).endswith(".safetensors") else Path(out) / SINGLE_FILE_NAME
    write_single_file(pipe, path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); load it with diffusers.StableDiffusionPipeline."
          "from_single_file(path, config=FOLDER), FOLDER written by: python -m diffusion_notes export "
          "stable_diffusion --format diffusers --out FOLDER")
    if not check:
        return 0
    with tempfile.TemporaryDirectory() as config:
        write_diffusers(pipe, config)
        loaded = StableDiffusionPipeline.from_single_file(str(path), config=config, local_files_only=True)
        return _check(pipe, loaded, "from_single_file")


def quiet() -> None:
    """Silence diffusers', transformers' and the hub's progress bars and warnings (a chapter prints its own numbers)."""
    import diffusers
    import huggingface_hub
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
