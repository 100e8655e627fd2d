"""The exported Stable Diffusion runs in headless Chromium and draws the Python pipeline's picture.

The folder `export stable_diffusion --format onnx` writes, with onnxruntime-web from `_vendor/ort`
beside it (as the site's _static/ holds them), is served on 127.0.0.1; every other request is
aborted. For one setting per sampler (guidance > 1) the page's image must be the Python
pipeline's, with the same seed, within 2/255 per pixel; the page's noise must be torch's, the
tables it steps through `make_grid`'s and `prepare_step`'s, its Steps menu the exported step
counts, and an unknown word must be named. If the built book's Chapter 13 holds the panel, one
setting runs through that page too.
"""

import functools
import http.server
import math
import shutil
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_notes import pretrained
from diffusion_notes.foundations.grids import make_grid
from diffusion_notes.foundations.samplers import prepare_step
from diffusion_notes.stable_diffusion import web_export
from diffusion_notes.stable_diffusion.web_vocab import unknown_word_message, vocab_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from web_noise import TorchCPUGenerator

ROOT = Path(__file__).resolve().parents[2]
ORT = ROOT / "_vendor" / "ort"
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
CHAPTER = ROOT / "_build" / "html" / "book" / "13_text_to_image.html"
SETTINGS = [  # one per sampler, guided; step counts the page offers (web_export.WEB_STEPS)
    dict(prompt="a small red circle on the left", sampler="DDIM", steps=10, guidance=4.0, seed=0),
    dict(prompt="a large blue square in the top right", sampler="Euler a", steps=25, guidance=5.0, seed=3),
    dict(prompt="a green triangle to the left of a yellow star", sampler="DPM++ 2M", steps=15, guidance=3.0,
         seed=11),
]
MAX_PIXEL_DIFF = 2  # of 255
TIMEOUT_MS = 120_000

pytestmark = pytest.mark.skipif("ldm_unet" not in pretrained.available(),
                                reason="the ldm_unet weights are not shipped in this checkout")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Quiet, and with the types a module script and WebAssembly need whatever the machine's mime table says."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
                      ".json": "application/json"}

    def log_message(self, format, *args):  # no request log (the names are the base class's)
        pass


def serve(directory: Path):
    """Serve `directory` on 127.0.0.1 at a free port; returns (base URL ending in /, stop)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Handler, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    return f"http://127.0.0.1:{port}/", stop


def open_offline(browser, url: str):
    """A page at `url` whose requests to anything but 127.0.0.1 are aborted and recorded: (page, outside)."""
    context = browser.new_context()
    page = context.new_page()
    outside = []

    def route(r):
        if r.request.url.startswith("http://127.0.0.1:"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort("internetdisconnected")
    page.route("**/*", route)
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    return page, outside, errors


@pytest.fixture(scope="module")
def site(pipe, tmp_path_factory):
    """stable_diffusion/ (exported) and ort/ (onnxruntime-web) side by side, served; yields the base URL."""
    missing = [name for name in ORT_FILES if not (ORT / name).exists()]
    if missing:
        pytest.skip(f"onnxruntime-web is not in {ORT} ({', '.join(missing)}): run `make vendor`")
    root = tmp_path_factory.mktemp("site")
    web_export.export_onnx(pipe, root / "stable_diffusion")
    (root / "ort").mkdir()
    for name in ORT_FILES:
        shutil.copyfile(ORT / name, root / "ort" / name)
    url, stop = serve(root)
    yield url
    stop()


@pytest.fixture(scope="module")
def page(browser, site):
    """The exported folder's index.html, loaded once for the module; no request may leave 127.0.0.1."""
    page, outside, errors = open_offline(browser, site + "stable_diffusion/index.html")
    page.wait_for_selector(".dn-sd-generate", timeout=TIMEOUT_MS)
    yield page
    page.context.close()
    assert outside == [] and errors == []


def python_pixels(pipe, o: dict) -> np.ndarray:
    """The pipeline's picture for the page's settings, as the page rounds it: (32, 32, 3) uint8."""
    images = pipe(o["prompt"], num_inference_steps=o["steps"], guidance_scale=o["guidance"], sampler=o["sampler"],
                  generator=torch.Generator().manual_seed(o["seed"])).images  # (1, 3, 32, 32) in [0, 1]
    return (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # as data.images.to_pil


def browser_pixels(page, o: dict) -> tuple[np.ndarray, float]:
    r = page.evaluate("o => diffusionNotesSD.generate(o).then(r => ({pixels: Array.from(r.pixels), ms: r.ms}))", o)
    return np.array(r["pixels"], dtype=np.uint8).reshape(32, 32, 3), r["ms"]


@pytest.mark.parametrize("o", SETTINGS, ids=[o["sampler"] for o in SETTINGS])
def test_the_page_draws_the_python_pipelines_picture(pipe, page, o):
    ours, ms = browser_pixels(page, o)
    ref = python_pixels(pipe, o)
    diff = np.abs(ours.astype(int) - ref.astype(int)).max()
    print(f"{o['sampler']}: max pixel difference {diff}/255, {ms:.0f} ms in Chromium")
    assert diff <= MAX_PIXEL_DIFF, f"{o['sampler']}: the page's picture differs by {diff}/255"
    assert ref.std() > 5  # a picture, not a blank


def test_the_pages_noise_is_torchs(page):
    for seed, n in [(0, 256), (7, 100), (2**32 - 1, 512)]:
        z = np.array(page.evaluate("([s, n]) => Array.from(diffusionNotesSD.randn(s, n))", [seed, n]), np.float32)
        assert np.abs(z - TorchCPUGenerator(seed).randn(n)).max() <= 1e-7  # the twin: the same algorithm
        assert np.abs(z - torch.randn(n, generator=torch.Generator().manual_seed(seed)).numpy()).max() < 2e-6
    words = page.evaluate("() => { const g = new diffusionNotesSD.TorchGenerator(5); "
                          "return Array.from({length: 700}, () => g.nextUint32()); }")
    twin = TorchCPUGenerator(5)
    assert words == [twin.next_uint32() for _ in range(700)]  # mt19937 bit for bit, across a twist


@pytest.mark.parametrize("sampler", ["ddim", "euler_a", "dpmpp_2m"])
def test_the_page_steps_through_make_grid_and_prepare_step(pipe, page, sampler):
    """The page's rows, by name, are prepare_step's coefficients rounded to float32 (NaN where not finite)."""
    for n in web_export.WEB_STEPS:
        js = page.evaluate("""([s, n]) => diffusionNotesSD.load().then(m =>
            diffusionNotesSD.table(m.config, s, n))""", [sampler, n])
        grid = make_grid(sampler, n, pipe.schedule)
        step = prepare_step(sampler, grid, pipe.schedule, dtype=torch.float32)
        assert js["timesteps"] == grid.timesteps.tolist() and js["draws_noise"] == step.draws_noise
        assert len(js["rows"]) == len(step.coefficients) == n
        for row, c in zip(js["rows"], step.coefficients):
            assert set(row) == set(c._fields)
            for name, v in c._asdict().items():
                if isinstance(v, bool):
                    assert row[name] is v
                elif math.isfinite(v):
                    assert row[name] == float(np.float32(v)), (n, name)
                else:
                    assert math.isnan(row[name]), (n, name)


def test_without_guidance_the_unet_runs_on_the_caption_alone(pipe, page):
    o = dict(prompt="a big white star at the bottom", sampler="DDIM", steps=5, guidance=1.0, seed=2)
    ours, _ = browser_pixels(page, o)
    assert np.abs(ours.astype(int) - python_pixels(pipe, o).astype(int)).max() <= MAX_PIXEL_DIFF


@pytest.mark.parametrize("bad, words", [
    (dict(steps=0), "steps must be one of 5, 10, 15, 25, 50 (the step counts this page has grids for), got 0"),
    (dict(steps=12), "steps must be one of 5, 10, 15, 25, 50 (the step counts this page has grids for), got 12"),
    (dict(guidance=-1), "guidance scale must be a number >= 0, got -1"),
    (dict(sampler="Heun"), "sampler must be one of DDIM, Euler a, DPM++ 2M, got Heun"),
    (dict(seed=1.5), "seed must be an integer in [0, 2^32 - 1], got 1.5"),
])
def test_bad_settings_are_refused_with_a_message(page, bad, words):
    message = page.evaluate("o => diffusionNotesSD.generate(o).then(() => 'no error', e => e.message)",
                            {**SETTINGS[0], **bad})
    assert message == words


def test_an_unknown_word_is_named_in_the_panel(pipe, page):
    page.fill(".dn-sd-prompt", "a small pink circle")
    page.click(".dn-sd-generate")
    page.wait_for_selector(".dn-sd-status.dn-sd-error", timeout=TIMEOUT_MS)
    message = page.text_content(".dn-sd-status")
    assert message == unknown_word_message("pink", vocab_table(pipe.clip.text.vocabulary.tolist()))
    assert 'unknown word "pink"' in message


def _click_and_read_canvas(page, o: dict, press=None) -> np.ndarray:
    """Fill the panel with `o`, generate (a click on Generate, or `press` a key in the caption), read the picture."""
    page.fill(".dn-sd-prompt", o["prompt"])
    page.select_option(".dn-sd-sampler", o["sampler"])
    page.select_option(".dn-sd-steps", str(o["steps"]))
    for name in ("guidance", "seed"):
        page.fill(f".dn-sd-{name}", str(o[name]))
    page.evaluate("() => { delete document.querySelector('.dn-sd-status').dataset.ms; }")
    if press:
        page.press(".dn-sd-prompt", press)
    else:
        page.click(".dn-sd-generate")
    page.wait_for_selector(".dn-sd-status[data-ms]", timeout=TIMEOUT_MS)
    rgba = page.evaluate("() => Array.from(document.querySelector('.dn-sd-canvas').getContext('2d')"
                         ".getImageData(0, 0, 32, 32).data)")
    return np.array(rgba, dtype=np.uint8).reshape(32, 32, 4)[..., :3]


def test_the_panels_steps_menu_offers_the_exported_step_counts(page):
    offered = page.eval_on_selector_all(".dn-sd-steps option", "options => options.map(o => o.value)")
    assert offered == [str(n) for n in web_export.WEB_STEPS]
    assert page.input_value(".dn-sd-steps") == str(web_export.DEFAULTS["steps"])


def test_the_panels_generate_button_draws_the_picture(pipe, page):
    o = SETTINGS[2]
    diff = np.abs(_click_and_read_canvas(page, o).astype(int) - python_pixels(pipe, o).astype(int)).max()
    assert diff <= MAX_PIXEL_DIFF
    assert " ms in this browser" in page.text_content(".dn-sd-status")


def test_an_error_clears_the_old_picture(pipe, page):
    _click_and_read_canvas(page, SETTINGS[0])  # a picture first
    page.fill(".dn-sd-prompt", "a small pink circle")
    page.click(".dn-sd-generate")
    page.wait_for_selector(".dn-sd-status.dn-sd-error", timeout=TIMEOUT_MS)
    alpha = page.evaluate("() => Array.from(document.querySelector('.dn-sd-canvas').getContext('2d')"
                          ".getImageData(0, 0, 32, 32).data).filter((v, i) => i % 4 === 3 && v > 0).length")
    assert alpha == 0, f"{alpha} pixels of the old picture stay beside the error"
    assert page.get_attribute(".dn-sd-canvas", "aria-label") == "no picture"


def test_enter_in_the_caption_generates_a_sentence_as_its_caption(pipe, page):
    o = {**SETTINGS[2], "prompt": SETTINGS[2]["prompt"].capitalize() + "."}
    drawn = _click_and_read_canvas(page, o, press="Enter")
    diff = np.abs(drawn.astype(int) - python_pixels(pipe, SETTINGS[2]).astype(int)).max()
    assert diff <= MAX_PIXEL_DIFF, "Enter with a final full stop did not draw the caption's picture"


def test_the_panel_counts_its_steps(page):
    counted = page.evaluate("o => { const seen = []; return diffusionNotesSD.generate({...o, onStep: "
                            "(i, n) => seen.push([i, n])}).then(() => seen); }", {**SETTINGS[0], "steps": 5})
    assert counted == [[i, 5] for i in range(1, 6)]
    assert page.get_attribute(".dn-sd-status", "aria-live") == "polite"
    assert "5, 10, 15, 25, 50" in page.get_attribute(".dn-sd-steps", "title")


@pytest.mark.parametrize("edition", ["", "zh/"], ids=["en", "zh"])
def test_the_chapter_page_runs_the_model(pipe, browser, edition):
    if not CHAPTER.exists() or "dn-sd-panel" not in CHAPTER.read_text():
        pytest.skip(f"{CHAPTER} does not hold the in-page model's panel yet (make book builds it)")
    if not (CHAPTER.parents[1] / "_static" / "stable_diffusion" / "unet.onnx").exists():
        pytest.skip("the built site has no _static/stable_diffusion/: run make book")
    url, stop = serve(CHAPTER.parents[1])
    try:
        page, outside, errors = open_offline(browser, url + edition + "book/13_text_to_image.html")
        page.wait_for_selector(".dn-sd-generate", timeout=TIMEOUT_MS)
        o = SETTINGS[1]
        diff = np.abs(_click_and_read_canvas(page, o).astype(int) - python_pixels(pipe, o).astype(int)).max()
        page.context.close()
    finally:
        stop()
    assert outside == [], outside
    assert diff <= MAX_PIXEL_DIFF
