"""Teaching the shipped model the heart: the concept's data, textual inversion, DreamBooth's prior term."""

import copy

import pytest
import torch

from diffusion_notes.data.tokenizer import tokenize
from diffusion_notes.practice.finetune.concept import (
    HELDOUT_COLOURS,
    INSTANCE_COLOURS,
    heldout_prompts,
    instance_attributes,
    instance_images,
)
from diffusion_notes.practice.finetune.learner import FineTuneConfig, add_token, concept_loss, token_id, token_row
from diffusion_notes.training import frozen
from diffusion_notes.training.loop import train
from diffusion_notes.training.recipes import get_recipe


def test_the_concept_pictures_are_hearts_the_judge_reads_and_the_heldout_prompts_are_new():
    images, captions = instance_images()
    assert images.shape == (6, 3, 32, 32) and all("heart" in c for c in captions)
    assert sorted(a["objects"][0]["colour"] for a in instance_attributes()) == sorted(INSTANCE_COLOURS)
    read = frozen.concept_judge().predict_attributes(images)
    assert [r["objects"][0]["shape"] for r in read] == ["heart"] * 6
    prompts, attributes = heldout_prompts(32)
    assert all(a["objects"][0]["colour"] in HELDOUT_COLOURS for a in attributes)
    assert not set(prompts) & set(captions)
    assert frozen.classifier().predict_attributes(images)[0]["objects"][0]["shape"] != "heart"  # the old judge cannot


def test_add_token_gives_the_word_a_row_and_leaves_every_other_word_alone(one_thread):
    clip = frozen.clip()
    text = copy.deepcopy(clip.text)
    with pytest.raises(ValueError, match="has no row"):
        token_row(text, "heart")
    row = add_token(text, "heart", init_word="circle")
    assert token_row(text, "heart") == row
    ids = tokenize(["a small red circle on the left", "a large blue star, above a tiny white square"])
    with torch.no_grad():
        assert torch.equal(text(ids)[1], clip.text(ids)[1])
    with pytest.raises(ValueError, match="already has a row"):
        add_token(text, "heart")
    with pytest.raises(ValueError, match="one-token word"):
        token_id("plus sign")


def test_textual_inversion_trains_only_the_new_row(tmp_path, one_thread):
    result = train("textual_inversion", steps=3, out_dir=tmp_path / "ti", progress=False)
    learner = result.model
    base_text, base_unet = frozen.clip().text, frozen.ldm_unet()
    table, row = learner.text.token_embedding.weight, learner.row
    expected = torch.cat([base_text.token_embedding.weight[:row], table[row:row + 1], base_text.token_embedding.weight[row:]])
    assert torch.equal(table, expected)  # every other row restored exactly
    circle = int((base_text.vocabulary == token_id("circle")).nonzero())
    assert not torch.equal(table[row], base_text.token_embedding.weight[circle])  # the new row moved from its start
    assert all(torch.equal(a, b) for a, b in zip(learner.unet.state_dict().values(), base_unet.state_dict().values()))
    assert all(torch.equal(p, q) for (n, p), (_, q) in zip(learner.text.named_parameters(), base_text.named_parameters())
               if n != "token_embedding.weight")


@pytest.mark.slow
def test_dreambooth_with_prior_preservation_adds_the_class_term(one_thread):
    plain, prior = get_recipe("dreambooth").make_batch(0, 6, 0), get_recipe("dreambooth_prior").make_batch(0, 6, 0)
    assert set(plain) == {"z0", "ids"} and set(prior) == {"z0", "ids", "prior_z0", "prior_ids"}
    assert torch.equal(plain["z0"], prior["z0"])
    # the class pictures are the base pipeline's own latents for ordinary captions
    z, ids = frozen.class_latents(0)
    assert z.shape == (48, 4, 8, 8) and ids.shape == (48, 77)
    assert not (ids == token_id("heart")).any()
    learner = get_recipe("dreambooth_prior").build(FineTuneConfig("dreambooth", prior_preservation=True))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():
        instance_only = concept_loss(learner, plain, g())
        both = concept_loss(learner, prior, g())
    assert both > instance_only  # the same instance term (same draws first), plus lambda times the class term
    with pytest.raises(ValueError, match="pick the recipe"):
        get_recipe("dreambooth").build(FineTuneConfig("dreambooth", prior_preservation=True))


def test_fine_tune_configs_say_what_is_wrong():
    with pytest.raises(ValueError, match="method must be one of"):
        FineTuneConfig("hypernetwork")
    with pytest.raises(ValueError, match="prior_preservation is DreamBooth's"):
        FineTuneConfig("lora", prior_preservation=True)


def test_the_shipped_lora_and_embedding_load_through_pretrained(one_thread):
    from diffusion_notes import pretrained
    from diffusion_notes.practice.finetune.lora_files import LoRANetwork, check_network
    from diffusion_notes.practice.webui import launch

    network = pretrained.load("heart_lora", device="cpu")
    assert isinstance(network, LoRANetwork) and network.metadata["trigger"] == "heart"
    check_network(network, frozen.ldm_unet())  # every layer fits the shipped UNet
    entry = pretrained.info("heart_lora")
    assert network.rank == entry["config"]["rank"] and entry["recipe"] == "lora"
    assert pretrained.shipped_adapters("lora") == ["heart_lora"]
    embedding = pretrained.load("heart_embedding", device="cpu")
    assert embedding.word == "valentine" and embedding.vector.shape == (128,)
    assert [e.word for e in launch.embeddings()] == ["valentine", "sunny"]  # a concept and a look, both on
    library = launch.lora_library(frozen.ldm_unet())
    # every shipped LoRA: the heart's, and Chapter 18's LCM-LoRA ("lcm")
    assert library.names() == ["heart_lora", *pretrained.shipped_adapters("lcm_lora")]
    assert library.get("heart_lora") is not None


@pytest.mark.slow
def test_a_run_draws_the_same_numbers_whether_or_not_its_frozen_models_were_loaded_before(tmp_path, one_thread):
    """Loading builds modules, whose initial weights are random draws; they must not shift the run's own draws
    (the LoRA factors A start random), or a run in a notebook that loaded the pipeline first differs from the CLI."""
    for cached in vars(frozen).values():
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()
    cold = train("lora", steps=3, out_dir=tmp_path / "cold", progress=False)  # loads the frozen models itself
    warm = train("lora", steps=3, out_dir=tmp_path / "warm", progress=False)  # finds them loaded
    assert cold.losses == warm.losses
    assert all(torch.equal(v, warm.model.state_dict()[k]) for k, v in cold.model.state_dict().items())
