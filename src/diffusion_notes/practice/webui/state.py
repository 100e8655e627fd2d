"""What the app and the API share: the checkpoints, the options, one lock around the model, the outputs folder."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from diffusion_notes.practice.finetune.learner import with_embeddings
from diffusion_notes.practice.webui import infotext
from diffusion_notes.practice.webui.generate import Result, Settings, generate
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline

VERSION = "diffusion_notes-webui"


class WebUIState:
    def __init__(self, registry: ModelRegistry, outputs_dir=None, loras=None, embeddings=(), controlnets=None):
        self.registry = registry
        self.loras = loras  # extra_networks.LoRALibrary: what <lora:name:w> may name
        self.embeddings = list(embeddings)  # finetune.learner.TokenEmbedding: always on, as the web UI's
        self._embedded = {}  # id(pipe) -> the pipe with the embeddings' words in its text encoder
        self.controlnets = dict(controlnets or {})  # name -> ControlNet: what a ControlNet unit may name (ch. 17)
        self.outputs_dir = Path(outputs_dir) if outputs_dir is not None else None
        self.lock = threading.Lock()  # one job at a time, as the web UI's queue lock
        self.options = {"samples_format": "png", "CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0,
                        "outdir_samples": str(self.outputs_dir or "")}

    def get_options(self) -> dict:
        info = self.registry.current
        return {**self.options, "sd_model_checkpoint": info.title, "sd_checkpoint_hash": info.sha256}

    def set_options(self, values: dict) -> dict:
        if not isinstance(values, dict):
            raise ValueError("the options must be a JSON object")
        updated, ignored = [], []
        if "sd_model_checkpoint" in values:
            with self.lock:
                self.registry.select(values["sd_model_checkpoint"])
            updated.append("sd_model_checkpoint")
        for key, value in values.items():
            if key in ("sd_model_checkpoint", "sd_checkpoint_hash"):
                continue
            (updated if key in self.options else ignored).append(key)
            if key in self.options:
                self.options[key] = value
        return {"updated": updated, "ignored": ignored}

    def _with_embeddings(self, pipe):
        if not self.embeddings:
            return pipe
        if id(pipe) not in self._embedded:
            clip = with_embeddings(pipe.clip, self.embeddings)
            self._embedded = {id(pipe): LatentDiffusionPipeline(pipe.unet, pipe.vae, clip, pipe.scale_factor,
                                                                pipe.schedule)}
        return self._embedded[id(pipe)]

    def run(self, settings: Settings, checkpoint: str | None = None, callback=None, save: bool = True) -> Result:
        """A job on the current checkpoint (or `checkpoint` for this job only); saves its PNGs if asked and in a folder.

        The pages save every job; the API saves only when the request says save_images (as the web UI's API).
        """
        with self.lock:
            pipe, info = self.registry.pipeline(checkpoint)
            result = generate(self._with_embeddings(pipe), settings, (info.model_name, info.hash),
                              callback=callback, loras=self.loras, controlnets=self.controlnets)
        if self.outputs_dir is not None and save:
            kind = "img2img-images" if settings.init_image is not None else "txt2img-images"
            folder = self.outputs_dir / kind
            folder.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for i, (image, text) in enumerate(zip(result.images, result.infotexts)):
                path = folder / f"{stamp}-{result.seeds[i]}-{i:02d}.png"
                path.write_bytes(infotext.png_bytes(image, text))
                result.paths.append(path)
        return result
