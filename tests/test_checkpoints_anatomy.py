"""practice/checkpoints/anatomy: a safetensors header read by hand, hashes, what a pickle imports, float16 storage."""

import hashlib
import io
import pickletools

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffusion_notes import pretrained
from diffusion_notes.practice.checkpoints import anatomy
from diffusion_notes.run_files import model_hash, sha256

DTYPES = {"F32": torch.float32, "F16": torch.float16, "I64": torch.int64}


def test_the_header_read_by_hand_is_what_safetensors_reads():
    path = pretrained.verify("vae")
    header = anatomy.read_header(path)
    with safe_open(str(path), framework="pt") as f:
        assert {t.name for t in header.tensors} == set(f.keys())
        assert header.metadata == f.metadata()
        for t in header.tensors[:10]:
            stored = f.get_tensor(t.name)
            assert tuple(stored.shape) == t.shape and stored.dtype == DTYPES[t.dtype]
    assert header.tensors[0].start == 0
    assert all(a.end == b.start for a, b in zip(header.tensors, header.tensors[1:]))  # back to back
    assert 8 + header.header_bytes + header.data_bytes == path.stat().st_size
    entry = header.tensors[3]
    torch.testing.assert_close(anatomy.read_tensor(path, entry), load_file(str(path))[entry.name], rtol=0, atol=0)


def test_hashes_are_the_files_sha256_and_its_first_ten_digits(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256(path) == digest and model_hash(path) == digest[:10]


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        anatomy.read_header(tmp_path / "missing.safetensors")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"w": torch.zeros(3)}, ckpt)
    with pytest.raises(ValueError, match="not a safetensors file"):
        anatomy.read_header(ckpt)
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(ValueError, match="fewer than 8 bytes"):
        anatomy.read_header(tmp_path / "short")


def test_a_pickle_says_what_it_would_import_and_call():
    data = anatomy.call_on_load_pickle()
    assert anatomy.pickle_imports(data) == ["builtins.print"]
    listing = io.StringIO()
    pickletools.dis(data, out=listing)
    assert "STACK_GLOBAL" in listing.getvalue() and "REDUCE" in listing.getvalue()
    imports = anatomy.torch_save_imports({"w": torch.zeros(2, 2)})
    assert "torch._utils._rebuild_tensor_v2" in imports


def test_half_precision_halves_the_bytes_and_rounds_each_weight_by_at_most_2_to_the_minus_11():
    state = {"w": torch.randn(64, 64, generator=torch.Generator().manual_seed(0)), "ids": torch.arange(4)}
    halved = anatomy.half(state)
    assert halved["w"].dtype == torch.float16 and halved["ids"].dtype == torch.int64
    assert halved["w"].nbytes * 2 == state["w"].nbytes
    assert anatomy.largest_half_error(state) <= 2**-11
