"""What the app and the API share: the checkpoints, the options, the job queue, the outputs folder.

`run` is the web UI's job: its settings are checked first, outside the queue (a bad request waits
for nothing and holds nobody up); then it waits its turn in the queue (`jobs.JobQueue`: one job at
a time, in the order they came), and draws its batches one by one, so that `/sdapi/v1/skip` can
stop one batch and `/sdapi/v1/interrupt` the rest, as in the web UI.
"""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from pathlib import Path

from diffusion_notes.practice.finetune.learner import with_embeddings
from diffusion_notes.practice.webui import infotext
from diffusion_notes.practice.webui.generate import Result, Settings, check, generate
from diffusion_notes.practice.webui.inputs import check_job_size, check_prompt_lengths
from diffusion_notes.practice.webui.jobs import Interrupted, Jobs
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.seeds import MAX_SEED, job_seeds, resolve_seed
from diffusion_notes.practice.webui.vocabulary import word_warnings
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline

VERSION = "diffusion_notes-webui"


class WebUIState:
    def __init__(self, registry: ModelRegistry, outputs_dir=None, loras=None, embeddings=(), controlnets=None):
        self.registry = registry
        self.loras = loras  # extra_networks.LoRALibrary: what <lora:name:w> may name
        self.embeddings = list(embeddings)  # finetune.learner.TokenEmbedding: always on, as the web UI's
        self._embedded = {}  # id(pipe) -> the pipe with the embeddings' words in its text encoder
        self._vocabulary = None  # the open_clip ids the text encoder has rows for, the embeddings' words too
        self.controlnets = dict(controlnets or {})  # name -> ControlNet: what a ControlNet unit may name (ch. 17)
        self.outputs_dir = Path(outputs_dir) if outputs_dir is not None else None
        self.jobs = Jobs()
        self.lock = self.jobs.queue  # `with state.lock:` waits its turn, as a job does (the web UI's queue lock)
        self._saving = threading.Lock()
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

    def vocabulary(self):
        """The open_clip ids the text encoder knows (every checkpoint shares it), the embeddings' words too."""
        if self._vocabulary is None:
            clip = self.registry.base.clip
            self._vocabulary = (with_embeddings(clip, self.embeddings) if self.embeddings else clip).text.vocabulary
        return self._vocabulary

    def run(self, settings: Settings, checkpoint: str | None = None, callback=None, save: bool | None = None) -> Result:
        """A job on the current checkpoint (or `checkpoint` for this job only).

        `save`: write the PNGs into the outputs folder (None: when there is one, as the app does; the
        API saves only when asked). `callback(i, t, x_t, x0_hat)` sees every step. Words the model
        never saw are named in `result.warnings`.
        """
        check_prompt_lengths(settings)
        settings = check(settings)
        check_job_size(settings)
        total = settings.batch_size * settings.n_iter
        seed, subseed = _first_seed(settings.seed, "seed", total), _first_seed(settings.subseed, "subseed", total)
        warnings = word_warnings(settings, self.vocabulary())
        with self.lock:
            pipe, info = self.registry.pipeline(checkpoint)
            result = self._batches(self._with_embeddings(pipe), settings, (seed, subseed),
                                   (info.model_name, info.hash), callback)
            if self.outputs_dir is not None and (save is None or save):
                self._save(result)
        result.warnings = sorted(set(result.warnings)) + warnings
        return result

    def _batches(self, pipe, settings: Settings, seeds: tuple[int, int], model, callback) -> Result:
        """The job's n_iter batches, one generate call each; a stopped batch keeps its last x0 prediction."""
        progress, B = self.jobs.progress, settings.batch_size
        all_seeds, all_subseeds = job_seeds(*seeds, settings.subseed_strength, B * settings.n_iter)  # processing.py's
        progress.begin("img2img" if settings.init_image is not None else "txt2img", settings.n_iter,
                       settings.steps, pipe.decode_latents)
        parts = []
        try:
            for j in range(settings.n_iter):
                if progress.interrupted:
                    break
                one = replace(settings, seed=all_seeds[j * B], subseed=all_subseeds[j * B], n_iter=1)
                try:
                    parts.append(generate(pipe, one, model, callback=progress.watch(callback), loras=self.loras,
                                          controlnets=self.controlnets))
                except Interrupted:
                    parts.append(_stopped(one, progress.decoded(), model))
                progress.next_job()
        finally:
            progress.end()
        return Result([im for r in parts for im in r.images], [s for r in parts for s in r.seeds],
                      [s for r in parts for s in r.subseeds], [t for r in parts for t in r.infotexts], settings,
                      [w for r in parts for w in r.warnings], model_name=model[0], model_hash=model[1])

    def _save(self, result: Result) -> None:
        """The PNGs as the web UI names them, `{number:05}-{seed}.png`; a number is never used twice."""
        kind = "img2img-images" if result.settings.init_image is not None else "txt2img-images"
        folder = self.outputs_dir / kind
        with self._saving:
            folder.mkdir(parents=True, exist_ok=True)
            numbers = [int(m[1]) for p in folder.iterdir() if (m := re.match(r"(\d+)-", p.name))]
            number = max(numbers, default=-1) + 1
            for image, text, seed in zip(result.images, result.infotexts, result.seeds):
                data = infotext.png_bytes(image, text)
                while True:
                    path = folder / f"{number:05}-{seed}.png"
                    number += 1
                    try:
                        with open(path, "xb") as f:  # never over another file, even one another process wrote
                            f.write(data)
                        break
                    except FileExistsError:
                        continue
                result.paths.append(path)


def _first_seed(seed, name: str, total: int) -> int:
    """The job's first seed: `seed`, or a random one for -1, such that seed + total - 1 is a seed too."""
    if seed is None or seed == -1:
        return resolve_seed(-1) % (MAX_SEED - total + 2)
    seed = resolve_seed(seed)
    if seed + total - 1 > MAX_SEED:
        raise ValueError(f"{name} + the number of images - 1 must be at most {MAX_SEED} (image i has {name} + i), "
                         f"got {name} {seed} for {total} images")
    return seed


def _stopped(settings: Settings, images: list, model) -> Result:
    """A batch stopped by skip or interrupt: its last x0 predictions as pictures, with their infotexts."""
    seeds, subseeds = job_seeds(settings.seed, settings.subseed, settings.subseed_strength, len(images))
    texts = [infotext.create(settings, s, u, model, i) for i, (s, u) in enumerate(zip(seeds, subseeds))]
    return Result(images, seeds, subseeds, texts, settings, model_name=model[0], model_hash=model[1])
