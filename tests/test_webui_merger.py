"""The Checkpoint Merger and the checkpoints the web UI lists."""

import json

import pytest
import torch

from diffusion_notes import pretrained
from diffusion_notes.practice.webui.merger import merge, merge_tensors
from diffusion_notes.practice.webui.models import ModelRegistry, checkpoint_info, read_unet
from diffusion_notes.run_files import load_checkpoint, model_hash, read_metadata, save_checkpoint


@pytest.fixture
def folder(tmp_path):
    """The shipped UNet (A), and a perturbed copy of it (B) in a user folder."""
    shipped = pretrained.verify("ldm_unet")
    tensors, meta = load_checkpoint(shipped)
    g = torch.Generator().manual_seed(0)
    other = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in tensors.items()}
    save_checkpoint(tmp_path / "tuned.safetensors", other, {"recipe": meta["recipe"], "config": meta["config"]})
    return shipped, tmp_path


@pytest.mark.parametrize("m, expected", [(0.0, "A"), (1.0, "B")])
def test_weighted_sum_at_0_and_1_reproduces_its_inputs(folder, m, expected):
    shipped, tmp_path = folder
    a, b = checkpoint_info(shipped), checkpoint_info(tmp_path / "tuned.safetensors")
    info, entry = merge(a, b, None, "Weighted sum", m, tmp_path, f"merged_{m:g}")
    merged = load_checkpoint(info.path)[0]
    reference = load_checkpoint((a if expected == "A" else b).path)[0]
    assert merged.keys() == reference.keys()
    assert all(torch.equal(merged[k], reference[k]) for k in reference)
    assert info.hash == model_hash(info.path) and len(info.hash) == 10
    manifest = json.loads((tmp_path / "manifest.json").read_text())["models"][f"merged_{m:g}"]
    assert manifest == entry and manifest["model_hash"] == info.hash
    assert manifest["merge"]["models"]["A"]["hash"] == a.hash and manifest["merge"]["multiplier"] == m
    assert read_metadata(info.path)["merge"] == manifest["merge"]


def test_add_difference(folder):
    shipped, tmp_path = folder
    a, b = checkpoint_info(shipped), checkpoint_info(tmp_path / "tuned.safetensors")
    at0, _ = merge(a, b, a, "Add difference", 0.0, tmp_path, "diff0")
    ref, got = load_checkpoint(shipped)[0], load_checkpoint(at0.path)[0]
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    at1, entry = merge(a, b, a, "Add difference", 1.0, tmp_path, "diff1")  # A + (B - A) = B
    tuned, got = load_checkpoint(b.path)[0], load_checkpoint(at1.path)[0]
    assert all(torch.allclose(got[k], tuned[k], atol=1e-6) for k in tuned)
    assert set(entry["merge"]["models"]) == {"A", "B", "C"}


def test_merger_errors(folder):
    shipped, tmp_path = folder
    a = checkpoint_info(shipped)
    with pytest.raises(ValueError, match="tertiary"):
        merge(a, a, None, "Add difference", 0.5, tmp_path, "x")
    with pytest.raises(ValueError, match="method"):
        merge_tensors({}, {}, None, "Sum", 0.5)
    with pytest.raises(ValueError, match="architectures"):
        merge_tensors({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, None, "Weighted sum", 0.5)
    with pytest.raises(ValueError, match="name"):
        merge(a, a, None, "Weighted sum", 0.5, tmp_path, "../escape")


def test_registry_lists_and_loads_user_checkpoints(pipe, folder):
    shipped, tmp_path = folder
    registry = ModelRegistry(pipe, shipped, tmp_path)
    assert [c.model_name for c in registry.checkpoints] == ["ldm_unet", "tuned"]
    info = registry.select("tuned")
    assert registry.current == info and registry.find(info.hash) == info and registry.find(info.title) == info
    tuned_pipe, _ = registry.pipeline()
    assert tuned_pipe.vae is pipe.vae and tuned_pipe.unet is not pipe.unet
    with pytest.raises(ValueError, match="unknown checkpoint"):
        registry.find("nope")
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a checkpoint"):
        read_unet(tmp_path / "broken.safetensors")
