"""Milliseconds per image: the in-page Stable Diffusion (headless Chromium) against the Python pipeline.

One run measures both, on one thread each: onnxruntime-web's WebAssembly build in Chromium
(a page without cross-origin isolation gets one thread) and torch with `torch.set_num_threads(1)`,
on the same settings, after one warm-up image each; the medians, their ratio and the largest
pixel difference between the two pictures are printed. The browser's time is `generate`'s own
(caption to pixels), the model's loading apart; Python's is the pipeline call.

Needs Debian's chromium (`apt-get install chromium`) and onnxruntime-web in _vendor/ort
(`make vendor`); without them it says so and exits 0.

Run: python benchmarks/browser_model.py [repeats] [--sampler "DPM++ 2M"] [--steps 25] [--guidance 5]
"""

import argparse
import functools
import http.server
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_notes import pretrained
from diffusion_notes.stable_diffusion import web_export

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
ORT = ROOT / "_vendor" / "ort"
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

    def log_message(self, format, *args):  # no request log (the names are the base class's)
        pass


def _serve(directory: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Handler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}/", server


def python_images(pipe, o: dict, repeats: int) -> tuple[list[float], np.ndarray]:
    """ms per image of the pipeline (after a warm-up) and its last picture, (32, 32, 3) uint8."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        images = pipe(o["prompt"], num_inference_steps=o["steps"], guidance_scale=o["guidance"],
                      sampler=o["sampler"], generator=torch.Generator().manual_seed(o["seed"])).images
        times.append(1e3 * (time.perf_counter() - start))
    return times[1:], (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def browser_images(chromium: str, url: str, o: dict, repeats: int) -> tuple[list[float], np.ndarray, float]:
    """ms per image in headless Chromium (after a warm-up), its last picture, and the model's load time."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("http://127.0.0.1:")
                   else r.abort("internetdisconnected"))
        page.goto(url + "stable_diffusion/index.html")
        load_ms = page.evaluate("() => diffusionNotesSD.load().then(m => m.loadMs)")
        runs = [page.evaluate("o => diffusionNotesSD.generate(o).then(r => ({ms: r.ms, pixels: Array.from(r.pixels)}))",
                              o) for _ in range(repeats + 1)]
        browser.close()
    pixels = np.array(runs[-1]["pixels"], dtype=np.uint8).reshape(32, 32, 3)
    return [r["ms"] for r in runs[1:]], pixels, load_ms


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repeats", nargs="?", type=int, default=5)
    parser.add_argument("--sampler", default="DPM++ 2M", choices=list(web_export.WEB_SAMPLERS))
    parser.add_argument("--steps", type=int, default=25, choices=list(web_export.WEB_STEPS),
                        help="a step count the page has grids for")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--prompt", default="a small red circle on the left")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = [name for name in ORT_FILES if not (ORT / name).exists()]
    if chromium is None or missing:
        print("skipped: " + ("no chromium (apt-get install chromium)" if chromium is None
                             else f"onnxruntime-web is not in {ORT} (make vendor)"))
        return 0
    o = dict(prompt=args.prompt, sampler=args.sampler, steps=args.steps, guidance=args.guidance, seed=0)
    pipe = pretrained.load("stable_diffusion", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        web_export.export_onnx(pipe, root / "stable_diffusion")
        (root / "ort").mkdir()
        for name in ORT_FILES:
            shutil.copyfile(ORT / name, root / "ort" / name)
        url, server = _serve(root)
        try:
            web_ms, web_pixels, load_ms = browser_images(chromium, url, o, args.repeats)
        finally:
            server.shutdown()
            server.server_close()
    py_ms, py_pixels = python_images(pipe, o, args.repeats)
    web, py = statistics.median(web_ms), statistics.median(py_ms)
    diff = np.abs(web_pixels.astype(int) - py_pixels.astype(int)).max()
    print(f"{o['sampler']}, {o['steps']} steps, guidance {o['guidance']:g}, {o['prompt']!r}; median of "
          f"{args.repeats} images after a warm-up")
    web_label = "Chromium, onnxruntime-web (WebAssembly, 1 thread)"
    py_label = f"Python, torch (CPU, {torch.get_num_threads()} thread)"
    print(f"{web_label:52s} {web:8.1f} ms per image (model loaded in {load_ms:.0f} ms, once)")
    print(f"{py_label:52s} {py:8.1f} ms per image")
    print(f"browser / Python: {web / py:.2f}x; largest pixel difference {diff}/255")
    return 0


if __name__ == "__main__":
    sys.exit(main())
