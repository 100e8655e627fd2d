"""`python -m diffusion_notes generate`: a real subprocess writes a PNG; bad settings exit with a clear error."""

import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffusion_notes import pretrained
from diffusion_notes.__main__ import main

pytestmark = pytest.mark.skipif("ldm_unet" not in pretrained.available(),
                                reason="the ldm_unet weights are not shipped in this checkout")


@pytest.mark.slow
def test_generate_writes_a_png_in_a_subprocess(tmp_path):
    out = tmp_path / "out.png"
    cmd = [sys.executable, "-m", "diffusion_notes", "generate", "a small red circle on the left",
           "--steps", "4", "--guidance-scale", "4", "--seed", "0", "--out", str(out), "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (256, 256, 3)  # 32x32 enlarged 8x
    assert image.std() > 5  # not a blank picture


def test_same_seed_same_png_and_img2img_from_an_earlier_output(tmp_path, one_thread):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    common = ["--steps", "3", "--scale", "1"]
    assert main(["generate", "a large blue square", *common, "--seed", "1", "--out", str(a)]) == 0
    assert main(["generate", "a large blue square", *common, "--seed", "1", "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    big = tmp_path / "big.png"
    assert main(["generate", "a large blue square", "--steps", "3", "--out", str(big)]) == 0  # 256x256
    assert main(["generate", "a large red square", "--steps", "4", "--init-image", str(big),
                 "--strength", "0.5", "--out", str(c), "--scale", "1"]) == 0
    assert Image.open(c).size == (32, 32)


@pytest.mark.parametrize("bad, words", [
    (["--steps", "0"], "num_inference_steps"),
    (["--guidance-scale", "-1"], "guidance_scale"),
    (["--strength", "1.5", "--init-image", "IMG"], "strength"),
    (["--sampler", "plms"], "sampler"),
])
def test_bad_settings_exit_2_with_a_message(tmp_path, capsys, bad, words):
    init = tmp_path / "init.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(init)
    bad = [str(init) if x == "IMG" else x for x in bad]
    assert main(["generate", "a red circle", "--out", str(tmp_path / "x.png"), *bad]) == 2
    assert words in capsys.readouterr().err


def test_wrong_size_init_image_is_refused(tmp_path, capsys):
    init = tmp_path / "init.png"
    Image.fromarray(np.zeros((40, 24, 3), np.uint8)).save(init)
    assert main(["generate", "a red circle", "--init-image", str(init), "--out", str(tmp_path / "x.png")]) == 2
    assert "32x32" in capsys.readouterr().err


@pytest.mark.skipif(not {"unclip_decoder", "glide_decoder", "unclip_upsampler"} <= set(pretrained.available()),
                    reason="the unCLIP models are not shipped")
@pytest.mark.parametrize("pipeline", ["unclip", "glide"])
def test_generate_with_the_unclip_and_glide_pipelines(tmp_path, capsys, one_thread, pipeline):
    out = tmp_path / "u.png"
    assert main(["generate", "a large blue square", "--pipeline", pipeline, "--steps", "3", "--num-images", "2",
                 "--scale", "1", "--out", str(out)]) == 0
    assert Image.open(out).size == (64, 32)  # two 32x32 images in a row
    assert main(["generate", "a red circle", "--pipeline", pipeline, "--negative-prompt", "blue",
                 "--out", str(out)]) == 2
    assert "stable_diffusion" in capsys.readouterr().err


@pytest.mark.parametrize("pipeline, given, expected", [
    ("unclip", [], "euler_a"),  # the unCLIP and GLIDE pipelines' own default
    ("glide", [], "euler_a"),
    ("stable_diffusion", [], "dpmpp_2m"),
    ("unclip", ["--sampler", "DDIM"], "DDIM"),  # only a given --sampler overrides it
    ("stable_diffusion", ["--sampler", "euler"], "euler"),
])
def test_generate_keeps_each_pipelines_default_sampler_unless_one_is_given(tmp_path, monkeypatch, pipeline, given,
                                                                           expected):
    import inspect

    import torch

    from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline
    from diffusion_notes.unclip.pipeline import GLIDEPipeline, UnCLIPPipeline

    calls = []

    class Spy:
        def __call__(self, prompt, **options):
            calls.append(options)
            return type("Out", (), {"images": torch.zeros(1, 3, 32, 32)})()

    monkeypatch.setattr(pretrained, "load", lambda name: Spy())
    assert main(["generate", "a red circle", "--pipeline", pipeline, *given, "--out", str(tmp_path / "x.png")]) == 0
    sampler = calls[0].get("sampler")
    if sampler is None:  # not passed: the pipeline's own default applies
        cls = {"unclip": UnCLIPPipeline, "glide": GLIDEPipeline, "stable_diffusion": LatentDiffusionPipeline}[pipeline]
        sampler = inspect.signature(cls.__call__).parameters["sampler"].default
    assert sampler == expected


@pytest.mark.parametrize("content", [b"this is not a picture", b""])
def test_an_init_image_that_is_not_an_image_is_a_one_line_error(tmp_path, capsys, content):
    bad = tmp_path / "notes.txt"
    bad.write_bytes(content)
    assert main(["generate", "a red circle", "--init-image", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --init-image") and "not an image" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_a_missing_init_image_is_a_one_line_error(tmp_path, capsys):
    assert main(["generate", "a red circle", "--init-image", str(tmp_path / "nowhere.png"),
                 "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "nowhere.png" in err and len(err.strip().splitlines()) == 1


def test_webui_builds_its_state_from_the_shelf_and_the_user_s_folders(tmp_path, monkeypatch, one_thread):
    import diffusion_notes.practice.webui.app as app

    served = {}
    monkeypatch.setattr(app, "create_app", lambda state, **access: state)  # the pages are test_webui_api's
    monkeypatch.setattr(app, "serve", lambda state, host, port: served.update(state=state, host=host, port=port))
    lora_dir, models_dir, outputs_dir = tmp_path / "Lora", tmp_path / "models", tmp_path / "outputs"
    lora_dir.mkdir()
    (lora_dir / "mine.safetensors").write_bytes(b"")  # listed by name; read only when a prompt names it
    with socket.socket() as s:  # a port no one uses: `webui` checks that it can listen there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["webui", "--port", str(port), "--lora-dir", str(lora_dir), "--models-dir", str(models_dir),
                 "--outputs-dir", str(outputs_dir)]) == 0
    state = served["state"]
    assert (served["host"], served["port"]) == ("127.0.0.1", port) and models_dir.is_dir()
    assert state.registry.models_dir == models_dir and state.outputs_dir == outputs_dir
    assert state.registry.current.path == pretrained.verify("ldm_unet")
    shipped_loras = [*pretrained.shipped_adapters("lora"), *pretrained.shipped_adapters("lcm_lora")]
    assert state.loras.names() == [*shipped_loras, "mine"]
    assert [e.word for e in state.embeddings] == ["valentine", "sunny"]  # the shipped concept and look embeddings
    shipped = [n for n in pretrained.available() if pretrained.info(n)["recipe"] == "controlnet"]
    assert shipped and sorted(state.controlnets) == shipped
