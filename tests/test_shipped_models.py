"""The shipped models load, verify, and still meet the targets their chapters quote.

These re-measure on fresh samples (not the manifest's own numbers), smaller than the
manifest's evaluation so the suite stays quick.
"""

import pytest
import torch

from diffusion_notes import pretrained
from diffusion_notes.clip_eval import retrieval_recall, zero_shot_accuracy
from diffusion_notes.data.shapes import ShapesDataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clip():
    return pretrained.load("clip")


def test_shipped_names():
    assert {"clip", "shapes_classifier", "vae", "ldm_unet"} <= set(pretrained.available())


def test_autoencoder_reconstructs_held_out_images_above_30_db():
    from diffusion_notes.vae import psnr

    vae = pretrained.load("vae")
    x = ShapesDataset("heldout", 256, seed=5).images()  # other held-out images than the manifest's
    with torch.no_grad():
        values = psnr(x, vae.decode(vae.encode(x).mean))  # (256,)
    assert float(values.mean()) >= 30.0, float(values.mean())
    scale = pretrained.info("vae")["metrics"]["scale_factor"]
    with torch.no_grad():
        z = vae.encode(ShapesDataset("train", 256, seed=5).images()).sample(torch.Generator().manual_seed(1))
    assert abs(float((z * scale).std()) - 1.0) < 0.1  # the scale factor gives unit-variance latents


@pytest.mark.parametrize("split, target", [("train", 0.9), ("heldout", 0.7)])
def test_stable_diffusion_draws_what_prompts_ask_for(split, target):
    """The issue's targets: colour and shape both right for >= 90% of seen and >= 70% of held-out combinations.

    Fewer captions (96) and steps (15) than benchmarks/ldm_quality.py (500, 25), so a margin of 0.05
    for sampling noise; one-object captions must be right almost always, two-object ones (binding,
    Chapter 13) more often than not.
    """
    from diffusion_notes.ldm_eval import fidelity

    pipe, classifier = pretrained.load("stable_diffusion"), pretrained.load("shapes_classifier")
    f = fidelity(pipe, classifier, split, n=96, seed=11, num_inference_steps=15)
    assert f["colour_shape"] >= target - 0.05, f
    assert f["one_object/colour_shape"] >= 0.9, f
    assert f["two_objects/colour_shape"] >= 0.5, f


def test_clip_zero_shot_meets_the_targets_on_unseen_images(clip):
    acc = zero_shot_accuracy(clip, ShapesDataset("train", length=10**6, seed=7), n=300, attributes=("colour", "shape"))
    assert acc["colour"] >= 0.95, acc
    assert acc["shape"] >= 0.90, acc


def test_clip_retrieval_finds_the_caption_among_the_top_five(clip):
    recall = retrieval_recall(clip, ShapesDataset("train", length=10**6, seed=7), n=300, ks=(1, 5))
    assert recall["recall@5"] >= 0.9, recall
    assert recall["recall@1"] > 0.3, recall  # chance is 1/300


def test_clip_embeddings_are_unit_vectors_and_text_states_have_77_positions(clip):
    enc = clip.encode_text(["a small red circle on the left"])
    assert enc.token_states.shape[1] == 77
    assert torch.allclose(enc.z_t.norm(dim=-1), torch.ones(1), atol=1e-5)
    z_i = clip.encode_image(ShapesDataset("train", length=4, seed=7).images(0, 4))
    assert torch.allclose(z_i.norm(dim=-1), torch.ones(4), atol=1e-5)
