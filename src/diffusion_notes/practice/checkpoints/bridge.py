"""The book's tools on any diffusers Stable Diffusion 1.x pipeline: `from_diffusers(pipe_or_folder)`.

    sd = from_diffusers("~/models/stable-diffusion-v1-5")        # a folder saved by diffusers; never downloads
    out = sd("a watercolour fox", sampler="euler_a", num_inference_steps=25, guidance_scale=7.5,
             negative_prompt="blurry", generator=torch.Generator().manual_seed(0), callback=trace)
    eps, maps = sd.unet(z_t, t, context, return_attention=True)   # Chapter 12's maps, per transformer block

The result is our `LatentDiffusionPipeline` with three adapters in place of our parts: the
UNet adapter calls diffusers' UNet2DConditionModel and returns eps (turning a v-prediction
into eps, for SD 2.x), and records attention through diffusers' attention processors when
asked; the text adapter runs the pipeline's own tokenizer and text encoder (SD 1.x pads with
the end token, ours with 0, and the padding positions are part of what the UNet reads); the
autoencoder adapter calls its encode and decode. So our samplers, guidance, negative
prompts, image-to-image and the per-step trace all run unchanged.

Device: CUDA, then MPS, then the CPU (`default_device`), in float16 on a GPU; the autoencoder
stays in float32 where its config asks for it (`force_upcast`, SD 1.x's VAE overflows in half precision).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from diffusion_notes.device import default_device
from diffusion_notes.practice.checkpoints.schedulers import prediction_type, schedule_from_config, torch_dtype_for
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline

FOLDER_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")


def missing_weights_message(folder) -> str:
    """What the reader is told when `folder` holds no diffusers Stable Diffusion: where we looked, what to put there."""
    folder = Path(folder).expanduser()
    absent = [p for p in FOLDER_PARTS if not (folder / p).exists()]
    where = f"looked in {folder.resolve()}" + (f" and found no {', '.join(absent)}" if folder.is_dir() else
                                               ", which does not exist")
    return (f"no diffusers Stable Diffusion 1.x pipeline here: {where}. Put there a folder saved by diffusers "
            "(model_index.json with unet/, vae/, text_encoder/, tokenizer/ and scheduler/), e.g. "
            "StableDiffusionPipeline.from_pretrained('stable-diffusion-v1-5/stable-diffusion-v1-5').save_pretrained"
            f"('{folder}') on a machine with internet access, or our tiny model: python -m diffusion_notes export "
            f"stable_diffusion --format diffusers --out {folder}. Nothing is downloaded here.")


def find_weights(folder) -> Path | None:
    """`folder` if it holds every part of a diffusers Stable Diffusion folder, else None."""
    folder = Path(folder).expanduser()
    return folder if all((folder / p).exists() for p in FOLDER_PARTS) else None


def load_folder(folder, device=None, dtype=None):
    """StableDiffusionPipeline.from_pretrained(folder) offline (local files only), on `device` in `dtype`."""
    from diffusers import StableDiffusionPipeline

    path = Path(folder).expanduser()
    if path.is_file():
        raise ValueError(f"{path} is a single checkpoint file; load it with StableDiffusionPipeline.from_single_file("
                         "path, config=FOLDER) (FOLDER: a diffusers folder of the same model type) and pass the pipeline")
    if find_weights(path) is None:
        raise FileNotFoundError(missing_weights_message(path))
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or torch_dtype_for(device)
    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    return pipe.to(device=device, dtype=dtype)


def _sigma_at(t: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """sigma_t on the training table, linearly interpolated at fractional t (as diffusers' Euler schedulers do)."""
    t = t.double().cpu()
    lo = t.floor().long().clamp(0, len(sigmas) - 1)
    hi = (lo + 1).clamp(max=len(sigmas) - 1)
    w = t - lo
    return (1 - w) * sigmas[lo] + w * sigmas[hi]  # (B,)


class AttentionRecorder:
    """A diffusers attention processor that computes attention as SD 1.x's blocks do and keeps the weights.

    softmax(Q K^T / sqrt(d)) per head, in float32; the weights (B, H, L, M) go into `store[name]`.
    """

    def __init__(self, store: dict, name: str):
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        B, L, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        H = attn.heads
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        q, k, v = (x.view(B, -1, H, x.shape[-1] // H).transpose(1, 2) for x in (q, k, v))  # (B, H, L or M, d)
        weights = (q.float() @ k.float().transpose(-1, -2) * attn.scale).softmax(dim=-1)  # (B, H, L, M)
        out = (weights.to(v.dtype) @ v).transpose(1, 2).reshape(B, L, -1)  # (B, L, D)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        self.store[self.name] = weights
        return out / attn.rescale_output_factor


class DiffusersUNet(nn.Module):
    """diffusers' UNet2DConditionModel with our UNet's call: unet(x_t, t, context) -> eps (float32).

    `return_attention=True` also returns {"down_blocks.0.attentions.0": {"self": (B,H,L,L), "cross": (B,H,L,M)}, ...}.
    """

    def __init__(self, unet, schedule, predicts: str = "epsilon"):
        super().__init__()
        self.unet, self.schedule, self.predicts = unet, schedule, predicts
        c = unet.config
        self.config = SimpleNamespace(in_channels=c.in_channels, out_channels=c.out_channels,
                                      sample_size=c.sample_size, context_dim=c.cross_attention_dim)
        self.sigmas = schedule.sigmas()  # (T,) float64

    def _eps(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise prediction from the UNet's output: eps itself, eps from v (SD 2), or eps from x0_hat.

        Book: eq-v-prediction
        """
        if self.predicts == "epsilon":
            return out
        sigma = _sigma_at(t, self.sigmas).to(x.device, torch.float32).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        a, s = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()  # sqrt(alpha_bar), sqrt(1 - alpha_bar)
        if self.predicts == "v_prediction":
            return a * out + s * x  # eps = sqrt(alpha_bar) v + sqrt(1 - alpha_bar) x_t
        return (x - a * out) / s  # "sample": the prediction is x0_hat

    def forward(self, x, t, context=None, return_attention: bool = False):
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        dtype = self.unet.dtype
        maps, saved = {}, None
        if return_attention:
            saved = self.unet.attn_processors
            self.unet.set_attn_processor({name: AttentionRecorder(maps, name.removesuffix(".processor"))
                                          for name in saved})
        try:
            out = self.unet(x.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample.float()
        finally:
            if saved is not None:
                self.unet.set_attn_processor(saved)
        eps = self._eps(out, x, t)
        if not return_attention:
            return eps
        grouped = {}
        for name, weights in maps.items():  # "...attentions.0.transformer_blocks.0.attn2" -> block, "cross"
            block, _, which = name.rpartition(".transformer_blocks.0.")
            grouped.setdefault(block, {})["self" if which == "attn1" else "cross"] = weights
        return eps, grouped


class DiffusersVAE(nn.Module):
    """diffusers' AutoencoderKL with our autoencoder's calls: encode(x) -> posterior with .mean, decode(z) -> x."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.downsampling_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor):
        posterior = self.vae.encode(x.to(self.vae.device, self.vae.dtype)).latent_dist
        return SimpleNamespace(mean=posterior.mean.float(), sample=lambda generator=None: posterior.sample(generator).float())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z.to(self.vae.device, self.vae.dtype)).sample.float()


class DiffusersBridge(LatentDiffusionPipeline):
    """Our pipeline, run on a diffusers StableDiffusionPipeline's UNet, autoencoder, tokenizer and text encoder."""

    def __init__(self, sd_pipe):
        schedule = schedule_from_config(sd_pipe.scheduler.config)
        unet = DiffusersUNet(sd_pipe.unet, schedule, prediction_type(sd_pipe.scheduler.config))
        super().__init__(unet, DiffusersVAE(sd_pipe.vae), sd_pipe.text_encoder,
                         sd_pipe.vae.config.scaling_factor, schedule)
        self.tokenizer, self.text_encoder, self.diffusers_pipeline = sd_pipe.tokenizer, sd_pipe.text_encoder, sd_pipe

    @property
    def device(self) -> torch.device:
        return self.unet.unet.device

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """tau(y) as diffusers' encode_prompt makes it: the tokenizer's 77 ids, the last layer after its LayerNorm."""
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids  # (B, 77)
        return self.text_encoder(ids.to(self.text_encoder.device))[0].float()  # (B, 77, D_c)

    @torch.no_grad()
    def encode_image(self, image, generator=None) -> torch.Tensor:
        """PIL images or [0, 1] tensors (B, 3, H, W), H and W the model's size -> scaled latents (the posterior's mean)."""
        size = self.unet.config.sample_size * self.vae.downsampling_factor
        if hasattr(image, "convert"):
            image = torch.from_numpy(np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float32) / 255.0)
            image = image.permute(2, 0, 1)  # (3, H, W)
        if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4) or not image.is_floating_point():
            raise ValueError("the init image must be a PIL image or a float tensor (3, H, W) or (B, 3, H, W) in [0, 1]")
        image = image[None] if image.ndim == 3 else image
        return self.vae.encode(image * 2 - 1).mean * self.scale_factor


def from_diffusers(pipe_or_folder, device=None, dtype=None) -> DiffusersBridge:
    """The book's pipeline on a diffusers StableDiffusionPipeline, or on the folder one was saved to (offline).

    A folder is loaded with local files only, on `device` (default: CUDA, then MPS, then CPU) in
    `dtype` (default: float16 on a GPU, float32 on the CPU). A folder without the pipeline's parts is a
    FileNotFoundError that names the folder and what to put there.
    """
    pipe = pipe_or_folder
    if isinstance(pipe_or_folder, (str, Path)):
        pipe = load_folder(pipe_or_folder, device, dtype)
    elif device is not None or dtype is not None:
        pipe = pipe.to(device=device, dtype=dtype)
    missing = [p for p in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, p, None) is None]
    if missing:
        raise ValueError(f"a Stable Diffusion pipeline needs unet, vae, text_encoder, tokenizer and scheduler; "
                         f"{type(pipe).__name__} lacks {', '.join(missing)}")
    if getattr(pipe.vae.config, "force_upcast", False) and pipe.vae.dtype == torch.float16:
        pipe.vae.to(torch.float32)
    return DiffusersBridge(pipe)
