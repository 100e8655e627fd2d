"""Milliseconds per image: the in-page Stable Diffusion (headless Chromium) against the Python pipeline.

One run measures both sides on 1 and on 2 threads: onnxruntime-web's WebAssembly build in Chromium,
the page served with the cross-origin isolation headers (`stable_diffusion/serve.py`, make serve's
server) and opened with ?threads=k, and torch with `torch.set_num_threads(k)`, on the same settings,
after one warm-up image each. For each thread count it prints the medians, their ratio (page /
Python, Python timed in the same run) and the largest pixel difference between the two pictures.
The page's time is `generate`'s own (caption to pixels), the model's loading apart; Python's is
the pipeline call. The 25-step default (DPM++ 2M, guidance 5) is measured, and "LCM, 4 steps" (the
LCM student, guidance 1) beside it; until the student is shipped the base UNet stands in for it
(the same network, so the same time).

Needs Debian's chromium (`apt-get install chromium`) and onnxruntime-web in _vendor/ort
(`make vendor`); without them it says so and exits 0. Run it on an otherwise idle machine.

Run: python benchmarks/browser_model.py [repeats] [--sampler "DPM++ 2M"] [--steps 25] [--guidance 5]
         [--threads 1 2] [--no-lcm] [--save]
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_notes import pretrained
from diffusion_notes.stable_diffusion import serve, web_export
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
RESULTS_NAME = "benchmarks/results/browser_model.json"
RESULTS = ROOT / RESULTS_NAME
ORT = ROOT / "_vendor" / "ort"
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def python_images(pipe, o: dict, repeats: int, threads: int) -> tuple[list[float], np.ndarray]:
    """ms per image of the pipeline on `threads` threads (after a warm-up) and its last picture, (32, 32, 3) uint8."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    times = []
    try:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            images = pipe(o["prompt"], num_inference_steps=o["steps"], guidance_scale=o["guidance"],
                          sampler=o["sampler"], generator=torch.Generator().manual_seed(o["seed"])).images
            times.append(1e3 * (time.perf_counter() - start))
    finally:
        torch.set_num_threads(before)
    return times[1:], (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def browser_images(browser, url: str, o: dict, repeats: int, threads: int) -> dict:
    """ms per image in headless Chromium on `threads` threads (after a warm-up), its last picture, the load time."""
    page = browser.new_page()
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("http://127.0.0.1:")
               else r.abort("internetdisconnected"))
    page.goto(url + f"stable_diffusion/index.html?threads={threads}")
    isolated, used = page.evaluate("() => [crossOriginIsolated, diffusionNotesSD.threads()]")
    if not isolated or used != threads:
        raise RuntimeError(f"the page runs on {used} thread(s) (cross-origin isolated: {isolated}), not {threads}")
    load_ms = page.evaluate("() => diffusionNotesSD.load().then(m => m.loadMs)")
    runs = [page.evaluate("o => diffusionNotesSD.generate(o).then(r => ({ms: r.ms, threads: r.threads, "
                          "pixels: Array.from(r.pixels)}))", o) for _ in range(repeats + 1)]
    page.close()
    pixels = np.array(runs[-1]["pixels"], dtype=np.uint8).reshape(32, 32, 3)
    return {"ms": [r["ms"] for r in runs[1:]], "pixels": pixels, "load_ms": load_ms}


def export_site(pipe, student, root: Path) -> None:
    web_export.export_onnx(pipe, root / "stable_diffusion", lcm_unet=student)
    (root / "ort").mkdir()
    for name in ORT_FILES:
        shutil.copyfile(ORT / name, root / "ort" / name)


def measure(chromium: str, cases: list, threads: list[int], repeats: int) -> list[dict]:
    """Each case (label, pipeline, settings) on each thread count: the page's run, then Python's."""
    from playwright.sync_api import sync_playwright

    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        export_site(cases[0][1], cases[-1][1].unet if len(cases) > 1 else None, Path(tmp))
        url, stop = serve.serve(Path(tmp))
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            for k in threads:
                for label, pipe, o in cases:
                    web = browser_images(browser, url, o, repeats, k)
                    py_ms, py_pixels = python_images(pipe, o, repeats, k)
                    rows.append({"label": label, "threads": k, "web": statistics.median(web["ms"]),
                                 "py": statistics.median(py_ms), "load_ms": web["load_ms"],
                                 "diff": int(np.abs(web["pixels"].astype(int) - py_pixels.astype(int)).max())})
        finally:
            browser.close()
            stop()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repeats", nargs="?", type=int, default=5)
    parser.add_argument("--sampler", default="DPM++ 2M", choices=list(web_export.WEB_SAMPLERS))
    parser.add_argument("--steps", type=int, default=25, choices=list(web_export.WEB_STEPS),
                        help="a step count the page has grids for")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--prompt", default="a small red circle on the left")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-lcm", action="store_true", help="the base model only")
    parser.add_argument("--save", action="store_true", help=f"write the rows to {RESULTS_NAME} (Chapter 18 prints it)")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = [name for name in ORT_FILES if not (ORT / name).exists()]
    if chromium is None or missing:
        print("skipped: " + ("no chromium (apt-get install chromium)" if chromium is None
                             else f"onnxruntime-web is not in {ORT} (make vendor)"))
        return 0
    pipe = pretrained.load("stable_diffusion", device="cpu")
    base = dict(prompt=args.prompt, sampler=args.sampler, steps=args.steps, guidance=args.guidance, seed=0)
    cases = [(f"{args.sampler}, {args.steps} steps, guidance {args.guidance:g}", pipe, base)]
    if not args.no_lcm:
        shipped = "lcm_unet" in pretrained.available()
        student = pretrained.load("lcm_unet" if shipped else "ldm_unet", device="cpu")
        lcm = LatentDiffusionPipeline(student, pipe.vae, pipe.clip, pipe.scale_factor)
        label = web_export.LCM["label"] + ("" if shipped else " (ldm_unet standing in for the student)")
        cases.append((label, lcm, dict(base, sampler=web_export.LCM["sampler"], steps=web_export.LCM["steps"],
                                       guidance=web_export.LCM["guidance"])))
    rows = measure(chromium, cases, args.threads, args.repeats)
    print(f"{args.prompt!r}, seed 0; median of {args.repeats} images after a warm-up; Chromium: onnxruntime-web "
          f"(WebAssembly), cross-origin isolated; Python: torch on the CPU")
    print(f"{'':58s}{'threads':>8}{'page ms':>10}{'Python ms':>11}{'page/Py':>9}{'max diff':>10}")
    for r in rows:
        print(f"{r['label']:58s}{r['threads']:8d}{r['web']:10.1f}{r['py']:11.1f}{r['web'] / r['py']:8.2f}x"
              f"{r['diff']:6d}/255")
    loads = "; ".join(f"{r['threads']} thread(s): {r['load_ms']:.0f} ms" for r in rows if r["label"] == cases[0][0])
    print(f"the page's model (text encoder, UNet, decoder) loaded once per page in {loads}")
    if args.save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"prompt": args.prompt, "repeats": args.repeats, "rows": rows,
                                       "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                                   "cpus": os.cpu_count(),
                                                   "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}},
                                       indent=1) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
