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

Then one guided UNet call (batch 2), the step's work, on three engines at each thread count: torch
(the pipeline's UNet), onnxruntime's native CPU build on the page's own unet.onnx (the same graph,
batch fixed the same way), and onnxruntime-web in the page. The first two run this CPU's widest
vector instructions; the page runs WebAssembly's 128-bit SIMD, so native onnxruntime over the page
is what the instruction set costs, apart from anything in the graph.

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


UNET_RUNS = 50  # timed UNet calls per engine, after 5 warm-up calls


def unet_inputs(pipe) -> dict:
    """The page's guided UNet call: x (2, 4, 8, 8), t (2,), context (2, 77, D_c), as numpy arrays."""
    ids, x, t = web_export._example_inputs(pipe)
    with torch.no_grad():
        context = pipe.clip.text(ids)[1]
    return {"x": x.numpy(), "t": t.numpy(), "context": context.numpy()}


def median_ms(call, runs: int = UNET_RUNS) -> float:
    """Median milliseconds of `call()` over `runs` calls, after 5 warm-up calls."""
    for _ in range(5):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def torch_unet_ms(pipe, feeds: dict, threads: int) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    x, t, context = (torch.from_numpy(feeds[k]) for k in ("x", "t", "context"))
    try:
        with torch.no_grad():
            return median_ms(lambda: pipe.unet(x, t, context))
    finally:
        torch.set_num_threads(before)


def onnxruntime_unet_ms(path: Path, feeds: dict, threads: int) -> float:
    """The same unet.onnx in onnxruntime's native CPU build, its batch axis fixed at 2 as the page fixes it."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_free_dimension_override_by_name(web_export.BATCH_AXIS, 2)
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return median_ms(lambda: session.run(None, feeds))


PAGE_UNET_MS = """async ([feeds, runs]) => {  // the page's own batch-2 UNet session, timed alone
  const model = await diffusionNotesSD.load();
  const unet = await model.unets["unet:2"];
  const tensor = (v) => new ort.Tensor("float32", Float32Array.from(v.data), v.shape);
  const inputs = {x: tensor(feeds.x), t: tensor(feeds.t), context: tensor(feeds.context)};
  for (let i = 0; i < 5; i++) await unet.run(inputs);
  const times = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    await unet.run(inputs);
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return runs % 2 ? times[(runs - 1) / 2] : (times[runs / 2 - 1] + times[runs / 2]) / 2;
}"""


def page_unet_ms(browser, url: str, feeds: dict, threads: int) -> float:
    page = browser.new_page()
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("http://127.0.0.1:")
               else r.abort("internetdisconnected"))
    page.goto(url + f"stable_diffusion/index.html?threads={threads}")
    plain = {k: {"data": v.ravel().tolist(), "shape": list(v.shape)} for k, v in feeds.items()}
    try:
        return page.evaluate(PAGE_UNET_MS, [plain, UNET_RUNS])
    finally:
        page.close()


def export_site(pipe, student, root: Path) -> None:
    web_export.export_onnx(pipe, root / "stable_diffusion", lcm_unet=student)
    (root / "ort").mkdir()
    for name in ORT_FILES:
        shutil.copyfile(ORT / name, root / "ort" / name)


def measure(chromium: str, cases: list, threads: list[int], repeats: int) -> tuple[list[dict], list[dict]]:
    """Each case (label, pipeline, settings) on each thread count: the page's run, then Python's;
    then one guided UNet call on each engine at each thread count."""
    from playwright.sync_api import sync_playwright

    rows, calls = [], []
    feeds = unet_inputs(cases[0][1])
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
            for k in threads:
                calls.append({"threads": k, "page": page_unet_ms(browser, url, feeds, k),
                              "onnxruntime": onnxruntime_unet_ms(Path(tmp) / "stable_diffusion" / "unet.onnx",
                                                                 feeds, k),
                              "torch": torch_unet_ms(cases[0][1], feeds, k)})
        finally:
            browser.close()
            stop()
    return rows, calls


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
    rows, calls = measure(chromium, cases, args.threads, args.repeats)
    print(f"{args.prompt!r}, seed 0; median of {args.repeats} images after a warm-up; Chromium: onnxruntime-web "
          f"(WebAssembly), cross-origin isolated; Python: torch on the CPU")
    print(f"{'':58s}{'threads':>8}{'page ms':>10}{'Python ms':>11}{'page/Py':>9}{'max diff':>10}")
    for r in rows:
        print(f"{r['label']:58s}{r['threads']:8d}{r['web']:10.1f}{r['py']:11.1f}{r['web'] / r['py']:8.2f}x"
              f"{r['diff']:6d}/255")
    loads = "; ".join(f"{r['threads']} thread(s): {r['load_ms']:.0f} ms" for r in rows if r["label"] == cases[0][0])
    print(f"the page's model (text encoder, UNet, decoder) loaded once per page in {loads}")
    print(f"one guided UNet call (batch 2), median of {UNET_RUNS} ms:")
    print(f"{'threads':>8}{'torch':>9}{'onnxruntime':>13}{'page':>8}{'page/onnxruntime':>18}{'page/torch':>12}")
    for c in calls:
        print(f"{c['threads']:8d}{c['torch']:9.2f}{c['onnxruntime']:13.2f}{c['page']:8.2f}"
              f"{c['page'] / c['onnxruntime']:17.2f}x{c['page'] / c['torch']:11.2f}x")
    if args.save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"prompt": args.prompt, "repeats": args.repeats, "rows": rows,
                                       "unet_call": calls,
                                       "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                                   "cpus": os.cpu_count(),
                                                   "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}},
                                       indent=1) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
