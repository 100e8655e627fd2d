"""`export stable_diffusion --format onnx`: the files Chapter 13's page runs, held against torch and open_clip.

The ONNX graphs against the torch modules (onnxruntime, any batch size), the tokenizer's table
against open_clip's tokenizer on the caption generator's captions, the sampling tables against
`make_grid` and `prepare_step`, the page's noise (its Python twin, tests/web_noise.py) against
torch's generator, and the command's errors. The page itself runs in tests/browser/test_page_model.py.
"""

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_notes import pretrained
from diffusion_notes.__main__ import main
from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.data.tokenizer import tokenize
from diffusion_notes.foundations.grids import make_grid
from diffusion_notes.foundations.samplers import init_noise_scale, prepare_step
from diffusion_notes.stable_diffusion import web_export
from diffusion_notes.stable_diffusion.web_vocab import tokenize_with_table, unknown_word_message

sys.path.insert(0, str(Path(__file__).resolve().parent))
from web_noise import TorchCPUGenerator

pytestmark = pytest.mark.skipif("ldm_unet" not in pretrained.available(),
                                reason="the ldm_unet weights are not shipped in this checkout")
FILES = {"text_encoder.onnx", "unet.onnx", "vae_decoder.onnx", "vocab.json", "config.json", "sd_page.js",
         "index.html"}


@pytest.fixture(scope="module")
def exported(pipe, tmp_path_factory):
    """The command's folder; it also runs the files against torch and fails (rc 1) past the tolerance."""
    out = tmp_path_factory.mktemp("web") / "stable_diffusion"
    assert main(["export", "stable_diffusion", "--format", "onnx", "--out", str(out), "--threads", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def table(exported):
    return json.loads((exported / "vocab.json").read_text())


def _session(path):
    onnxruntime = pytest.importorskip("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_the_folder_holds_the_three_graphs_the_table_the_config_and_the_page(exported):
    assert {p.name for p in exported.iterdir()} == FILES
    assert (exported / "sd_page.js").read_bytes() == (web_export.WEB_DIR / "sd_page.js").read_bytes()
    index = (exported / "index.html").read_text()
    assert 'data-model="./"' in index and 'src="../ort/ort.wasm.min.js"' in index and 'src="./sd_page.js"' in index


def test_onnx_matches_torch_within_1e_4(pipe, exported):
    diffs = web_export.check_onnx(pipe, exported)
    assert set(diffs) == {"text_encoder", "unet", "vae_decoder"}
    assert all(d < web_export.TOLERANCE for d in diffs.values()), diffs


@torch.no_grad()
@pytest.mark.parametrize("B", [1, 3])
def test_the_batch_dimension_is_dynamic(pipe, exported, B):
    g = torch.Generator().manual_seed(B)
    ids = tokenize(["a pink circle", "", "a big box at the top"][:B], allow_empty=True)  # "pink": the <unk> row
    states = pipe.clip.encode_text(ids).token_states  # (B, 77, D_c)
    x, t = torch.randn(B, 4, 8, 8, generator=g), torch.rand(B, generator=g) * 999  # (B, 4, 8, 8), (B,)
    out = _session(exported / "text_encoder.onnx").run(None, {"ids": ids.numpy()})[0]
    assert np.abs(out - states.numpy()).max() < 1e-4
    eps = _session(exported / "unet.onnx").run(None, {"x": x.numpy(), "t": t.numpy(), "context": states.numpy()})[0]
    assert np.abs(eps - pipe.unet(x, t, states).numpy()).max() < 1e-4
    images = _session(exported / "vae_decoder.onnx").run(None, {"z": x.numpy()})[0]
    assert np.abs(images - pipe.decode_latents(x).numpy()).max() < 1e-4


def test_the_config_carries_the_schedule_and_the_latent_shape(pipe, exported):
    config = json.loads((exported / "config.json").read_text())
    assert torch.equal(torch.tensor(config["schedule"]["alphas_cumprod"], dtype=torch.float64),
                       pipe.schedule.alphas_cumprod.double())
    assert config["latent_shape"] == [4, 8, 8] and config["image_size"] == 32
    assert config["scale_factor"] == pipe.scale_factor
    assert config["samplers"] == {"DDIM": "ddim", "Euler a": "euler_a", "DPM++ 2M": "dpmpp_2m"}


def _json_row(c) -> list:
    """One grid point's coefficients as the table writes them: floats, booleans, None where not finite."""
    return [v if isinstance(v, bool) or math.isfinite(v) else None for v in c]


@pytest.mark.parametrize("sampler", ["ddim", "euler_a", "dpmpp_2m"])
def test_the_config_holds_make_grid_and_prepare_step_for_each_offered_step_count(pipe, exported, sampler):
    text = (exported / "config.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: the browser's parser refuses them
    config = json.loads(text)
    sampling = config["sampling"]
    assert sampling["steps"] == [5, 10, 15, 25, 50] == list(web_export.WEB_STEPS)
    assert config["defaults"]["steps"] in sampling["steps"]
    assert set(sampling["tables"]) == set(sampling["fields"]) == set(web_export.WEB_SAMPLERS.values())
    assert set(sampling["tables"][sampler]) == {str(n) for n in web_export.WEB_STEPS}
    for n in web_export.WEB_STEPS:
        grid = make_grid(sampler, n, pipe.schedule)
        step = prepare_step(sampler, grid, pipe.schedule, dtype=torch.float32)
        table = sampling["tables"][sampler][str(n)]
        assert [(type(t), t) for t in table["timesteps"]] == [(type(t), t) for t in grid.timesteps.tolist()]
        assert table["sigmas"] == (None if grid.sigmas is None else grid.sigmas.tolist())
        assert sampling["fields"][sampler] == list(step.coefficients[0]._fields)
        assert table["coefficients"] == [_json_row(c) for c in step.coefficients]  # float64 bit for bit
        assert table["draws_noise"] == step.draws_noise
        assert table["init_noise_scale"] == init_noise_scale(sampler, None, grid)
    if sampler == "euler_a":  # Euler's x_T starts below 1; its timesteps are fractional
        assert table["init_noise_scale"] < 1 and any(t != int(t) for t in table["timesteps"])


def test_the_page_computes_no_grid_and_reads_coefficients_by_their_names(pipe):
    js = (web_export.WEB_DIR / "sd_page.js").read_text()
    for code in ("makeGrid", "linspace", "interp", "function prepare", "vpScale", "alphas_cumprod", "expm1",
                 "num_train_timesteps", "sampler === "):  # no grid, no coefficient, no branch per sampler
        assert code not in js, f"sd_page.js still holds {code!r}"
    assert "config.sampling" in js
    for name in web_export.WEB_SAMPLERS:  # the sampler menu and its check read the names config.json holds
        assert f'"{name}"' not in js, f"sd_page.js names the sampler {name!r} itself"
    fields = {name for sampler in web_export.WEB_SAMPLERS.values()
              for name in web_export.sampling_fields(sampler, pipe.schedule)}
    read = set(re.findall(r"\bc\.(\w+)", js))  # the updates' coefficient rows are `c`
    assert read and read <= fields, read - fields


@pytest.mark.parametrize("split, canonical", [("train", False), ("heldout", False), ("train", True)])
def test_the_table_tokenizes_every_caption_as_open_clip_does(table, split, canonical):
    dataset = ShapesDataset(split, 1500, seed=5, p_two_objects=0.5, canonical_captions=canonical)
    texts = [dataset.caption(i) for i in range(len(dataset))]
    assert [tokenize_with_table(t, table) for t in texts] == tokenize(texts).tolist()


def test_the_empty_caption_and_spacing_and_case(table):
    assert tokenize_with_table("", table) == tokenize("", allow_empty=True)[0].tolist()
    assert tokenize_with_table("  A Small\tRED circle ,  top-left ", table) == \
        tokenize("a small red circle, top-left")[0].tolist()


@pytest.mark.parametrize("sentence", ["A small RED circle, on the left.", "a small red circle on the left!",
                                      "a small red circle on the left ?.. "])
def test_a_caption_written_as_a_sentence_reads_as_the_caption(table, sentence):
    caption = "a small red circle, on the left" if "," in sentence else "a small red circle on the left"
    assert tokenize_with_table(sentence, table) == tokenize(caption)[0].tolist()
    with pytest.raises(ValueError, match='unknown word "."'):  # a stop inside the caption is still a piece
        tokenize_with_table("a small. red circle", table)


def test_an_unknown_word_is_named(table):
    with pytest.raises(ValueError, match='unknown word "pink": the model knows only the 66 words and signs') as err:
        tokenize_with_table("a small pink circle", table)
    assert "colours: red, orange" in str(err.value)
    assert str(err.value) == unknown_word_message("pink", table)


@pytest.mark.parametrize("seed", [0, 1, 123, 2**32 - 1])
def test_the_noise_twin_is_torch_generator(seed):
    g, ours = torch.Generator().manual_seed(seed), TorchCPUGenerator(seed)
    for n in (256, 16, 100, 1000, 256):  # one stream: each draw continues the last
        np.testing.assert_array_equal(ours.rand(n), torch.rand(n, generator=g).numpy())  # bit for bit
        z, ref = ours.randn(n), torch.randn(n, generator=g).numpy()
        assert z.dtype == np.float32 and np.abs(z - ref).max() < 2e-6  # within an ulp: torch's log, cos, sin


def test_the_noise_twin_refuses_what_torch_draws_another_way():
    with pytest.raises(ValueError, match="n must be an int >= 16"):
        TorchCPUGenerator(0).randn(8)
    with pytest.raises(ValueError, match="seed must be an int in"):
        TorchCPUGenerator(-1)


def test_panel_html_loads_only_files_of_the_site():
    html = web_export.page_panel_html("../_static/")
    assert '<div class="dn-sd-panel" data-model="../_static/stable_diffusion/" data-ort="../_static/ort/">' in html
    assert '<script src="../_static/ort/ort.wasm.min.js"></script>' in html
    assert '<script src="../_static/stable_diffusion/sd_page.js"></script>' in html
    assert "served over" in html and "http://" not in html and "https://" not in html
    assert web_export.page_panel_html() == html


@pytest.mark.parametrize("argv, words", [
    (["export", "stable_diffusion", "--format", "tflite"],
     "--format must be one of diffusers, onnx, single-file, got 'tflite'"),
    (["export", "unclip", "--format", "onnx"], "export knows the model stable_diffusion, got 'unclip'"),
])
def test_unknown_formats_and_models_exit_2_with_a_message(tmp_path, capsys, argv, words):
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
