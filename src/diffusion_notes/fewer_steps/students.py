"""The two students of latent consistency distillation: a whole UNet with its EMA target, and a LoRA.

`ConsistencyStudent` is a UNet (its state dict, what ships, is the student's) that carries its
target network theta^- as a frozen child, so a checkpoint holds both and a resumed run goes on
exactly. `lcm_lora_unet` puts LoRA factors on a copy of the teacher; LCM-LoRA distils into them
and, as its training script does, reads the target from the same network without gradient.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from diffusion_notes.nn.unet import UNet, UNetConfig
from diffusion_notes.practice.finetune.lora import inject_lora, lora_state
from diffusion_notes.practice.finetune.lora_files import network_from_state

LCM_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out", "temb_proj")  # attention and the time embedding's inputs


class ConsistencyStudent(UNet):
    """The student f_theta (this UNet) and its target theta^- (`self.target`, frozen, not saved with the weights)."""

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        self.target = UNet(config).requires_grad_(False)

    def start_from(self, teacher: nn.Module) -> None:
        """theta = theta^- = the teacher's weights: distillation starts from the model it distils."""
        state = teacher.state_dict()
        UNet.load_state_dict(self, state, strict=False)
        self.target.load_state_dict(state)

    def student_state(self) -> dict:
        """The weights that ship: the student's, as a plain UNet's state dict."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("target.")}


@dataclass(frozen=True)
class LCMLoRAConfig:
    rank: int = 16
    alpha: float = 16.0
    targets: tuple = LCM_LORA_TARGETS


class LCMLoRA(nn.Module):
    """A copy of the teacher (`self.unet`) with trainable LoRA factors on `config.targets`; the rest frozen."""

    def __init__(self, config: LCMLoRAConfig, teacher: UNet):
        super().__init__()
        self.config = config
        self.unet = copy.deepcopy(teacher).train()
        inject_lora(self.unet, config.rank, config.alpha, targets=tuple(config.targets))

    def forward(self, x, t, context):
        return self.unet(x, t, context)

    def lora_tensors(self) -> dict:
        """The LoRA factors as a run saves them: "unet.<layer>.lora_A.weight" and "...lora_B.weight"."""
        return {f"unet.{k}": v for k, v in lora_state(self.unet).items()}


def lcm_lora_network(config: LCMLoRAConfig, tensors: dict, *, name: str, base_config=None, device="cpu"):
    """The shipped LCM-LoRA as a `lora_files.LoRANetwork` (apply it with `lora_files.applied`, or <lora:lcm:1>)."""
    metadata = {"name": name, "base_model": "ldm_unet", "trigger": "", "rank": config.rank, "alpha": config.alpha,
                "sampler": "LCM", "guidance_scale": 1.0}  # the web UI's names
    return network_from_state(tensors, config.alpha, metadata, device=device)
