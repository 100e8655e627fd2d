"""`export stable_diffusion --format onnx`: the files Chapter 13's page runs, held against torch and open_clip.

The ONNX graphs against the torch modules (onnxruntime, any batch size), the tokenizer's table
against open_clip's tokenizer on the caption generator's captions, the sampling tables against
`make_grid` and `prepare_step`, the page's noise (its Python twin, tests/web_noise.py) against
torch's generator, and the command's errors. The page itself runs in tests/browser/test_page_model.py.
"""

import dataclasses
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
         "dn_coi_sw.js", "index.html"}


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


@pytest.fixture(scope="module")
def student():
    """The LCM student; until it is shipped, the base UNet stands in (a UNet of the same config)."""
    return pretrained.load("lcm_unet" if "lcm_unet" in pretrained.available() else "ldm_unet", device="cpu")


@pytest.fixture(scope="module")
def exported_lcm(pipe, student, tmp_path_factory):
    """The folder written with the LCM student too."""
    out = tmp_path_factory.mktemp("web_lcm") / "stable_diffusion"
    web_export.export_onnx(pipe, out, lcm_unet=student)
    return out


def test_the_folder_holds_the_three_graphs_the_table_the_config_and_the_page(exported):
    assert {p.name for p in exported.iterdir()} - {"lcm_unet.onnx"} == FILES  # the student's where it is given
    for name in web_export.PAGE_FILES:
        assert (exported / name).read_bytes() == (web_export.WEB_DIR / name).read_bytes()
    index = (exported / "index.html").read_text()
    assert 'data-model="./"' in index and 'src="../ort/ort.wasm.min.js"' in index and 'src="./sd_page.js"' in index
    assert 'data-coi=""' in index  # no service worker: one in this folder could not serve ../ort/


def test_without_a_student_the_page_offers_the_base_model_only(pipe, tmp_path):
    sizes = web_export.export_onnx(pipe, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "lcm" not in config and config["unets"] == {} and "lcm" not in config["sampling"]["tables"]
    assert set(sizes) == FILES and "lcm_unet" not in config["files"]


def test_every_graphs_batch_axis_is_named_for_the_pages_overrides(exported):
    """The page fixes the batch at session creation (freeDimensionOverrides) by the axis's name."""
    onnx = pytest.importorskip("onnx")
    assert json.loads((exported / "config.json").read_text())["batch_axis"] == web_export.BATCH_AXIS
    for name in ("text_encoder", "unet", "vae_decoder"):
        graph = onnx.load(str(exported / f"{name}.onnx"), load_external_data=False).graph
        for value in (*graph.input, *graph.output):
            assert value.type.tensor_type.shape.dim[0].dim_param == web_export.BATCH_AXIS, (name, value.name)
        for value in graph.input:  # every other input axis is fixed already
            assert all(d.dim_value > 0 for d in value.type.tensor_type.shape.dim[1:]), (name, value.name)


def _optimised_nodes(path: Path, tmp_path: Path, B=None) -> list[str]:
    onnxruntime = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable fusions
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    if B is not None:
        options.add_free_dimension_override_by_name(web_export.BATCH_AXIS, B)
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]


@pytest.mark.parametrize("B", [1, 2])
def test_with_the_batch_fixed_onnxruntime_folds_every_shape_computation(exported, tmp_path, B):
    """What the page's session options buy: no Shape node is left to run in the UNet on each call."""
    assert "Shape" in _optimised_nodes(exported / "unet.onnx", tmp_path)  # dynamic: shapes computed per call
    fixed = _optimised_nodes(exported / "unet.onnx", tmp_path, B)
    assert "Shape" not in fixed and "Gather" not in fixed, sorted(set(fixed))


def test_the_lcm_student_is_exported_like_the_base_unet(pipe, student, exported_lcm):
    assert {p.name for p in exported_lcm.iterdir()} == FILES | {"lcm_unet.onnx"}
    diffs = web_export.check_onnx(pipe, exported_lcm, lcm_unet=student)
    assert set(diffs) == {"text_encoder", "unet", "vae_decoder", "lcm_unet"}
    assert diffs["lcm_unet"] < web_export.TOLERANCE, diffs


@torch.no_grad()
@pytest.mark.parametrize("B", [1, 2])
def test_the_lcm_students_graph_is_the_student(pipe, student, exported_lcm, B):
    g = torch.Generator().manual_seed(B)
    states = pipe.clip.encode_text(tokenize(["a red circle", ""][:B], allow_empty=True)).token_states
    x, t = torch.randn(B, 4, 8, 8, generator=g), torch.tensor([999.0, 259.0][:B])  # LCM's grid points
    eps = _session(exported_lcm / "lcm_unet.onnx").run(None, {"x": x.numpy(), "t": t.numpy(),
                                                              "context": states.numpy()})[0]
    assert np.abs(eps - student(x, t, states).numpy()).max() < 1e-4


def test_the_config_holds_the_students_choice_and_lcms_tables(pipe, exported_lcm):
    config = json.loads((exported_lcm / "config.json").read_text())
    assert config["lcm"] == web_export.LCM and config["lcm"]["label"] == "LCM, 4 steps"
    assert config["lcm"]["steps"] in web_export.LCM_STEPS and config["lcm"]["guidance"] == 1.0
    assert config["unets"] == {"lcm": "lcm_unet"} and config["files"]["lcm_unet"] == "lcm_unet.onnx"
    assert config["samplers"] == web_export.WEB_SAMPLERS  # the base model's menu is unchanged
    sampling = config["sampling"]
    assert sampling["fields"]["lcm"] == ["sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "c_skip", "c_out",
                                         "sqrt_alpha_bar_prev", "sqrt_one_minus_alpha_bar_prev"]
    assert set(sampling["tables"]["lcm"]) == {str(n) for n in web_export.LCM_STEPS}
    for n in web_export.LCM_STEPS:
        grid = make_grid("lcm", n, pipe.schedule)
        step = prepare_step("lcm", grid, pipe.schedule, dtype=torch.float32)
        table = sampling["tables"]["lcm"][str(n)]
        assert table["timesteps"] == grid.timesteps.tolist() and table["sigmas"] is None
        assert table["coefficients"] == [_json_row(c) for c in step.coefficients]
        assert table["draws_noise"] == [True] * (n - 1) + [False] and table["init_noise_scale"] == 1.0
    assert sampling["tables"]["lcm"]["4"]["timesteps"] == [999, 759, 499, 259]  # LCMScheduler's, n = 4


def test_a_student_of_another_config_is_refused(pipe, tmp_path):
    other = pretrained.load("ldm_unet", device="cpu")
    other.config = dataclasses.replace(other.config, heads=other.config.heads * 2)
    with pytest.raises(ValueError, match="lcm_unet must have the base UNet's config"):
        web_export.export_onnx(pipe, tmp_path / "x", lcm_unet=other)
    assert not (tmp_path / "x" / "unet.onnx").exists()


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
    student = {config["lcm"]["sampler"]} if config.get("lcm") else set()  # exported with the LCM student
    assert set(sampling["tables"]) == set(sampling["fields"]) == set(web_export.WEB_SAMPLERS.values()) | student
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
    fields = {name for sampler in [*web_export.WEB_SAMPLERS.values(), web_export.LCM["sampler"]]
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
    assert ('<div class="dn-sd-panel" data-model="../_static/stable_diffusion/" data-ort="../_static/ort/" '
            'data-coi="../_static/../dn_coi_sw.js">') in html  # the service worker: at the site's root
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
