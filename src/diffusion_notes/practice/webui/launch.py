"""Starting the web UI: the shipped models and the user's folders, gathered into one `WebUIState`.

`python -m diffusion_notes webui` calls `build_state`. This is the one module of the web UI that
asks the shelf (`pretrained`) for anything, and it asks by name: the checkpoint file of
"ldm_unet", the shipped LoRAs, textual-inversion embeddings and ControlNets. Every other module is
handed what it serves, so a test or a chapter can build the state from models of its own.

`check_port`, `check_address` and `writable_folder` check the command line's options before
anything is loaded: a ValueError names the option and what is wrong (`webui` prints it on one
line and exits with status 2).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from pathlib import Path

from diffusion_notes import pretrained
from diffusion_notes.practice.finetune.learner import TokenEmbedding
from diffusion_notes.practice.webui.extra_networks import LoRALibrary
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline


def lora_library(unet, folder=None, weights_dir=None) -> LoRALibrary:
    """What `<lora:name:w>` may name: every shipped LoRA by name (the LCM-LoRA "lcm" too), and the
    .safetensors files in `folder`."""
    names = [name for kind in pretrained.LORA_RECIPES for name in pretrained.shipped_adapters(kind, weights_dir)]
    return LoRALibrary(unet, {name: pretrained.load(name, "cpu", weights_dir) for name in names}, folder)


def embeddings(weights_dir=None) -> list[TokenEmbedding]:
    """Every shipped textual-inversion embedding, of a concept or of a look (the web UI keeps them on)."""
    names = [name for kind in ("textual_inversion", "textual_inversion_look")
             for name in pretrained.shipped_adapters(kind, weights_dir)]
    return [pretrained.load(name, "cpu", weights_dir) for name in names]


def controlnets(device=None, weights_dir=None) -> dict:
    """{name: ControlNet} for every shipped model of the "controlnet" recipe: what a ControlNet unit may name."""
    names = [name for name in pretrained.available(weights_dir)
             if pretrained.info(name, weights_dir)["recipe"] == "controlnet"]
    return {name: pretrained.load(name, device, weights_dir) for name in names}


def build_state(pipe: LatentDiffusionPipeline, models_dir=None, outputs_dir=None, lora_dir=None,
                weights_dir=None) -> WebUIState:
    """The web UI's state around `pipe` (the shipped Stable Diffusion) and the shipped extras it may name.

    `models_dir` holds the user's extra checkpoints (and the merger's output), `outputs_dir` receives
    the generated PNGs, `lora_dir` the user's LoRA files; None leaves each out.
    """
    registry = ModelRegistry(pipe, pretrained.verify("ldm_unet", weights_dir), models_dir)
    return WebUIState(registry, outputs_dir, loras=lora_library(pipe.unet, lora_dir, weights_dir),
                      embeddings=embeddings(weights_dir), controlnets=controlnets(weights_dir=weights_dir))


def check_port(port) -> int:
    """--port: an int in 1-65535."""
    try:
        value = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"--port must be a whole number in 1-65535, got {port!r}") from None
    if not 1 <= value <= 65535:
        raise ValueError(f"--port must be in 1-65535, got {value}")
    return value


def check_address(host: str, port: int) -> None:
    """--host (or --listen) and --port: an address this machine can listen on, not in use."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise ValueError(f"--host {host!r} is not an address of this machine: {err}") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(address)
        except OSError as err:
            raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def is_local(host: str) -> bool:
    """Whether `host` is this machine only (a loopback address or "localhost")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def writable_folder(path, option: str) -> Path:
    """A folder that exists (created if need be) and can be written, or a ValueError naming `option`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except (OSError, ValueError) as err:  # ValueError: a name Python cannot pass to the system (a NUL byte)
        raise ValueError(f"{option} {os.fspath(path)}: cannot create or write this folder "
                         f"({getattr(err, 'strerror', None) or err})") from None
    return path
