"""Milliseconds per image through the web UI's API against the pipeline called directly, and the app's start-up time.

API: POST /sdapi/v1/txt2img over HTTP to the app served in this process (uvicorn in a thread), batch
of 8, 20 DPM++ 2M steps, CFG 4; the time includes JSON, the conditioning, per-image noise, PNG
encoding with the infotext and base64. Pipeline: `pipe(prompt, num_images_per_prompt=8, ...)` with
the same settings, output as PIL images. One thread each, alternating, after one warm-up; medians.
Start-up: `python -m diffusion_notes webui` as a fresh process until its page answers, and building
the app in a warm process. Writes benchmarks/results/webui_api.json.

Run: python benchmarks/webui_api.py [repeats]
"""

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from diffusion_notes import pretrained
from diffusion_notes.practice.webui.app import BackgroundServer, create_app
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
PROMPT, BATCH, STEPS = "a small red circle on the left", 8, 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=600).read())


def startup_seconds() -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "diffusion_notes", "webui", "--port", str(port), "--threads",
                                    "1", "--models-dir", f"{tmp}/models", "--outputs-dir", f"{tmp}/outputs"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                    return time.perf_counter() - start
                except OSError:
                    if process.poll() is not None or time.perf_counter() - start > 120:
                        raise RuntimeError("the web UI did not start") from None
                    time.sleep(0.05)
        finally:
            process.terminate()
            process.wait(timeout=30)


def main(repeats: int = 5) -> None:
    pipe = pretrained.load("stable_diffusion", device="cpu")
    start = time.perf_counter()
    app = create_app(WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet"))))
    build_s = time.perf_counter() - start
    server = BackgroundServer(app, port=free_port())
    url = server.url + "/sdapi/v1/txt2img"
    body = {"prompt": PROMPT, "steps": STEPS, "cfg_scale": 4, "sampler_name": "DPM++ 2M", "seed": 0,
            "batch_size": BATCH}

    def api():
        assert len(post(url, body)["images"]) == BATCH

    def direct():
        pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=4.0, sampler="DPM++ 2M", num_images_per_prompt=BATCH,
             generator=torch.Generator().manual_seed(0), output_type="pil")

    times = {"api": [], "pipeline": []}
    api(), direct()  # warm-up
    for _ in range(repeats):
        for name, fn in (("api", api), ("pipeline", direct)):
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000 / BATCH)
    server.close()
    ms = {name: statistics.median(v) for name, v in times.items()}
    overhead = ms["api"] / ms["pipeline"] - 1
    startup = startup_seconds()
    print(f"ms per image, batch {BATCH}, {STEPS} DPM++ 2M steps, CFG 4, one thread (median of {repeats}):")
    print(f"  API (HTTP, PNG + infotext + base64): {ms['api']:.1f} ms")
    print(f"  pipeline directly:                   {ms['pipeline']:.1f} ms")
    print(f"  overhead: {overhead:+.1%} (target <= 10%)")
    print(f"start-up: `python -m diffusion_notes webui` to its first page {startup:.1f} s; "
          f"building the app in a warm process {build_s:.2f} s")
    result = {"command": "python benchmarks/webui_api.py", "machine": f"{platform.machine()}, {platform.processor()}, "
              f"torch {torch.__version__}, 1 thread", "batch_size": BATCH, "steps": STEPS,
              "ms_per_image": ms, "overhead": overhead, "startup_s": startup, "build_app_s": build_s}
    out = ROOT / "benchmarks" / "results" / "webui_api.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
