"""The tiny CLIP: loss against open_clip, encoders, tokenizer, bad input, training batches."""

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion_notes.data.shapes import ShapesDataset
from diffusion_notes.data.tokenizer import caption_vocabulary, decode, derive_caption_vocabulary, to_compact, tokenize
from diffusion_notes.unclip.clip import CLIP, CLIPConfig, TextEncoding, clip_batch, clip_loss, clip_training_loss
from diffusion_notes.unclip.clip_eval import class_probabilities, retrieval_recall, zero_shot_accuracy

SMALL = CLIPConfig(embed_dim=16, text_width=32, text_layers=2, text_heads=2, image_widths=(8, 8, 16))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CLIP(SMALL).eval()


def _captions(split, n, seed=3):
    dataset = ShapesDataset(split, 10**6, seed=seed)
    return [dataset.caption(i) for i in range(n)]


@pytest.mark.parametrize("seed, B, scale", [(0, 4, 1.0), (1, 16, 14.3), (2, 33, 100.0)])
def test_clip_loss_equals_open_clip(seed, B, scale):
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(seed)
    z_i = torch.nn.functional.normalize(torch.randn(B, 8, generator=g), dim=-1)
    z_t = torch.nn.functional.normalize(torch.randn(B, 8, generator=g), dim=-1)
    scale = torch.tensor(scale)
    torch.testing.assert_close(clip_loss(z_i, z_t, scale), ClipLoss()(z_i, z_t, scale))


def test_encoders_shapes_and_norms(model):
    encoding = model.encode_text(["a small red circle in the top left", "a big blue star at the top"])
    assert isinstance(encoding, TextEncoding)
    assert encoding.z_t.shape == (2, 16) and encoding.token_states.shape == (2, 77, 32)
    torch.testing.assert_close(encoding.z_t.norm(dim=-1), torch.ones(2))
    from_ids = model.encode_text(tokenize(["a small red circle in the top left"]), normalize=False)
    torch.testing.assert_close(torch.nn.functional.normalize(from_ids.z_t, dim=-1), encoding.z_t[:1])
    z_i = model.encode_image(ShapesDataset("train", 3).images())
    assert z_i.shape == (3, 16)
    torch.testing.assert_close(z_i.norm(dim=-1), torch.ones(3))


def test_pooled_output_equals_truncated_run(model):
    ids = tokenize(_captions("train", 32))
    length = int(ids.argmax(-1).max()) + 1
    assert length < 77
    with torch.no_grad():
        full, states = model.text(ids)
        short, short_states = model.text(ids[:, :length])
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short_states, states[:, :length], atol=1e-5, rtol=1e-5)
    batch = clip_batch(0, 8, seed=0)
    with torch.no_grad():
        z_i = model.encode_image(batch["images"])
        z_t = model.encode_text(batch["tokens"]).z_t
        torch.testing.assert_close(clip_training_loss(model, batch), clip_loss(z_i, z_t, model.logit_scale))


def test_tokenizer_matches_open_clip_and_round_trips():
    import open_clip

    captions = _captions("train", 200) + _captions("heldout", 200)
    ids = tokenize(captions)
    torch.testing.assert_close(ids, open_clip.get_tokenizer("ViT-B-32")(captions))
    assert torch.equal(tokenize(decode(ids)), ids)


def test_tokenizing_loads_open_clips_tokenizer_without_the_rest_of_open_clip():
    import json
    import subprocess
    import sys

    import open_clip

    captions = ["a small red circle on the left", "a large white square at the top, below a tiny cyan star", "zebra!"]
    code = ("import json, sys; from diffusion_notes.data.tokenizer import tokenize; "
            f"ids = tokenize({captions!r}).tolist(); "
            "print(json.dumps([ids, 'open_clip' in sys.modules, 'torchvision' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    ids, loaded_open_clip, loaded_torchvision = json.loads(out)
    assert not loaded_open_clip and not loaded_torchvision
    assert ids == open_clip.get_tokenizer("ViT-B-32")(captions).tolist()


def test_stored_caption_vocabulary_equals_the_derived_one():
    assert caption_vocabulary() == derive_caption_vocabulary()


def test_caption_vocabulary_covers_the_dataset():
    vocabulary = torch.tensor(caption_vocabulary())
    ids = tokenize(_captions("train", 1500, seed=7) + _captions("heldout", 500, seed=7))
    assert (to_compact(ids, vocabulary) < len(vocabulary)).all()  # no <unk>
    assert set(ids.unique().tolist()) <= set(caption_vocabulary())
    unk = to_compact(tokenize(["a zebra"]), vocabulary)
    assert unk[0, 2] == len(vocabulary)  # "zebra" is not a Shapes word


def test_long_captions_are_truncated_with_a_warning():
    import open_clip

    text = " ".join(["a small red circle"] * 30)
    with pytest.warns(UserWarning, match="122 tokens.*truncated to 77.*end token"):
        ids = tokenize(["a red circle", text])
    assert ids[1, -1] == 49407
    torch.testing.assert_close(ids, open_clip.get_tokenizer("ViT-B-32")(["a red circle", text]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenize(["a red circle"])  # short texts do not warn


def test_empty_captions(model):
    with pytest.raises(ValueError, match="allow_empty=True"):
        model.encode_text(["a red circle", ""])
    with pytest.raises(ValueError, match="allow_empty=True"):
        tokenize("   ")
    with pytest.raises(ValueError, match="empty list"):
        model.encode_text([])
    ids = tokenize("", allow_empty=True)
    assert ids[0, :2].tolist() == [49406, 49407] and (ids[0, 2:] == 0).all()
    assert model.encode_text("", allow_empty=True).z_t.shape == (1, 16)


@pytest.mark.parametrize("images, message", [
    (torch.zeros(2, 3, 64, 64), "shape"),
    (torch.zeros(2, 1, 32, 32), "shape"),
    (torch.zeros(3, 32, 32), "shape"),
    (torch.full((2, 3, 32, 32), 255.0), r"\[-1, 1\]"),
    (torch.full((2, 3, 32, 32), float("nan")), "NaN"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "float"),
])
def test_bad_images(model, images, message):
    with pytest.raises(ValueError, match=message):
        model.encode_image(images)


def test_bad_token_ids(model):
    with pytest.raises(ValueError, match="77"):
        model.encode_text(torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="end token"):
        model.encode_text(torch.zeros(2, 77, dtype=torch.long))


def test_clip_batch_is_a_pure_function_of_step():
    a, b, c = clip_batch(3, 4, seed=0), clip_batch(3, 4, seed=0), clip_batch(4, 4, seed=0)
    assert a["images"].shape == (4, 3, 32, 32) and a["tokens"].shape == (4, 77)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["tokens"], b["tokens"])
    assert not torch.equal(a["images"], c["images"])
    dataset = ShapesDataset("train", 10**9, seed=0)
    assert torch.equal(a["images"], dataset.images(12, 16))
    assert torch.equal(a["tokens"], tokenize([dataset.caption(i) for i in range(12, 16)]))


def test_logit_scale_and_safetensors_round_trip(model, tmp_path):
    torch.testing.assert_close(model.logit_scale, torch.tensor(1 / 0.07))
    big = CLIP(CLIPConfig(**{**SMALL.__dict__, "init_logit_scale": 10.0}))
    assert big.logit_scale.item() == 100.0
    save_file(model.state_dict(), tmp_path / "clip.safetensors")
    loaded = CLIP(SMALL)
    loaded.load_state_dict(load_file(tmp_path / "clip.safetensors"))
    assert "text.vocabulary" in dict(loaded.named_buffers())
    images = ShapesDataset("train", 2).images()
    torch.testing.assert_close(loaded.eval().encode_image(images), model.encode_image(images))


def test_default_config_is_small_enough():
    model = CLIP(CLIPConfig())
    megabytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    assert megabytes < 5


def test_evaluation_runs_and_reports_fractions(model):
    accuracy = zero_shot_accuracy(model, ShapesDataset("train", 100, seed=1), n=20)
    assert set(accuracy) == {"colour", "shape", "size", "position"}
    recall = retrieval_recall(model, ShapesDataset("heldout", 100), n=20)
    assert set(recall) == {"recall@1", "recall@5", "match@1"}
    assert all(0 <= v <= 1 for v in [*accuracy.values(), *recall.values()])
    assert recall["recall@1"] <= recall["recall@5"]


def test_class_probabilities_sum_prompt_probabilities():
    g = torch.Generator().manual_seed(0)
    z_i = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    z_t = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=-1)
    labels = torch.arange(12) % 3
    p = class_probabilities(z_i, z_t, labels, 20.0)
    p_prompt = torch.softmax(20.0 * z_i @ z_t.T, dim=-1)
    expected = torch.stack([p_prompt[:, labels == k].sum(-1) for k in range(3)], dim=-1)
    torch.testing.assert_close(p, expected)
    torch.testing.assert_close(p.sum(-1), torch.ones(5))
