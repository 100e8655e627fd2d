"""practice/checkpoints: our shipped Stable Diffusion exported to diffusers' folder and to one SD v1 file, loaded back offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import pytest
import torch

from diffusion_notes.__main__ import main
from diffusion_notes.data.tokenizer import tokenize
from diffusion_notes.practice.checkpoints import export, sd_keys, to_diffusers
from diffusion_notes.practice.checkpoints.compare import max_difference

PROMPTS = ["a small red circle on the left", "a large green star in the center"]


@pytest.fixture(scope="module")
def folder(pipe, tmp_path_factory):
    return export.write_diffusers(pipe, tmp_path_factory.mktemp("export") / "sd_tiny")


@pytest.fixture(scope="module")
def loaded(folder):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)


def test_the_folder_has_diffusers_layout(folder, loaded):
    for part in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                 "tokenizer", "scheduler/scheduler_config.json"):
        assert (folder / part).exists(), part
    assert type(loaded.unet).__name__ == "UNet2DConditionModel" and type(loaded.vae).__name__ == "AutoencoderKL"
    assert type(loaded.text_encoder).__name__ == "CLIPTextModel" and loaded.safety_checker is None


def test_diffusers_draws_our_pictures(pipe, loaded):
    diffs = max_difference(pipe, loaded, PROMPTS, steps=6)
    assert set(diffs) == {"ddim", "euler_a", "dpmpp_2m"}
    assert max(diffs.values()) <= 1e-4, diffs


@torch.no_grad()
def test_each_part_computes_what_ours_does(pipe, loaded):
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 128, generator=g)
    t = torch.tensor([3, 700])
    torch.testing.assert_close(loaded.unet(x, t, encoder_hidden_states=ctx).sample, pipe.unet(x, t, ctx),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded.vae.decode(x).sample, pipe.vae.decode(x), rtol=1e-5, atol=1e-5)
    ids = tokenize(PROMPTS + [""], allow_empty=True)
    torch.testing.assert_close(loaded.text_encoder(ids)[0], pipe.clip.encode_text(ids).token_states)


def test_the_tokenizer_gives_open_clips_ids(loaded):
    def ids(text):
        return loaded.tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids

    for text in PROMPTS + ["", "a purple hexagon, twice", "A   Tiny BLUE square."]:
        assert ids(text) == tokenize(text, allow_empty=True)[0].tolist(), text
    # Its pad token is "!" (id 0, as SD 2's tokenizer has it), so a "!" in a prompt reads as id 0, not 256.
    assert ids("hexagon!")[3] == 0 and tokenize("hexagon!")[0, 3] == 256


@torch.no_grad()
def test_the_encoder_is_the_one_part_that_differs(pipe, loaded):
    """Our stride-2 convs pad every side, diffusers' encoder only right and bottom (to_diffusers' docstring)."""
    x = pipe.decode_latents(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))) * 2 - 1
    gap = (loaded.vae.encode(x).latent_dist.mean - pipe.vae.encode(x).mean).abs().max()
    assert gap > 0.1


def test_the_single_file_has_sd_v1_names_and_loads_offline(pipe, folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    path = export.write_single_file(pipe, tmp_path / "sd.safetensors")
    tensors = export.single_file_tensors(pipe)
    prefixes = {k.split(".")[0] for k in tensors}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.2.0.op.weight",
                "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.output_blocks.1.1.conv.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight", "first_stage_model.quant_conv.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"):
        assert key in tensors, key
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)
    diffs = max_difference(pipe, loaded, PROMPTS[:1], samplers=("dpmpp_2m",), steps=6)
    assert diffs["dpmpp_2m"] <= 1e-4


def test_unet_names_follow_sd_v1_numbering(pipe):
    config = to_diffusers.unet_config(pipe.unet)
    names = to_diffusers.unet_names(pipe.unet)
    sd = {ours: sd_keys.unet_key(theirs, config) for ours, theirs in names.items()}
    assert sd["down.0.0.conv1.weight"] == "input_blocks.1.0.in_layers.2.weight"
    assert sd["down.1.0.conv.weight"] == "input_blocks.2.0.op.weight"
    assert sd["up.2.0.conv.weight"] == "output_blocks.1.1.conv.weight"
    assert sd["up.3.1.attn2.to_q.weight"] == "output_blocks.2.1.transformer_blocks.0.attn2.to_q.weight"
    assert sd["mid.2.skip.weight" if "mid.2.skip.weight" in sd else "mid.2.conv2.weight"].startswith("middle_block.2.")


def test_export_command_rejects_an_unknown_format(capsys, tmp_path):
    assert main(["export", "stable_diffusion", "--format", "ckpt", "--out", str(tmp_path)]) == 2
    assert "--format must be one of diffusers, onnx, single-file" in capsys.readouterr().err


def test_a_layout_diffusers_cannot_hold_is_refused():
    from diffusion_notes.nn.unet import UNet, UNetConfig

    with pytest.raises(to_diffusers.MappingError, match="additive timestep embeddings"):
        to_diffusers.unet_config(UNet(UNetConfig(scale_shift_norm=True)))
