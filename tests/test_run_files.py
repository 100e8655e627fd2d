"""Checkpoint files: safetensors (no pickle), atomic writes, optimizer state round trip."""

import json
import struct

import pytest
import torch

from diffusion_notes import run_files
from diffusion_notes.run_files import (
    flatten_optimizer_state,
    load_checkpoint,
    read_metadata,
    remove_stale_temporaries,
    save_checkpoint,
    unflatten_optimizer_state,
)


def _tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "model.w": torch.randn(3, 4, generator=g),
        "model.count": torch.tensor(seed, dtype=torch.long),
        "rng.torch": torch.get_rng_state(),
    }


def test_round_trip_and_format(tmp_path):
    path = tmp_path / "ck.safetensors"
    tensors, meta = _tensors(1), {"step": 7, "config": {"hidden": 16, "sizes": [1, 2]}, "note": None}
    save_checkpoint(path, tensors, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta and read_metadata(path) == meta
    assert loaded.keys() == tensors.keys()
    for k in tensors:
        assert loaded[k].dtype == tensors[k].dtype and torch.equal(loaded[k], tensors[k])
    # The safetensors layout: an 8-byte little-endian header length, then a JSON header; no pickle opcodes.
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert set(header) == set(tensors) | {"__metadata__"}
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:4]  # neither a pickle nor torch.save's zip


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_failing_write_leaves_old_checkpoint(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, _tensors(1), {"step": 1})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(run_files.os, fail_at, boom)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, _tensors(2), {"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)[1] == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors"]  # no temporary left behind


def test_stale_temporaries_are_removed(tmp_path):
    save_checkpoint(tmp_path / "ck.safetensors", _tensors(1), {"step": 1})
    (tmp_path / ".ck.safetensors.123-abcd.tmp").write_bytes(b"half a file")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors"]


def test_missing_file_and_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="no 'diffusion_notes' metadata"):
        read_metadata(tmp_path / "plain.safetensors")


def _adamw_after_steps(model, n):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for i in range(n):
        loss = model(torch.full((5, 3), float(i + 1))).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def test_optimizer_state_round_trip(tmp_path):
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    opt_a = _adamw_after_steps(a, 3)
    tensors, meta = flatten_optimizer_state(opt_a.state_dict())
    assert {"optim.0.exp_avg", "optim.0.exp_avg_sq", "optim.1.exp_avg"} <= set(tensors)
    save_checkpoint(tmp_path / "o.safetensors", tensors, {"optimizer": meta})
    loaded, loaded_meta = load_checkpoint(tmp_path / "o.safetensors")

    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    opt_b.load_state_dict(unflatten_optimizer_state(loaded, loaded_meta["optimizer"]))
    # One more identical step on each: the parameters must stay bitwise equal.
    for model, opt in ((a, opt_a), (b, opt_b)):
        loss = model(torch.ones(5, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_model_hash_is_the_first_ten_hex_digits_of_the_sha256(tmp_path):
    import hashlib

    from diffusion_notes.run_files import model_hash, sha256

    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not really a model" * 1000)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256(path) == expected and model_hash(path) == expected[:10]
    path.write_bytes(b"another")  # a changed file is hashed again, not served from the cache
    assert sha256(path) == hashlib.sha256(b"another").hexdigest()
