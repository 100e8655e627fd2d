"""The LCM-LoRA in kohya's and diffusers' files, and read by diffusers' own loader.

Until the trained LCM-LoRA ships, a stand-in: an `LCMLoRA` of the shipped UNet (attention projections
and every ResBlock's `temb_proj`, diffusers' "resnets.N.time_emb_proj") with random nonzero up
matrices, made a LoRANetwork as the shipped one is (`students.lcm_lora_network`). Its alpha / r is
0.5, so a reader that forgets alpha, or folds it twice, is caught; 0.5 is a power of two, so
folding it into B and back loses no bit.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import pytest
import torch

from diffusion_notes.fewer_steps.students import LCM_LORA_TARGETS, LCMLoRA, LCMLoRAConfig, lcm_lora_network
from diffusion_notes.practice.checkpoints.export import diffusers_pipeline, quiet
from diffusion_notes.practice.finetune.lora import lora_layers
from diffusion_notes.practice.finetune.lora_files import applied, module_names, read_lora, save_lora

CONFIG = LCMLoRAConfig(rank=4, alpha=2.0)
PROMPT = "a small red circle on the left"


def random_lcm_lora(unet, seed: int = 0):
    """An LCM-LoRA of `unet` with random nonzero B (a trained one's stand-in), as the shipped one loads."""
    student = LCMLoRA(CONFIG, unet)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(student.unet).values():
            layer.lora_B.weight.copy_(0.2 * torch.randn(layer.lora_B.weight.shape, generator=g))
    return lcm_lora_network(CONFIG, student.lora_tensors(), name="lcm")


@pytest.fixture(scope="module")
def network(pipe):
    return random_lcm_lora(pipe.unet)


def test_the_network_adapts_attention_and_the_time_embedding(pipe, network):
    names = module_names(pipe.unet)
    kinds = {name.rsplit(".", 1)[-1] for name in network.layers}
    assert kinds == set(LCM_LORA_TARGETS)
    temb = [names[name] for name in network.layers if name.endswith("temb_proj")]
    assert temb and all(".resnets." in path and path.endswith(".time_emb_proj") for path in temb)
    assert all(float(B.abs().max()) > 0 for _, B, _ in network.layers.values())


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_both_formats_read_back_bit_exact(pipe, network, fmt, tmp_path):
    path = save_lora(network, pipe.unet, tmp_path / f"lcm_{fmt}.safetensors", fmt)
    back = read_lora(path, pipe.unet)
    assert set(back.layers) == set(network.layers)
    for name in network.layers:
        assert torch.equal(back.delta(name), network.delta(name)), name
    if fmt == "kohya":  # the factors and alpha themselves, as written
        for name, (A, B, alpha) in network.layers.items():
            A2, B2, alpha2 = back.layers[name]
            assert torch.equal(A, A2) and torch.equal(B, B2) and alpha == alpha2
    assert back.metadata["name"] == "lcm" and back.metadata["sampler"] == "LCM"


def test_a_converted_file_converts_back(pipe, network, tmp_path):
    """kohya -> diffusers -> kohya: every layer's update unchanged."""
    kohya = read_lora(save_lora(network, pipe.unet, tmp_path / "a.safetensors", "kohya"), pipe.unet)
    diffusers = read_lora(save_lora(kohya, pipe.unet, tmp_path / "b.safetensors", "diffusers"), pipe.unet)
    again = read_lora(save_lora(diffusers, pipe.unet, tmp_path / "c.safetensors", "kohya"), pipe.unet)
    for name in network.layers:
        assert torch.equal(again.delta(name), network.delta(name)), name


def test_diffusers_loads_the_diffusers_file_and_samples_as_we_do(pipe, network, tmp_path):
    """`load_lora_weights` of our diffusers-format file on our exported pipeline, LCMScheduler at guidance 1,
    4 steps: our pipeline's picture with the LoRA merged and sampler "lcm"."""
    quiet()
    path = save_lora(network, pipe.unet, tmp_path / "lcm_lora.safetensors", "diffusers")
    d_pipe = diffusers_pipeline(pipe, "lcm")
    d_pipe.set_progress_bar_config(disable=True)
    d_pipe.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name="lcm")
    assert type(d_pipe.scheduler).__name__ == "LCMScheduler"
    kwargs = dict(num_inference_steps=4, guidance_scale=1.0)
    theirs = d_pipe(PROMPT, generator=torch.Generator().manual_seed(5), output_type="pt", **kwargs).images.float()
    with applied(pipe.unet, [(read_lora(path, pipe.unet), 1.0)]):
        ours = pipe(PROMPT, sampler="lcm", generator=torch.Generator().manual_seed(5), **kwargs).images.float()
    plain = pipe(PROMPT, sampler="lcm", generator=torch.Generator().manual_seed(5), **kwargs).images.float()
    assert float((theirs - ours).abs().max()) <= 1e-4
    assert float((ours - plain).abs().max()) > 1e-2  # the LoRA does change the picture
