"""The exported Stable Diffusion runs in headless Chromium and draws the Python pipeline's picture.

The folder `export stable_diffusion --format onnx` writes (with the LCM student; until it is shipped
the base UNet stands in), with onnxruntime-web from `_vendor/ort` beside it (as the site's _static/
holds them), is served on 127.0.0.1; every other request is aborted. For one setting per sampler
(guidance > 1) the page's image must be the Python pipeline's, with the same seed, within 2/255 per
pixel, and so must "LCM, 4 steps" be the student's `pipe(..., sampler="lcm", num_inference_steps=4,
guidance_scale=1)`; the page's noise must be torch's, the tables it steps through `make_grid`'s and
`prepare_step`'s, its Steps menu the exported step counts, and an unknown word must be named. Served
plainly the page runs on one thread; served by `serve.py` (make serve), or brought under its service
worker, it is cross-origin isolated and runs on several, drawing the same picture. If the built
book's Chapter 13 holds the panel, one setting runs through that page too.
"""

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_notes import pretrained
from diffusion_notes.foundations.grids import make_grid
from diffusion_notes.foundations.samplers import prepare_step
from diffusion_notes.stable_diffusion import serve as isolated
from diffusion_notes.stable_diffusion import web_export
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline
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


def serve(directory: Path):
    """Serve `directory` on 127.0.0.1 at a free port, as a static host without isolation headers does."""
    return isolated.serve(directory, isolated=False)


def offline_context(browser, **options):
    """A browser context whose requests to anything but 127.0.0.1 are aborted and recorded: (context, outside).

    The route is the context's, so it sees a service worker's requests as well as the pages'.
    """
    context = browser.new_context(**options)
    outside = []

    def route(r):
        if r.request.url.startswith("http://127.0.0.1:"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort("internetdisconnected")
    context.route("**/*", route)
    return context, outside


def open_offline(browser, url: str):
    """A page at `url` in an `offline_context`: (page, outside, errors)."""
    context, outside = offline_context(browser)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    return page, outside, errors


@pytest.fixture(scope="module")
def student():
    """The LCM student; until it is shipped, the base UNet stands in (a UNet of the same config)."""
    return pretrained.load("lcm_unet" if "lcm_unet" in pretrained.available() else "ldm_unet", device="cpu")


@pytest.fixture(scope="module")
def lcm_pipe(pipe, student):
    """The Python pipeline with the student's UNet: what "LCM, 4 steps" must draw."""
    return LatentDiffusionPipeline(student, pipe.vae, pipe.clip, pipe.scale_factor)


@pytest.fixture(scope="module")
def site_root(pipe, student, tmp_path_factory):
    """stable_diffusion/ (exported, with the student) and ort/ (onnxruntime-web) side by side."""
    missing = [name for name in ORT_FILES if not (ORT / name).exists()]
    if missing:
        pytest.skip(f"onnxruntime-web is not in {ORT} ({', '.join(missing)}): run `make vendor`")
    root = tmp_path_factory.mktemp("site")
    web_export.export_onnx(pipe, root / "stable_diffusion", lcm_unet=student)
    (root / "ort").mkdir()
    for name in ORT_FILES:
        shutil.copyfile(ORT / name, root / "ort" / name)
    return root


@pytest.fixture(scope="module")
def site(site_root):
    """The folder served plainly (no isolation headers, as a static host serves it); yields the base URL."""
    url, stop = serve(site_root)
    yield url
    stop()


@pytest.fixture(scope="module")
def isolated_site(site_root):
    """The same folder served by serve.py, `make serve`'s server, with the isolation headers."""
    url, stop = isolated.serve(site_root)
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
    (dict(sampler="Heun"), "sampler must be one of DDIM, Euler a, DPM++ 2M, lcm, got Heun"),
    (dict(sampler="lcm", steps=25),
     "steps must be one of 1, 2, 4, 8 (the step counts this page has grids for), got 25"),
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


# ---- LCM, 4 steps: the student, on demand ---------------------------------------------------------------

LCM_SETTINGS = [dict(prompt="a small red circle on the left", seed=0),
                dict(prompt="a large blue square in the top right", seed=7)]


def lcm_python_pixels(lcm_pipe, o: dict) -> np.ndarray:
    """The student's picture: pipe(..., sampler="lcm", num_inference_steps=4, guidance_scale=1)."""
    images = lcm_pipe(o["prompt"], sampler="lcm", num_inference_steps=4, guidance_scale=1,
                      generator=torch.Generator().manual_seed(o["seed"])).images
    return (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize("o", LCM_SETTINGS, ids=["seed0", "seed7"])
def test_lcm_4_steps_draws_the_students_python_picture(lcm_pipe, page, o):
    ours, ms = browser_pixels(page, {**o, "sampler": "lcm", "steps": 4, "guidance": 1.0})
    ref = lcm_python_pixels(lcm_pipe, o)
    diff = np.abs(ours.astype(int) - ref.astype(int)).max()
    print(f"LCM, 4 steps: max pixel difference {diff}/255, {ms:.0f} ms in Chromium")
    assert diff <= MAX_PIXEL_DIFF, f"LCM, 4 steps: the page's picture differs by {diff}/255"
    assert ref.std() > 5


def test_the_panels_lcm_choice_loads_the_student_when_picked_and_shows_both_times(browser, site, lcm_pipe, pipe):
    page, outside, errors = open_offline(browser, site + "stable_diffusion/index.html")
    asked = []
    page.on("request", lambda r: asked.append(r.url.rsplit("/", 1)[-1]))
    page.wait_for_selector(".dn-sd-generate", timeout=TIMEOUT_MS)
    assert page.eval_on_selector_all(".dn-sd-model option", "o => o.map(x => x.value)") == \
        ["Stable Diffusion", "LCM, 4 steps"]
    base = {**SETTINGS[0], "steps": 5}
    _click_and_read_canvas(page, base)
    assert "unet.onnx" in asked and "lcm_unet.onnx" not in asked  # the student is not fetched with the page
    o = LCM_SETTINGS[1]
    page.select_option(".dn-sd-model", "LCM, 4 steps")
    assert page.is_disabled(".dn-sd-sampler") and page.is_disabled(".dn-sd-steps")
    page.fill(".dn-sd-prompt", o["prompt"])
    page.fill(".dn-sd-seed", str(o["seed"]))
    page.evaluate("() => { delete document.querySelector('.dn-sd-status').dataset.ms; }")
    page.click(".dn-sd-generate")
    page.wait_for_selector(".dn-sd-status[data-ms]", timeout=TIMEOUT_MS)
    rgba = page.evaluate("() => Array.from(document.querySelector('.dn-sd-canvas').getContext('2d')"
                         ".getImageData(0, 0, 32, 32).data)")
    drawn = np.array(rgba, dtype=np.uint8).reshape(32, 32, 4)[..., :3]
    times = page.text_content(".dn-sd-times")
    page.context.close()
    assert "lcm_unet.onnx" in asked
    assert np.abs(drawn.astype(int) - lcm_python_pixels(lcm_pipe, o).astype(int)).max() <= MAX_PIXEL_DIFF
    assert times.startswith("Time per image in this browser: Stable Diffusion, DDIM, 5 steps: ")
    assert "; LCM, 4 steps: " in times and times.endswith(" ms")
    assert outside == [] and errors == []


# ---- threads: several only where the page is cross-origin isolated ------------------------------------------

def test_the_serve_script_sends_the_isolation_headers(isolated_site):
    import urllib.request

    for path, kind in [("stable_diffusion/index.html", "text/html"), ("ort/ort-wasm-simd-threaded.wasm",
                                                                      "application/wasm")]:
        with urllib.request.urlopen(isolated_site + path) as response:
            assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert response.headers["Content-Type"].startswith(kind)


def test_make_serve_runs_the_serve_script():
    recipe = (ROOT / "Makefile").read_text().split("\nserve:", 1)[1].split("\n\n", 1)[0]
    assert "src/diffusion_notes/stable_diffusion/serve.py" in recipe and "http.server" not in recipe


def test_without_isolation_the_page_runs_on_one_thread(page):
    assert page.evaluate("() => [crossOriginIsolated, diffusionNotesSD.threads()]") == [False, 1]
    r = page.evaluate("o => diffusionNotesSD.generate(o).then(r => r.threads)", {**SETTINGS[0], "steps": 5})
    assert r == 1


def test_under_isolation_the_page_runs_on_two_threads_and_draws_the_same_picture(browser, isolated_site, pipe):
    page, outside, errors = open_offline(browser, isolated_site + "stable_diffusion/index.html?threads=2")
    page.wait_for_selector(".dn-sd-generate", timeout=TIMEOUT_MS)
    isolated_, threads = page.evaluate("() => [crossOriginIsolated, diffusionNotesSD.threads()]")
    o = SETTINGS[2]
    r = page.evaluate("o => diffusionNotesSD.generate(o).then(r => ({pixels: Array.from(r.pixels), "
                      "threads: r.threads}))", o)
    page.context.close()
    assert isolated_ is True and threads == 2 and r["threads"] == 2
    ours = np.array(r["pixels"], dtype=np.uint8).reshape(32, 32, 3)
    assert np.abs(ours.astype(int) - python_pixels(pipe, o).astype(int)).max() <= MAX_PIXEL_DIFF
    assert outside == [] and errors == []


@pytest.fixture(scope="module")
def book_site(site_root, tmp_path_factory):
    """The book's layout, served plainly: a chapter page in book/ with `page_panel_html()`, the files in
    _static/, and the service worker at the root (where make book copies it)."""
    root = tmp_path_factory.mktemp("book")
    for name in ("stable_diffusion", "ort"):
        shutil.copytree(site_root / name, root / "_static" / name)
    shutil.copyfile(site_root / "stable_diffusion" / web_export.SERVICE_WORKER, root / web_export.SERVICE_WORKER)
    (root / "book").mkdir()
    (root / "book" / "chapter.html").write_text("<!doctype html>\n<html><head><meta charset='utf-8'></head><body>\n"
                                                 + web_export.page_panel_html() + "</body></html>\n")
    url, stop = serve(root)
    yield url
    stop()


@pytest.mark.parametrize("workers", ["allow", "block"])
def test_the_service_worker_isolates_a_plainly_served_page_where_it_may(browser, book_site, pipe, workers):
    """?coi asks for the worker on 127.0.0.1 too (make serve's headers make it unneeded there); blocked, the
    page stays on one thread and still draws."""
    context, outside = offline_context(browser, service_workers=workers)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(book_site + "book/chapter.html?coi&threads=2")
    page.wait_for_selector(".dn-sd-generate", timeout=TIMEOUT_MS)  # built after the one reload, if any
    state = page.evaluate("() => [crossOriginIsolated, diffusionNotesSD.threads(), "
                          "Boolean(navigator.serviceWorker && navigator.serviceWorker.controller)]")
    o = {**SETTINGS[0], "steps": 5}
    r = page.evaluate("o => diffusionNotesSD.generate(o).then(r => ({pixels: Array.from(r.pixels), "
                      "threads: r.threads}))", o)
    context.close()
    expected = [True, 2, True] if workers == "allow" else [False, 1, False]
    assert state == expected and r["threads"] == expected[1]
    ours = np.array(r["pixels"], dtype=np.uint8).reshape(32, 32, 3)
    assert np.abs(ours.astype(int) - python_pixels(pipe, o).astype(int)).max() <= MAX_PIXEL_DIFF
    assert outside == [] and errors == []
