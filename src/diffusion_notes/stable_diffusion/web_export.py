"""The shipped Stable Diffusion as files a web page runs: three ONNX graphs, the vocabulary, the sampler.

`python -m diffusion_notes export stable_diffusion --format onnx --out DIR` writes into DIR

    text_encoder.onnx   ids (B, 77) int64 open_clip ids -> token states (B, 77, D_c)       tau(y)
    unet.onnx           x (B, 4, 8, 8), t (B,) float32, context (B, 77, D_c) -> eps (B, 4, 8, 8)
    lcm_unet.onnx       the same for the LCM student (`pretrained.load("lcm_unet")`), when one is given:
                        the page's "LCM, 4 steps", loaded only when the reader picks it
    vae_decoder.onnx    z (B, 4, 8, 8) scaled latents -> images (B, 3, 32, 32) in [0, 1], i.e.
                        (D(z / scale_factor) + 1) / 2 clamped: `LatentDiffusionPipeline.decode_latents`
    vocab.json          the tokenizer's table (`web_vocab`)
    config.json         the scale factor, the latent shape, the page's defaults, and for each of the
                        page's samplers and step counts the sampling table (`sampling_table`): the
                        grid, every step's coefficients, where noise is drawn, x_T's scale (LCM's too)
    sd_page.js          the page's JavaScript (package data, `web/`): tokenizer, torch's randn,
                        guidance, the DDIM, Euler a, DPM++ 2M and LCM updates reading the table, the panel
    dn_coi_sw.js        a service worker that adds the cross-origin isolation headers on a static host
                        (package data), so that onnxruntime-web may run on several threads there; it
                        must cover onnxruntime-web's folder too: the book's build copies it to the root
    index.html          the panel alone, for the folder served by itself next to onnxruntime-web in ../ort/

B is a named dynamic axis, "B", in every graph: the page fixes it when it opens a session (onnxruntime's
free dimension overrides: B = 2 for a guided UNet call, 1 without guidance), so that onnxruntime folds
every shape computation into a constant before it runs. Exported with torch's TorchScript exporter
(`dynamo=False`, opset 17); `check_onnx` runs the files with onnxruntime against torch.
`page_panel_html` is the panel Chapter 13 shows; `serve.py` serves a folder with the isolation headers.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from diffusion_notes.data.tokenizer import tokenize
from diffusion_notes.foundations.grids import DEFAULT_SPACING, make_grid
from diffusion_notes.foundations.samplers import init_noise_scale, prepare_step
from diffusion_notes.foundations.schedules import Schedule
from diffusion_notes.stable_diffusion.ldm import DEFAULT_GUIDANCE_SCALE
from diffusion_notes.stable_diffusion.pipeline import DEFAULT_SAMPLER, LatentDiffusionPipeline
from diffusion_notes.stable_diffusion.web_vocab import vocab_table

WEB_DIR = Path(__file__).with_name("web")  # package data: the page's JavaScript
PAGE_FILES = ("sd_page.js", "dn_coi_sw.js")
SERVICE_WORKER = "dn_coi_sw.js"  # registered from the site's root (the Makefile copies it there) or the folder
OPSET = 17
TOLERANCE = 1e-4  # ONNX (onnxruntime) against torch, max |difference|
# The page's samplers: web-UI name -> our name (`samplers.SAMPLER_ALIASES`).
WEB_SAMPLERS = {"DDIM": "ddim", "Euler a": "euler_a", "DPM++ 2M": "dpmpp_2m"}
# The page's step counts (its Steps menu): those of the chapter's live panel; each has a table.
WEB_STEPS = (5, 10, 15, 25, 50)
# The panel's starting settings: the pipeline's defaults.
DEFAULTS = {"prompt": "a small red circle on the left", "steps": 25, "guidance": DEFAULT_GUIDANCE_SCALE, "seed": 0,
            "sampler": {ours: name for name, ours in WEB_SAMPLERS.items()}[DEFAULT_SAMPLER]}
# The LCM student's choice on the page: its own UNet file, the "lcm" sampler, guidance 1 (one call per step).
# Its sampler is ours, "lcm" (diffusers' LCMScheduler); the web UI's "LCM" is k-diffusion's (`lcm_webui`).
LCM = {"label": "LCM, 4 steps", "sampler": "lcm", "steps": 4, "guidance": 1.0, "unet": "lcm_unet"}
LCM_STEPS = (1, 2, 4, 8)  # the student's tables (generate() takes any of them; the panel offers 4)
BATCH_AXIS = "B"  # the graphs' dynamic batch axis, the one the page fixes (freeDimensionOverrides)


class _Traced(nn.Module):
    """`fn` as a module that owns `parts` (so their weights become the graph's initializers)."""

    def __init__(self, fn, *parts: nn.Module):
        super().__init__()
        self.fn, self.parts = fn, nn.ModuleList(parts)

    def forward(self, *args):
        return self.fn(*args)


def _searchsorted(g, sorted_sequence, values, out_int32, right, side, sorter):
    """aten::searchsorted (left side) in ONNX: how many entries of the sorted (V,) sequence are below each value."""
    last = g.op("Constant", value_t=torch.tensor([-1]))
    below = g.op("Less", sorted_sequence, g.op("Unsqueeze", values, last))  # (..., V)
    return g.op("ReduceSum", g.op("Cast", below, to_i=7), last, keepdims_i=0)  # 7: int64


def _export(fn, parts, args, path: Path, inputs, outputs) -> None:
    dynamic = {name: {0: BATCH_AXIS} for name in (*inputs, *outputs)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and the tracer's shape checks
        torch.onnx.export(_Traced(fn, *parts), args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(inputs), output_names=list(outputs), dynamic_axes=dynamic)


def _example_inputs(pipe: LatentDiffusionPipeline):
    ids = tokenize([DEFAULTS["prompt"], ""], allow_empty=True)  # (2, 77)
    c = pipe.unet.config
    x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([981.0, 500.5])  # (2,) float32: fractional on Euler's grid
    return ids, x, t


@torch.no_grad()
def export_onnx_graphs(pipe: LatentDiffusionPipeline, out: Path, lcm_unet: nn.Module | None = None) -> None:
    """text_encoder.onnx, unet.onnx, vae_decoder.onnx of `pipe`'s parts (and lcm_unet.onnx), with a dynamic batch."""
    ids, x, t = _example_inputs(pipe)
    text = pipe.clip.text
    torch.onnx.register_custom_op_symbolic("aten::searchsorted", _searchsorted, OPSET)  # data.tokenizer.to_compact
    try:
        _export(lambda i: text(i)[1], [text], (ids,), out / "text_encoder.onnx", ["ids"], ["states"])
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::searchsorted", OPSET)
    context = text(ids)[1]  # (2, 77, D_c)
    _export(pipe.unet, [pipe.unet], (x, t, context), out / "unet.onnx", ["x", "t", "context"], ["eps"])
    if lcm_unet is not None:  # a plain UNet of the same config, exported the same way
        _export(lcm_unet, [lcm_unet], (x, t, context), out / "lcm_unet.onnx", ["x", "t", "context"], ["eps"])
    _export(pipe.decode_latents, [pipe.vae], (x,), out / "vae_decoder.onnx", ["z"], ["images"])


def _finite(v):
    """A coefficient for JSON: a float, or None where it is not finite (DPM++ 2M's unused 1 / (2 r) at its ends)."""
    return v if isinstance(v, bool) or math.isfinite(v) else None


def sampling_table(sampler: str, n: int, schedule: Schedule) -> dict:
    """What `samplers.sample` computes before its loop, for one sampler and step count, as JSON.

    timesteps: as the model gets them (ints, or Euler's fractional float32 values); sigmas: (n + 1,)
    or None (DDIM); coefficients: n rows of `prepare_step`'s floats (float64, or float32 for DDIM, as
    x's dtype makes them), in the order of `sampling_fields`; draws_noise: n booleans;
    init_noise_scale: x_T = z * scale. The page rounds every coefficient to float32 when it reads it,
    as torch does when it multiplies a float32 tensor by a Python float.
    """
    grid = make_grid(sampler, n, schedule)
    step = prepare_step(sampler, grid, schedule, dtype=torch.float32)
    return {"timesteps": grid.timesteps.tolist(),
            "sigmas": None if grid.sigmas is None else grid.sigmas.tolist(),
            "coefficients": [[_finite(v) for v in c] for c in step.coefficients],
            "draws_noise": step.draws_noise,
            "init_noise_scale": init_noise_scale(sampler, None, grid)}


def sampling_fields(sampler: str, schedule: Schedule) -> list[str]:
    """The names of `sampler`'s coefficients, the columns of its tables' rows."""
    return list(prepare_step(sampler, make_grid(sampler, 1, schedule), schedule).coefficients[0]._fields)


def lcm_config(schedule: Schedule) -> dict:
    """What config.json adds for the LCM student: its choice (`LCM`), file, tables and coefficient names."""
    return {"lcm": LCM, "files": {LCM["unet"]: f'{LCM["unet"]}.onnx'}, "unets": {LCM["sampler"]: LCM["unet"]},
            "fields": {"lcm": sampling_fields("lcm", schedule)},
            "tables": {"lcm": {str(n): sampling_table("lcm", n, schedule) for n in LCM_STEPS}}}


def page_config(pipe: LatentDiffusionPipeline, lcm: bool = False) -> dict:
    """config.json: what the page's loop needs to follow `samplers.sample` step for step.

    sampling.tables[sampler][str(n)] is `sampling_table(sampler, n)` for each of `WEB_SAMPLERS` and
    `WEB_STEPS`; sampling.fields[sampler] names the coefficients' columns. The schedule is kept for
    the record: the page reads only the tables. With `lcm`, the LCM student's choice, file and
    tables too (`lcm_config`); "unets" says which UNet file a sampler runs (the base one by default).
    """
    c, s = pipe.unet.config, pipe.schedule
    config = {
        "model": "stable_diffusion",
        "files": {"text_encoder": "text_encoder.onnx", "unet": "unet.onnx", "vae_decoder": "vae_decoder.onnx",
                  "vocab": "vocab.json"},
        "schedule": {"kind": s.kind, "num_train_timesteps": s.num_train_timesteps,
                     "alphas_cumprod": s.alphas_cumprod.double().tolist()},  # (T,) float64, exact in JSON
        "scale_factor": pipe.scale_factor,  # inside vae_decoder.onnx already; for the record
        "latent_shape": [c.in_channels, c.sample_size, c.sample_size],
        "image_size": c.sample_size * pipe.vae.downsampling_factor,
        "context_dim": c.context_dim,
        "samplers": WEB_SAMPLERS,
        "spacing": {name: DEFAULT_SPACING[name] for name in WEB_SAMPLERS.values()},
        "ddim": {"eta": 0.0, "set_alpha_to_one": True, "steps_offset": 0},
        "defaults": DEFAULTS,
        "sampling": {
            "steps": list(WEB_STEPS),
            "fields": {ours: sampling_fields(ours, s) for ours in WEB_SAMPLERS.values()},
            "tables": {ours: {str(n): sampling_table(ours, n, s) for n in WEB_STEPS} for ours in WEB_SAMPLERS.values()},
        },
        "batch_axis": BATCH_AXIS,
        "unets": {},
    }
    if lcm:
        extra = lcm_config(s)
        config["lcm"], config["unets"] = extra["lcm"], extra["unets"]
        config["files"].update(extra["files"])
        config["sampling"]["fields"].update(extra["fields"])
        config["sampling"]["tables"].update(extra["tables"])
    return config


def export_onnx(pipe: LatentDiffusionPipeline, out_dir, lcm_unet: nn.Module | None = None) -> dict:
    """Write the whole folder (see the module docstring); returns {file name: size in bytes}.

    `lcm_unet`: the LCM student (`pretrained.load("lcm_unet", device="cpu")`), a UNet of `pipe.unet`'s
    config; without it the page offers the base model only.
    """
    if pipe.device.type != "cpu":
        raise ValueError(f"export from a pipeline on the CPU (pretrained.load('stable_diffusion', device='cpu')), "
                         f"got one on {pipe.device}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if lcm_unet is not None and lcm_unet.config != pipe.unet.config:
        raise ValueError(f"lcm_unet must have the base UNet's config {pipe.unet.config}, got {lcm_unet.config}")
    export_onnx_graphs(pipe, out, lcm_unet)
    (out / "vocab.json").write_text(json.dumps(vocab_table(pipe.clip.text.vocabulary.tolist()), indent=1) + "\n")
    config = page_config(pipe, lcm=lcm_unet is not None)
    (out / "config.json").write_text(json.dumps(config, indent=1, allow_nan=False) + "\n")
    for name in PAGE_FILES:
        shutil.copyfile(WEB_DIR / name, out / name)
    (out / "index.html").write_text(standalone_page())
    return {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}


@torch.no_grad()
def check_onnx(pipe: LatentDiffusionPipeline, out_dir, lcm_unet: nn.Module | None = None) -> dict:
    """Run the ONNX files with onnxruntime (one thread) on batch 2; max |ONNX - torch| of each (lcm_unet's too)."""
    import onnxruntime  # a test dependency: only the check needs it

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1

    def run(name, **inputs):
        session = onnxruntime.InferenceSession(str(Path(out_dir) / name), options, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])

    ids, x, t = _example_inputs(pipe)
    states = pipe.clip.encode_text(ids).token_states  # (2, 77, D_c)
    diffs = {
        "text_encoder": (run("text_encoder.onnx", ids=ids) - states).abs().max().item(),
        "unet": (run("unet.onnx", x=x, t=t, context=states) - pipe.unet(x, t, states)).abs().max().item(),
        "vae_decoder": (run("vae_decoder.onnx", z=x) - pipe.decode_latents(x)).abs().max().item(),
    }
    if lcm_unet is not None:
        diffs["lcm_unet"] = (run("lcm_unet.onnx", x=x, t=t, context=states) - lcm_unet(x, t, states)).abs().max().item()
    return diffs


FALLBACK = ("The model runs in this chapter's rendered page, in your browser, when the book is served over "
            "http (<code>make book</code>, then <code>make serve</code>). There this panel has a caption box, a "
            "sampler menu and a Generate button.")


def _panel(model_url: str, ort_url: str, worker_url: str) -> str:
    return (f'<div class="dn-sd-panel" data-model="{model_url}" data-ort="{ort_url}" data-coi="{worker_url}">\n'
            f'<p class="dn-sd-fallback">{FALLBACK}</p>\n</div>\n'
            f'<script src="{ort_url}ort.wasm.min.js"></script>\n'
            f'<script src="{model_url}sd_page.js"></script>\n')


def page_panel_html(base: str = "../_static") -> str:
    """The panel's HTML for a chapter page: a <div> sd_page.js fills, and the two local scripts it needs.

    `base` is the site's _static folder seen from the page (chapters live in book/). Where the
    files are not there (a notebook opened in JupyterLab, a page opened from disk) the panel
    keeps, or says, that the model runs on the built page served over http. data-coi is the
    service worker at the site's root, which a static host without isolation headers needs.
    """
    base = base.rstrip("/")
    return _panel(f"{base}/stable_diffusion/", f"{base}/ort/", f"{base}/../{SERVICE_WORKER}")


def standalone_page() -> str:
    """index.html of the exported folder: the panel alone, onnxruntime-web expected in ../ort/.

    No service worker (data-coi=""): one registered in this folder could not serve ../ort/, whose
    thread workers must come through it; served by serve.py the page is isolated all the same.
    """
    return ('<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<title>diffusion_notes: Stable Diffusion in the browser</title>\n</head>\n<body>\n'
            '<h1>The book\'s Stable Diffusion, in this page</h1>\n' + _panel("./", "../ort/", "")
            + '</body>\n</html>\n')
