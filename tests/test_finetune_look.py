"""Textual inversion where it works (Chapter 16): one word for a look the frozen model can already draw."""

import pytest
import torch

from diffusion_notes import pretrained
from diffusion_notes.practice.finetune import look
from diffusion_notes.practice.finetune.learner import token_id
from diffusion_notes.training import frozen
from diffusion_notes.training.loop import train


def test_the_instance_pictures_show_the_look_and_the_heldout_prompts_ask_for_other_shapes():
    images, captions = look.instance_images()
    assert images.shape == (6, 3, 32, 32) and all(c.startswith(f"a {look.WORD} ") for c in captions)
    read = frozen.concept_judge().predict_attributes(images)
    seen = [r["objects"][0] for r in read]
    assert all((o["colour"], o["size"], o["position"]) == (look.LOOK["colour"], look.LOOK["size"],
                                                            look.LOOK["position"]) for o in seen)
    assert {o["shape"] for o in seen} == set(look.INSTANCE_SHAPES)
    prompts, scenes = look.heldout_prompts(8)
    assert {s["objects"][0]["shape"] for s in scenes} == set(look.HELDOUT_SHAPES)
    assert not set(look.HELDOUT_SHAPES) & set(look.INSTANCE_SHAPES)
    assert prompts[:2] == ["a sunny cross", "a sunny star"]
    assert look.heldout_prompts(2, word=None)[0] == ["a large yellow cross in the top right",
                                                     "a large yellow star in the top right"]


def test_the_look_recipe_trains_one_row_from_yellow(tmp_path, one_thread):
    result = train("textual_inversion_look", steps=2, out_dir=tmp_path / "look", progress=False)
    learner, base = result.model, frozen.clip().text
    table, row = learner.text.token_embedding.weight, learner.row
    assert torch.equal(torch.cat([table[:row], table[row + 1:]]), base.token_embedding.weight)  # others untouched
    yellow = int((base.vocabulary == token_id("yellow")).nonzero())
    assert (table[row] - base.token_embedding.weight[yellow]).abs().max() > 0  # moved from its start


def test_the_shipped_look_embedding_loads_and_names_its_word():
    if "sunny_embedding" not in pretrained.available():
        pytest.skip("no shipped sunny_embedding")
    embedding = pretrained.load("sunny_embedding", "cpu")
    assert embedding.word == look.WORD and embedding.vector.shape == (128,)
    assert pretrained.info("sunny_embedding")["metrics"]["look/all"] >= 0.8
