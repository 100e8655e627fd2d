"""<lora:name:weight> in the web UI's prompts and its HTTP API, and embeddings that are always on."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from diffusion_notes import pretrained
from diffusion_notes.practice.finetune.learner import TokenEmbedding, with_embeddings
from diffusion_notes.practice.finetune.lora_files import applied, save_lora
from diffusion_notes.practice.webui.app import create_app
from diffusion_notes.practice.webui.extra_networks import LoRALibrary, parse_extra_networks
from diffusion_notes.practice.webui.generate import Settings, generate
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState

PROMPT = "a large orange heart on the left"


@pytest.fixture(scope="module")
def network(random_lora):
    """The shared random LoRA (conftest's `random_lora`)."""
    return random_lora


@pytest.fixture(scope="module")
def library(pipe, network, tmp_path_factory):
    folder = tmp_path_factory.mktemp("Lora")
    save_lora(network, pipe.unet, folder / "from_file.safetensors", "kohya")
    return LoRALibrary(pipe.unet, {"random": network}, folder)


def pixels(image):
    return np.asarray(image.convert("RGB"), dtype=int)


def test_tags_are_parsed_and_removed_from_the_text():
    text, tags = parse_extra_networks("a red heart <lora:heart_lora:0.8>, on the left <lora:other>")
    assert text == "a red heart , on the left " and tags == [("lora", "heart_lora", 0.8), ("lora", "other", 1.0)]
    with pytest.raises(ValueError, match="must be a number"):
        parse_extra_networks("<lora:x:strong>")


def test_weight_zero_draws_exactly_what_no_tag_draws(pipe, library):
    plain = generate(pipe, Settings(prompt=PROMPT, steps=6, seed=4))
    zero = generate(pipe, Settings(prompt=PROMPT + " <lora:random:0>", steps=6, seed=4), loras=library)
    one = generate(pipe, Settings(prompt=PROMPT + " <lora:random:1>", steps=6, seed=4), loras=library)
    assert np.array_equal(pixels(plain.images[0]), pixels(zero.images[0]))
    assert np.abs(pixels(plain.images[0]) - pixels(one.images[0])).max() > 10
    assert "<lora:random:1>" in one.infotexts[0]  # the infotext keeps the prompt as written
    again = generate(pipe, Settings(prompt=PROMPT, steps=6, seed=4))  # the UNet got its weights back
    assert np.array_equal(pixels(plain.images[0]), pixels(again.images[0]))


def test_a_tag_draws_what_the_merged_network_draws(pipe, library, network):
    tagged = generate(pipe, Settings(prompt=PROMPT + "<lora:from_file:0.7>", steps=6, seed=8), loras=library)
    with applied(pipe.unet, [(network, 0.7)]):
        direct = generate(pipe, Settings(prompt=PROMPT, steps=6, seed=8))
    assert np.abs(pixels(tagged.images[0]) - pixels(direct.images[0])).max() <= 1


def test_unknown_loras_and_kinds_are_errors(pipe, library):
    with pytest.raises(ValueError, match="unknown LoRA 'nope'; the LoRAs are random, from_file"):
        generate(pipe, Settings(prompt="a <lora:nope:1>", steps=2), loras=library)
    with pytest.raises(ValueError, match="unknown extra network <hypernet:x>"):
        generate(pipe, Settings(prompt="a <hypernet:x:1>", steps=2), loras=library)


@pytest.mark.slow
def test_the_http_api_takes_lora_tags(pipe, library, network):
    state = WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet")), loras=library)
    with TestClient(create_app(state)) as client:
        assert [item["name"] for item in client.get("/sdapi/v1/loras").json()] == ["random", "from_file"]
        body = {"prompt": PROMPT + " <lora:random:0.5>", "steps": 5, "seed": 2, "sampler_name": "Euler a"}
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200
        image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
        assert "<lora:random:0.5>" in json.loads(r.json()["info"])["infotexts"][0]
        with applied(pipe.unet, [(network, 0.5)]):
            direct = generate(pipe, Settings(prompt=PROMPT, steps=5, seed=2, sampler_name="Euler a")).images[0]
        assert np.abs(pixels(image) - pixels(direct)).max() <= 1
        bad = client.post("/sdapi/v1/txt2img", json={"prompt": "a <lora:missing:1>", "steps": 2})
        assert bad.status_code == 422 and "unknown LoRA" in bad.json()["detail"]


def test_an_embedding_changes_its_word_only(pipe):
    vector = torch.randn(pipe.clip.config.text_width, generator=torch.Generator().manual_seed(0))
    clip = with_embeddings(pipe.clip, [TokenEmbedding("heart", vector)])
    with torch.no_grad():
        other = ["a small red circle on the left", "a large blue star at the top"]
        assert torch.equal(clip.encode_text(other).token_states, pipe.clip.encode_text(other).token_states)
        assert not torch.allclose(clip.encode_text([PROMPT]).token_states, pipe.clip.encode_text([PROMPT]).token_states)
    assert len(pipe.clip.text.vocabulary) + 1 == len(clip.text.vocabulary)  # the original is untouched
