"""A real open_clip model behind the tiny CLIP's interface (tested without pretrained weights)."""

import json

import pytest
import torch

from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.data.tokenizer import tokenize
from diffusion_notes.unclip.bridges import OpenCLIPBridge, load_open_clip

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 48, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def open_clip_model():
    import open_clip

    torch.manual_seed(0)
    return open_clip.CLIP(**TINY).eval()


def test_bridge_text_matches_open_clip(open_clip_model):
    bridge = OpenCLIPBridge(open_clip_model)
    captions = ["a small red circle in the top left", "a big blue star at the top"]
    with torch.no_grad():
        encoding = bridge.encode_text(captions)
        expected = open_clip_model.encode_text(tokenize(captions), normalize=True)
    torch.testing.assert_close(encoding.z_t, expected)
    assert encoding.token_states.shape == (2, 77, 64)


def test_bridge_image_resizes_and_normalises(open_clip_model):
    bridge = OpenCLIPBridge(open_clip_model)
    images = ShapesDataset("train", 2).images()  # (2, 3, 32, 32) in [-1, 1]
    with torch.no_grad():
        z_i = bridge.encode_image(images)
        x = torch.nn.functional.interpolate((images + 1) / 2, size=(48, 48), mode="bicubic").clamp(0, 1)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        expected = open_clip_model.encode_image((x - mean) / std, normalize=True)
    torch.testing.assert_close(z_i, expected)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        bridge.encode_image(255 * torch.ones(1, 3, 32, 32))


def test_load_open_clip_from_a_weights_file(open_clip_model, tmp_path):
    import open_clip

    (tmp_path / "tiny-test-clip.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "tiny-test-clip.json")
    torch.save(open_clip_model.state_dict(), tmp_path / "weights.pt")
    bridge = load_open_clip("tiny-test-clip", pretrained=str(tmp_path / "weights.pt"))
    with torch.no_grad():
        torch.testing.assert_close(bridge.encode_text(["a red circle"]).z_t,
                                   OpenCLIPBridge(open_clip_model).encode_text(["a red circle"]).z_t)
    with pytest.warns(UserWarning, match="random weights"):
        load_open_clip("tiny-test-clip", pretrained=None)


def test_missing_weights_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)) as error:
        load_open_clip("ViT-B-32", pretrained="openai", cache_dir=str(tmp_path))
    assert "create_model" in str(error.value) and "never downloads" in str(error.value)
    with pytest.raises(ValueError, match="tags are"):
        load_open_clip("ViT-B-32", pretrained="no-such-tag", cache_dir=str(tmp_path))


def test_bridge_rejects_models_without_a_builtin_text_tower():
    with pytest.raises(TypeError, match="open_clip.CLIP"):
        OpenCLIPBridge(torch.nn.Linear(2, 2))
