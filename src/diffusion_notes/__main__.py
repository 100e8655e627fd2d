"""The command line: python -m diffusion_notes {train,ship,list,generate,export,webui} ...

Each subcommand is a pair of functions, one that adds its arguments and one
that runs it, registered in COMMANDS; a new subcommand (e.g. `generate`) is one
more pair. Imports of torch and the models happen inside the run functions, so
`--help` is quick.
"""

from __future__ import annotations

import argparse
import os
import sys


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a recipe name, e.g. toy2d, clip, shapes_classifier")
    p.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="examples per step (default: the recipe's)")
    p.add_argument("--seed", type=int, help="seed of initialisation and data (default 0)")
    p.add_argument("--out", help="run directory (default runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=500, metavar="K", help="save a checkpoint every K steps")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), help="after warm-up (default cosine)")
    p.add_argument("--max-seconds", type=float, help="stop (with a checkpoint) after this long; resume later")
    p.add_argument("--device", help="cpu, cuda or mps (default: CUDA, then MPS, then CPU; cpu reproduces shipped runs)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# Each command imports what it needs when it runs, so `--help` and `list` answer without loading torch's models.


def _run_train(args) -> int:
    import torch

    from diffusion_notes.training.loop import run
    from diffusion_notes.training.run_state import TrainArgs

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or os.path.join("runs", args.model)
    try:
        result = run(TrainArgs(
            args.model,
            steps=args.steps,
            batch_size=args.batch_size,
            out_dir=out,
            seed=args.seed,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            config_overrides=args.set or None,
            progress=not args.no_progress,
            max_seconds=args.max_seconds,
            lr_schedule=args.lr_schedule,
            device=args.device,
        ))
    except KeyboardInterrupt as stop:
        if _main_process():
            print(f"\n{stop}" if str(stop) else "\ninterrupted", file=sys.stderr)
        return 130
    if not _main_process():  # under torchrun / accelerate launch rank 0 reports for every process
        return 0
    if result.finished:
        weights = result.run_dir / "model.safetensors"
        print(f"done: {result.step} steps in {result.seconds:.1f} s; weights in {weights}")
        print(f"ship them with: python -m diffusion_notes ship {result.run_dir}")
    else:
        resume = f"python -m diffusion_notes train {args.model} --out {out} --resume"
        print(f"stopped at step {result.step}; continue with: {resume}")
    return 0


def _main_process() -> bool:
    """Rank 0 of a data-parallel launch (torchrun, accelerate launch set RANK), or a plain run."""
    return os.environ.get("RANK", "0") == "0"


def _add_ship(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory (holding model.safetensors)")
    p.add_argument("--name", help="shipped name (default: the recipe's name)")
    p.add_argument("--weights-dir", help="where to ship (default: the package's weights/)")
    p.add_argument("--no-eval", action="store_true", help="skip the recipe's evaluation")


def _run_ship(args) -> int:
    from diffusion_notes.training.ship import ship

    entry = ship(args.run_dir, name=args.name, weights_dir=args.weights_dir, evaluate=not args.no_eval)
    print(f"{entry['file']}: sha256 {entry['sha256']}, {entry['size_bytes']} bytes, metrics {entry['metrics']}")
    return 0


def _add_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights-dir", help="weights directory to list (default: the package's weights/)")


def _run_list(args) -> int:
    from diffusion_notes.pretrained import PIPELINES, available, info
    from diffusion_notes.training.recipes import recipe_names

    names = available(args.weights_dir)
    print(f"recipes: {', '.join(recipe_names())}")
    if not names:
        print("no shipped models yet")
    for name in names:
        entry = info(name, args.weights_dir)
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry["metrics"].items())
        size = f"{entry['size_bytes'] / 1e6:.2f} MB"
        print(f"{name}: {entry['recipe']}, {entry['steps']} steps, {size}, {metrics or 'no metrics'}")
    print(f"pipelines (pretrained.load(NAME)): {', '.join(PIPELINES)}")
    return 0


def _add_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help='the caption, e.g. "a small red circle on the left" ("" = unconditional)')
    p.add_argument("--pipeline", default="stable_diffusion", choices=("stable_diffusion", "unclip", "glide"),
                   help="which shipped pipeline draws (default stable_diffusion)")
    p.add_argument("--negative-prompt", help="used in place of the empty caption in guidance (stable_diffusion only)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (default: the pipeline's)")
    p.add_argument("--sampler", help="a sampler, by our name or its web-UI name (an unknown name lists them all; "
                                     "default: the pipeline's own)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--num-images", type=int, default=1, help="images to draw; more than one are saved as a grid")
    p.add_argument("--init-image", help="a 32x32 RGB image file (or a k-times enlargement, such as an earlier --out): image-to-image from it")
    p.add_argument("--strength", type=float, default=0.8, help="image-to-image: how much to redo, in [0, 1]")
    p.add_argument("--scale", type=int, default=8, help="enlarge the 32x32 output this many times (nearest)")
    p.add_argument("--out", default="out.png", help="PNG file to write (default out.png)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")


def _run_generate(args) -> int:
    import torch
    from PIL import Image, UnidentifiedImageError

    from diffusion_notes import pretrained
    from diffusion_notes.data.images import to_pil

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scale < 1:
        raise ValueError(f"--scale must be a positive int, got {args.scale}")
    init = None
    if args.init_image:
        try:
            with Image.open(args.init_image) as image:
                init = image.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            detail = "it is not an image PIL can read" if isinstance(err, UnidentifiedImageError) else err.strerror or err
            raise ValueError(f"--init-image {args.init_image}: {detail}") from None
        k = init.width // 32
        if init.width == init.height == 32 * k and k > 1:  # an enlarged 32x32 image, e.g. an earlier --out
            init = init.resize((32, 32), Image.BOX)
    # Only what was given overrides the pipeline's own defaults (sampler, guidance scale).
    options = dict(num_inference_steps=args.steps, progress=True,
                   generator=torch.Generator().manual_seed(args.seed), num_images_per_prompt=args.num_images)
    options.update({k: v for k, v in (("sampler", args.sampler), ("guidance_scale", args.guidance_scale))
                    if v is not None})
    if args.pipeline == "stable_diffusion":
        pipe = pretrained.load("stable_diffusion")
        out = pipe(args.prompt, negative_prompt=args.negative_prompt, image=init, strength=args.strength, **options)
    else:
        if args.negative_prompt or init is not None:
            raise ValueError(f"--negative-prompt and --init-image apply to the stable_diffusion pipeline, not {args.pipeline}")
        pipe = pretrained.load(args.pipeline)
        out = pipe(args.prompt, **options)
    _warn_unknown_words(pipe, args.prompt, args.negative_prompt)
    images = out.images  # (N, 3, 32, 32) in [0, 1]
    grid = torch.cat(list(images), dim=2)  # (3, 32, 32 N): a row
    picture = to_pil(grid[None])[0]
    picture = picture.resize((picture.width * args.scale, picture.height * args.scale), Image.NEAREST)
    picture.save(args.out)
    print(f"wrote {args.out} ({len(images)} image{'s' if len(images) > 1 else ''}, {picture.width}x{picture.height})")
    return 0


def _warn_unknown_words(pipe, prompt: str, negative_prompt: str | None) -> None:
    """Print a warning naming each word of the prompts the pipeline's text encoder never saw in training."""
    from diffusion_notes.practice.webui.vocabulary import unknown_words, unknown_words_message

    vocabulary = getattr(getattr(getattr(pipe, "clip", None), "text", None), "vocabulary", None)
    if vocabulary is None:
        return
    for text, where in ((prompt, "the prompt"), (negative_prompt or "", "the negative prompt")):
        words = unknown_words(text, vocabulary)
        if words:
            print(f"warning: {unknown_words_message(words, where)}", file=sys.stderr)


def _add_export(p: argparse.ArgumentParser) -> None:
    models = sorted({model for model, _ in EXPORTS})
    formats = sorted({fmt for _, fmt in EXPORTS})
    p.add_argument("model", help=f"what to export: {', '.join(models)}")
    p.add_argument("--format", required=True, help=f"one of {', '.join(formats)}. onnx: the pipeline's three "
                   "parts as ONNX graphs, with the tokenizer's table, the schedule and the page's JavaScript "
                   "(the model that runs in Chapter 13's page)")
    p.add_argument("--out", required=True, help="the folder to write (created if missing)")
    p.add_argument("--no-check", action="store_true", help="do not run the exported files against torch")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")


def _run_export(args) -> int:
    models = sorted({model for model, _ in EXPORTS})
    formats = sorted({fmt for _, fmt in EXPORTS})
    if args.model not in models:
        raise ValueError(f"export knows the model{'s' if len(models) > 1 else ''} {', '.join(models)}, "
                         f"got {args.model!r}")
    if args.format not in formats:
        raise ValueError(f"--format must be one of {', '.join(formats)}, got {args.format!r}")
    if (args.model, args.format) not in EXPORTS:
        raise ValueError(f"{args.model} cannot be exported as {args.format}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return EXPORTS[args.model, args.format](args)


def _export_stable_diffusion_onnx(args) -> int:
    from diffusion_notes import pretrained
    from diffusion_notes.stable_diffusion import web_export

    pipe = pretrained.load("stable_diffusion", device="cpu")
    student = pretrained.load("lcm_unet", device="cpu") if "lcm_unet" in pretrained.available() else None
    sizes = web_export.export_onnx(pipe, args.out, lcm_unet=student)  # the LCM student: the page's "LCM, 4 steps"
    print(f"wrote {args.out}: " + ", ".join(f"{name} ({size / 1e6:.2f} MB)" for name, size in sizes.items()))
    if args.no_check:
        return 0
    try:
        diffs = web_export.check_onnx(pipe, args.out, lcm_unet=student)
    except ImportError:
        print("onnxruntime is not installed: the ONNX files were not checked against torch")
        return 0
    print("onnxruntime against torch, max |difference|: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    bad = {k: v for k, v in diffs.items() if not v <= web_export.TOLERANCE}
    if bad:
        print(f"error: {', '.join(bad)} differ from torch by more than {web_export.TOLERANCE}", file=sys.stderr)
        return 1
    return 0


def _export_stable_diffusion_diffusers(args) -> int:
    from diffusion_notes import pretrained
    from diffusion_notes.practice.checkpoints import export

    return export.export_diffusers_command(pretrained.load("stable_diffusion", device="cpu"), args.out,
                                           check=not args.no_check)


def _export_stable_diffusion_single_file(args) -> int:
    from diffusion_notes import pretrained
    from diffusion_notes.practice.checkpoints import export

    return export.export_single_file_command(pretrained.load("stable_diffusion", device="cpu"), args.out,
                                             check=not args.no_check)


# (model, format) -> the function that writes it; a new format is one more entry.
EXPORTS = {
    ("stable_diffusion", "onnx"): _export_stable_diffusion_onnx,
    ("stable_diffusion", "diffusers"): _export_stable_diffusion_diffusers,
    ("stable_diffusion", "single-file"): _export_stable_diffusion_single_file,
}


def _add_webui(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--listen", action="store_true",
                   help="listen on every network interface (0.0.0.0), so other machines can reach the app")
    p.add_argument("--port", default="7860", help="port, 1-65535 (default 7860, the web UI's)")
    p.add_argument("--models-dir", default=os.path.join("models", "Stable-diffusion"),
                   help="folder of extra checkpoints, where the merger writes (default models/Stable-diffusion)")
    p.add_argument("--outputs-dir", default="outputs", help="where generated PNGs are saved (default outputs)")
    p.add_argument("--lora-dir", default=os.path.join("models", "Lora"),
                   help="folder of LoRA files (kohya or diffusers .safetensors) for <lora:name:w> (default models/Lora)")
    p.add_argument("--api-auth", metavar="USER:PASS[,USER2:PASS2]", help="HTTP basic auth on the API")
    p.add_argument("--gradio-auth", metavar="USER:PASS[,USER2:PASS2]", help="a login page before the pages")
    p.add_argument("--cors-allow-origins", metavar="ORIGIN[,ORIGIN2]",
                   help="web pages of these origins may call the API from a browser (default: none)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--localization", metavar="NAME",
                   help="label the pages' controls in a language, as the web UI's localization files do (zh_CN)")


def _webui_options(args) -> dict:
    """The webui command's options, checked before anything is loaded (a ValueError for each wrong one)."""
    from diffusion_notes.practice.webui.api_jobs import parse_credentials
    from diffusion_notes.practice.webui.launch import check_address, check_port, is_local, writable_folder

    if args.listen and args.host:
        raise ValueError("give --listen (every interface) or --host ADDRESS, not both")
    host = "0.0.0.0" if args.listen else args.host or "127.0.0.1"
    port = check_port(args.port)
    options = {
        "api_auth": parse_credentials(args.api_auth, "--api-auth") if args.api_auth else None,
        "gradio_auth": parse_credentials(args.gradio_auth, "--gradio-auth") if args.gradio_auth else None,
        "cors_allow_origins": [o.strip() for o in args.cors_allow_origins.split(",") if o.strip()]
        if args.cors_allow_origins else None,
        "localization": args.localization,
    }
    if args.localization:
        from diffusion_notes.practice.webui.localization import load

        load(args.localization)  # an unknown name fails here, before the models load
    check_address(host, port)
    for option in ("--models-dir", "--lora-dir", "--outputs-dir"):
        writable_folder(getattr(args, option[2:].replace("-", "_")), option)
    if not is_local(host):
        print(f"warning: listening on {host}:{port}: anyone who can reach this machine can use the web UI and its "
              "API" + ("" if options["api_auth"] and options["gradio_auth"] else
                       "; --api-auth and --gradio-auth ask for a password"), file=sys.stderr)
    return {"host": host, "port": port, **options}


def _run_webui(args) -> int:
    options = _webui_options(args)  # before torch and the models load: a wrong option fails at once
    import torch

    from diffusion_notes import pretrained
    from diffusion_notes.practice.webui.app import create_app, serve
    from diffusion_notes.practice.webui.launch import build_state

    if args.threads:
        torch.set_num_threads(args.threads)
    state = build_state(pretrained.load("stable_diffusion"), args.models_dir, args.outputs_dir, args.lora_dir)
    app = create_app(state, api_auth=options["api_auth"], gradio_auth=options["gradio_auth"],
                     cors_allow_origins=options["cors_allow_origins"], localization=options["localization"])
    serve(app, options["host"], options["port"])
    return 0


# name -> (help, add_arguments, run)
COMMANDS = {
    "train": ("train a model from its recipe", _add_train, _run_train),
    "ship": ("copy a finished run's weights into the package and the manifest", _add_ship, _run_ship),
    "list": ("list the shipped models and their metrics", _add_list, _run_list),
    "generate": ("draw images from a caption with a shipped pipeline (Stable Diffusion, unCLIP or GLIDE)",
                 _add_generate, _run_generate),
    "export": ("write a shipped pipeline in another format (onnx: the model Chapter 13's page runs)",
               _add_export, _run_export),
    "webui": ("start the web UI and its API on localhost (txt2img, img2img, PNG Info, Checkpoint Merger)",
              _add_webui, _run_webui),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_notes",
        description="Train, ship and list the book's models, generate images, and export them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command][2](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
