"""device.py: picking the device and making seeds reproduce noise."""

import random

import numpy as np
import pytest
import torch

from diffusion_notes import device as dev
from diffusion_notes.device import default_device, make_generator, randn, seed_everything


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.delenv(dev.DEVICE_ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)


def test_env_var_forces_cpu(monkeypatch):
    monkeypatch.setenv("DIFFUSION_NOTES_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")


def test_env_var_is_case_insensitive(monkeypatch):
    monkeypatch.setenv("DIFFUSION_NOTES_DEVICE", " CPU ")
    assert default_device() == torch.device("cpu")


def test_bad_env_var_lists_allowed_values(monkeypatch):
    monkeypatch.setenv("DIFFUSION_NOTES_DEVICE", "tpu")
    with pytest.raises(ValueError, match="cpu, cuda, mps.*'tpu'"):
        default_device()


def test_forced_but_unavailable_device_raises(no_accelerators, monkeypatch):
    monkeypatch.setenv("DIFFUSION_NOTES_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="cuda is not available"):
        default_device()
    monkeypatch.setenv("DIFFUSION_NOTES_DEVICE", "mps")
    with pytest.raises(RuntimeError, match="mps is not available"):
        default_device()


def test_fallback_order_cuda_then_mps_then_cpu(no_accelerators, monkeypatch):
    assert default_device() == torch.device("cpu")
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert default_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")


def test_make_generator_reproduces_noise():
    a = randn((2, 3), make_generator(7))
    b = randn((2, 3), make_generator(7))
    c = randn((2, 3), make_generator(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert make_generator(7).device == torch.device("cpu")


def test_randn_matches_torch_randn_on_the_generator():
    # The same numbers diffusers' randn_tensor draws with a CPU generator.
    expected = torch.randn((4, 2), generator=torch.Generator().manual_seed(3))
    got = randn((4, 2), make_generator(3), device="cpu")
    assert torch.equal(got, expected)
    assert got.dtype == torch.float32 and got.device.type == "cpu"


def test_randn_shape_dtype_and_default_device():
    x = randn(5, make_generator(0), dtype=torch.float64)
    assert x.shape == (5,) and x.dtype == torch.float64 and x.device.type == "cpu"
    assert randn(torch.Size([2, 3])).shape == (2, 3)


def test_randn_rejects_bad_shape():
    with pytest.raises(ValueError, match="shape must be a tuple of ints"):
        randn((2, 1.5))
    with pytest.raises(ValueError, match="non-negative"):
        randn((2, -1))


def test_seed_everything_reproduces_all_generators():
    seed_everything(123)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(123)
    second = (random.random(), np.random.rand(), torch.rand(1).item())
    assert first == second


@pytest.mark.parametrize("seed", ["1", 1.5, None, True, -1, 2**32])
def test_seed_must_be_a_valid_int(seed):
    with pytest.raises(ValueError, match="seed must be"):
        seed_everything(seed)
    with pytest.raises(ValueError, match="seed must be"):
        make_generator(seed)


def test_set_threads_obeys_a_smaller_omp_num_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert dev.set_threads(2) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "4")
        assert dev.set_threads(2) == 2 and torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert dev.set_threads(2) == 2
        with pytest.raises(ValueError, match="at least one thread"):
            dev.set_threads(0)
    finally:
        torch.set_num_threads(before)
