"""Our kohya LoRA file, read by diffusers' own loader into the exported pipeline, predicts the noise ours does."""

import copy
import os

import torch

from diffusion_notes.practice.checkpoints.export import diffusers_pipeline, quiet
from diffusion_notes.practice.finetune.lora import inject_lora
from diffusion_notes.practice.finetune.lora_files import applied, network_from_model, read_lora, save_lora

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_diffusers_load_lora_weights_reads_our_kohya_file(pipe, tmp_path):
    quiet()
    unet = copy.deepcopy(pipe.unet)
    layers = inject_lora(unet, rank=4, alpha=2.0)  # alpha / r = 0.5: the file's alpha must be honoured
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.weight.copy_(0.3 * torch.randn(layer.lora_B.weight.shape, generator=g))
    network = network_from_model(unet)
    path = save_lora(network, pipe.unet, tmp_path / "test_lora.safetensors", "kohya")
    d_pipe = diffusers_pipeline(pipe)
    d_pipe.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name="test")
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100, 700])
    context = pipe.encode_prompt(["a large orange heart on the left", "a small blue star"])
    with torch.no_grad():
        theirs = d_pipe.unet(x, t, encoder_hidden_states=context).sample
        with applied(pipe.unet, [(read_lora(path, pipe.unet), 1.0)]):
            ours = pipe.unet(x, t, context)
        base = pipe.unet(x, t, context)
    assert (theirs - ours).abs().max() < 1e-4
    assert (ours - base).abs().max() > 0.1  # the LoRA does change the prediction
