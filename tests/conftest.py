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


@pytest.fixture(scope="module")
def random_lora(pipe):
    """A LoRA of the shipped UNet with random (non-zero) up matrices, rank 2: it visibly changes the picture."""
    import copy

    from diffusion_notes.practice.finetune.lora import inject_lora
    from diffusion_notes.practice.finetune.lora_files import network_from_model

    unet = copy.deepcopy(pipe.unet)
    layers = inject_lora(unet, rank=2, alpha=2.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.weight.copy_(0.5 * torch.randn(layer.lora_B.weight.shape, generator=g))
    return network_from_model(unet, {"trigger": "heart"})
