"""Fixtures shared by several test files."""

import pytest
import torch

from diffusion_notes import pretrained


@pytest.fixture
def one_thread():
    """Run with one torch thread (results must not depend on how many threads torch happens to use)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe():
    """The shipped Stable Diffusion pipeline on the CPU, run on one thread for the test module (a module may
    define its own `pipe` instead)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield pretrained.load("stable_diffusion", device="cpu")
    torch.set_num_threads(before)
