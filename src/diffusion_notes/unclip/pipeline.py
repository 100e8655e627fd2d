"""unCLIP end to end: caption -> z_t -> prior -> z_i -> decoder -> image.

Two decoders fit the same pipeline. DALL-E 2's is in pixel space: a 16x16 base decoder and an upsampler
to 32x32. The book's default is in the autoencoder's latent space (as Stable unCLIP and Karlo are): an
8x8x4 latent decoder, warm-started from the latent UNet, whose latents the autoencoder decodes to 32x32.

    pipe = pretrained.load("unclip")
    out = pipe("a small red circle on the left", num_inference_steps=25, guidance_scale=3,
               generator=torch.Generator().manual_seed(0))
    out.images            # (1, 3, 32, 32) in [0, 1], as the Stable Diffusion pipeline returns them
    out.image_embeddings  # (1, E) the z_i the prior chose

plus what only an image-embedding model can do: `variations(image)`,
`interpolate(image_a, image_b, n)` and `text_diff(image, old, new, n)`.
`pretrained.load("glide")` is the baseline: the same call, without a prior or z_i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffusion_notes.data.images import check_image_input, prompt_list, to_pil
from diffusion_notes.device import randn
from diffusion_notes.foundations.guidance import check_guidance_scale
from diffusion_notes.foundations.samplers import (
    SAMPLER_ALIASES,
    SAMPLERS,
    ddim_invert,
    sample,
)
from diffusion_notes.unclip.conditions import (
    TextConditions,
    downsample,
    encode_text,
    null_text,
    repeat_text,
    upsample,
)
from diffusion_notes.unclip.decoder import (
    UPSAMPLER_AUG,
    augment_low_res,
    decoder_schedule,
    slerp,
)
from diffusion_notes.unclip.prior import Prior

OUTPUT_TYPES = ("pt", "pil")
# Euler ancestral: under the cosine schedule the deterministic multistep solvers (DPM++ 2M, DDIM) left grain
# in a quarter of the 25-step samples of our decoder checkpoints, the ancestral sampler did not.
DEFAULT_SAMPLER = "euler_a"
# Measured on the latent decoders (benchmarks/unclip_vs_glide.py): at 2, fidelity is within rounding of its best
# and precision is highest; from 5 on both fall.
DEFAULT_GUIDANCE_SCALE = 2.0
DEFAULT_PRIOR_GUIDANCE_SCALE = 2.0
INVERSION_STEPS = 50  # DDIM steps of the inversion x_0 -> x_T and of the decoding back (variations, interpolations, text diffs)
DEFAULT_VARIATION_ETA = 1.0  # DDIM's eta when decoding variations: 0 reproduces the picture, 1 is DDPM's noise


def _text_dict(text: TextConditions, device) -> dict:
    return {k: v.to(device) for k, v in text.as_dict().items()}


@torch.no_grad()
def decode_base(decoder, text: TextConditions, z_i: torch.Tensor | None, *, null: TextConditions,
                num_inference_steps: int = 25,
                guidance_scale: float = DEFAULT_GUIDANCE_SCALE, sampler: str = DEFAULT_SAMPLER,
                generator: torch.Generator | None = None, x_T: torch.Tensor | None = None,
                callback=None, progress: bool = False, **sampler_options) -> torch.Tensor:
    """The base decoder's 16x16 samples (B, 3, 16, 16) in [-1, 1] for captions `text` and embeddings z_i (B, E).

    Guidance compares (z_i, caption) with (zero z_i, empty caption): the decoder was trained with both dropped.
    `null` is the empty caption's conditions (`null_text(clip)`, the CLIP that encoded `text`).
    Each step clips the predicted x_0 to the pixel range [-1, 1], as GLIDE does (and diffusers' DDIM by
    default): under the cosine schedule sqrt(alpha_bar) is 5e-5 at t = 999, so without the clip a small
    error in the predicted noise becomes an enormous x_0 at the first steps.
    z_i is ignored (must be None) for the GLIDE baseline. A latent decoder returns latents (B, 4, 8, 8),
    unclipped, for the autoencoder to decode. `sampler_options` go to `sample` (DDIM's eta).
    """
    c, device = decoder.config, next(decoder.parameters()).device
    B = len(text)
    cond = _text_dict(text, device)
    uncond = {k: v[:1].to(device).expand(B, *v.shape[1:]) for k, v in null.as_dict().items()}
    if c.image_embedding:
        if z_i is None or z_i.shape != (B, c.embed_dim):
            raise ValueError(f"the unCLIP decoder needs z_i of shape ({B}, {c.embed_dim}), got "
                             f"{None if z_i is None else tuple(z_i.shape)}")
        cond["z_i"] = z_i.to(device)
        uncond["z_i"] = torch.zeros_like(cond["z_i"])
    elif z_i is not None:
        raise ValueError("the GLIDE baseline reads no image embedding; pass z_i=None")
    shape = (B, c.in_channels, c.sample_size, c.sample_size)
    latent = c.space == "latent"
    x = sample(decoder.eval(), shape, sampler=sampler, num_inference_steps=num_inference_steps,
               schedule=decoder_schedule(c), generator=generator, device=device, x_T=x_T, cond=cond,
               uncond=uncond if guidance_scale != 1 else None, guidance_scale=float(guidance_scale),
               callback=callback, progress=progress, clip_x0=None if latent else 1.0, **sampler_options)
    return x if latent else x.clamp(-1, 1)


@torch.no_grad()
def upsample_images(upsampler, low: torch.Tensor, *, num_inference_steps: int = 15, sampler: str = DEFAULT_SAMPLER,
                    aug: float = UPSAMPLER_AUG, generator: torch.Generator | None = None,
                    progress: bool = False) -> torch.Tensor:
    """(B, 3, 16, 16) in [-1, 1] -> (B, 3, 32, 32) in [-1, 1]: the bilinear enlargement plus a sampled residual.

    The upsampler reads the low-res image with noise of std `aug` added, and denoises the residual
    x - up(low) at 32x32.
    """
    device = next(upsampler.parameters()).device
    low = low.to(device)
    cond = augment_low_res(low, aug, generator)  # (B, 3, 32, 32)
    residual = sample(upsampler.eval(), tuple(cond.shape), sampler=sampler, num_inference_steps=num_inference_steps,
                      schedule=decoder_schedule(), generator=generator, device=device, cond=cond, progress=progress,
                      clip_x0=2.0)  # a residual of pictures in [-1, 1] lies in [-2, 2]
    return (upsample(low) + residual).clamp(-1, 1)


@dataclass
class UnCLIPOutput:
    """`.images` as asked by output_type ((N, 3, 32, 32) in [0, 1], or PIL images), the z_i decoded
    (N, E; None for GLIDE), the pixel decoder's 16x16 images (N, 3, 16, 16) in [0, 1] (None in latent
    space), and the latent decoder's latents (N, 4, 8, 8) (None in pixel space)."""

    images: object
    image_embeddings: torch.Tensor | None
    low_res: torch.Tensor | None
    latents: torch.Tensor | None = None


def _check_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {span}, got {value!r}")
    return value


def _check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS and sampler not in SAMPLER_ALIASES:
        raise ValueError(f"sampler must be one of {', '.join([*SAMPLERS, *SAMPLER_ALIASES])}, got {sampler!r}")


class _Cascade:
    """What the unCLIP and GLIDE pipelines share: text encoding, checks, and the way from the decoder's
    output to pictures (the upsampler in pixel space, the autoencoder in latent space)."""

    def __init__(self, decoder, upsampler, clip, vae=None, scale_factor: float | None = None):
        self.latent = decoder.config.space == "latent"
        if self.latent and (vae is None or scale_factor is None):
            raise ValueError("a latent decoder's latents need the autoencoder that decodes them: pass vae= and scale_factor=")
        if not self.latent and upsampler is None:
            raise ValueError("a 16x16 pixel decoder needs its upsampler to 32x32")
        self.decoder, self.clip = decoder.eval(), clip.eval()
        self.upsampler = None if upsampler is None else upsampler.eval()
        self.vae = None if vae is None else vae.eval()
        self.scale_factor = None if scale_factor is None else float(scale_factor)

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def encode_prompt(self, prompts: list[str]) -> TextConditions:
        """Captions -> TextConditions (z_t, token states, mask); "" is the empty caption."""
        return encode_text(self.clip, prompts)

    def null_text(self, batch_size: int = 1) -> TextConditions:
        """The empty caption through this pipeline's own CLIP: the unconditional side of guidance."""
        return null_text(self.clip, batch_size)

    def _check(self, num_inference_steps, guidance_scale, num_images_per_prompt, output_type, sampler,
               upsampler_num_inference_steps) -> None:
        T = decoder_schedule(self.decoder.config).num_train_timesteps
        _check_int(num_inference_steps, "num_inference_steps", 1, T)
        _check_int(upsampler_num_inference_steps, "upsampler_num_inference_steps", 1, T)
        check_guidance_scale(guidance_scale)
        _check_int(num_images_per_prompt, "num_images_per_prompt", 1)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        _check_sampler(sampler)

    def _finish(self, low: torch.Tensor, z_i, output_type: str, upsampler_num_inference_steps: int, sampler: str,
                generator, progress: bool) -> UnCLIPOutput:
        if self.latent:
            high = self.vae.decode(low / self.scale_factor)  # (N, 3, 32, 32)
        else:
            high = upsample_images(self.upsampler, low, num_inference_steps=upsampler_num_inference_steps,
                                   sampler=sampler, generator=generator, progress=progress)
        images = ((high + 1) / 2).clamp(0, 1).cpu()  # (N, 3, 32, 32)
        return UnCLIPOutput(to_pil(images) if output_type == "pil" else images,
                            None if z_i is None else z_i.cpu(),
                            None if self.latent else ((low + 1) / 2).clamp(0, 1).cpu(),
                            low.cpu() if self.latent else None)

    def to_decoder_space(self, x: torch.Tensor) -> torch.Tensor:
        """Pictures (B, 3, 32, 32) in [-1, 1] -> what the decoder denoises: the autoencoder's mean latent times
        the scale factor (B, 4, 8, 8), or the 16x16 picture (B, 3, 16, 16)."""
        x = x.to(self.device)
        if self.latent:
            return self.vae.encode(x).mean * self.scale_factor
        return downsample(x, self.decoder.config.sample_size)


class UnCLIPPipeline(_Cascade):
    """DALL-E 2, small: caption -> z_t -> prior -> z_i -> decoder (16x16) -> upsampler (32x32)."""

    def __init__(self, prior: Prior, decoder, upsampler, clip, vae=None, scale_factor: float | None = None):
        if not decoder.config.image_embedding:
            raise ValueError("UnCLIPPipeline needs a decoder that reads z_i (DecoderConfig(image_embedding=True))")
        super().__init__(decoder, upsampler, clip, vae, scale_factor)
        self.prior = prior.eval()

    @torch.no_grad()
    def __call__(self, prompt, num_inference_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                 prior_num_inference_steps: int = 32, prior_guidance_scale: float = DEFAULT_PRIOR_GUIDANCE_SCALE,
                 num_candidates: int = 2, sampler: str = DEFAULT_SAMPLER, upsampler_num_inference_steps: int = 15,
                 generator: torch.Generator | None = None, num_images_per_prompt: int = 1, output_type: str = "pt",
                 image_embeddings: torch.Tensor | None = None, callback=None, progress: bool = False) -> UnCLIPOutput:
        """Images for `prompt` (a string or a list): z_i ~ P(z_i | y) from the prior, then x ~ P(x | z_i, y).

        `image_embeddings` (N, E) skips the prior.
        Book: eq-unclip-factorisation

        num_inference_steps and guidance_scale are the decoder's; the prior has its own
        (prior_num_inference_steps DDIM steps, prior_guidance_scale) and keeps the best of
        num_candidates samples by z_i . z_t. `callback(i, t, x_t, x0_hat)` sees the decoder's steps.
        """
        self._check(num_inference_steps, guidance_scale, num_images_per_prompt, output_type, sampler,
                    upsampler_num_inference_steps)
        _check_int(prior_num_inference_steps, "prior_num_inference_steps", 1, 1000)
        try:
            check_guidance_scale(prior_guidance_scale)
        except ValueError as err:
            raise ValueError(f"prior_{err}") from None
        _check_int(num_candidates, "num_candidates", 1)
        prompts = prompt_list(prompt, "prompt")
        k = num_images_per_prompt
        text = self.encode_prompt(prompts)
        text = repeat_text(text, k)
        if image_embeddings is None:
            z_i = self.prior.sample(text, null=self.null_text(), num_candidates=num_candidates, generator=generator,
                                    num_inference_steps=prior_num_inference_steps,
                                    guidance_scale=prior_guidance_scale)  # (N, E)
        else:
            z_i = self._check_embeddings(image_embeddings, len(text))
        return self.decode(z_i, text, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           sampler=sampler, upsampler_num_inference_steps=upsampler_num_inference_steps,
                           generator=generator, output_type=output_type, callback=callback, progress=progress)

    def _check_embeddings(self, z_i, n: int) -> torch.Tensor:
        E = self.decoder.config.embed_dim
        if not isinstance(z_i, torch.Tensor) or z_i.ndim != 2 or z_i.shape[1] != E or len(z_i) not in (1, n):
            raise ValueError(f"image_embeddings must be a tensor of shape ({n}, {E}) or (1, {E}), got "
                             f"{tuple(z_i.shape) if isinstance(z_i, torch.Tensor) else type(z_i).__name__}")
        return F.normalize(z_i.float(), dim=-1).expand(n, -1).to(self.device)

    @torch.no_grad()
    def decode(self, z_i: torch.Tensor, text: TextConditions | None = None, *, num_inference_steps: int = 25,
               guidance_scale: float = DEFAULT_GUIDANCE_SCALE, sampler: str = DEFAULT_SAMPLER,
               upsampler_num_inference_steps: int = 15, generator: torch.Generator | None = None,
               output_type: str = "pt", x_T: torch.Tensor | None = None, callback=None,
               progress: bool = False, eta: float = 0.0) -> UnCLIPOutput:
        """P(x | z_i, y): decode embeddings z_i (N, E) with captions `text` (None: the empty caption) to images.

        `x_T` starts the decoder from a given noise (an inverted picture's, see `invert`); `eta` is DDIM's.
        """
        self._check(num_inference_steps, guidance_scale, 1, output_type, sampler, upsampler_num_inference_steps)
        z_i = self._check_embeddings(z_i, len(z_i))
        text = text if text is not None else self.null_text(len(z_i))
        low = decode_base(self.decoder, text, z_i, null=self.null_text(), num_inference_steps=num_inference_steps,
                          guidance_scale=guidance_scale, sampler=sampler, generator=generator, x_T=x_T,
                          callback=callback, progress=progress, **({"eta": float(eta)} if eta else {}))
        return self._finish(low, z_i, output_type, upsampler_num_inference_steps, sampler, generator, progress)

    @torch.no_grad()
    def encode_image(self, image) -> torch.Tensor:
        """CLIP's z_i (B, E) of images (PIL, or tensors in [0, 1] of shape (3, 32, 32) or (B, 3, 32, 32))."""
        return self.clip.encode_image(check_image_input(image).to(self.device))

    def _shared_noise(self, n: int, generator) -> torch.Tensor:
        c = self.decoder.config
        return randn((1, c.in_channels, c.sample_size, c.sample_size), generator,
                     device=self.device).expand(n, -1, -1, -1)  # the same x_T for every frame

    def _one_image(self, image, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = check_image_input(image).to(self.device)  # (B, 3, 32, 32) in [0, 1]
        if len(x) != 1:
            raise ValueError(f"{what} takes one image, got {len(x)}")
        return x, self.clip.encode_image(x)  # (1, 3, 32, 32), (1, E)

    @torch.no_grad()
    def invert(self, image, z_i: torch.Tensor | None = None, *, num_inference_steps: int = INVERSION_STEPS,
               guidance_scale: float = DEFAULT_GUIDANCE_SCALE) -> torch.Tensor:
        """x_T of pictures (B, 3, 32, 32) in [0, 1]: DDIM inversion under the decoder given z_i (default: their own
        CLIP embeddings) and the empty caption. The bipartite latent (z_i, x_T) describes the picture whole:
        DDIM from x_T with the same z_i, steps and guidance draws it again.

        Paper: Ramesh et al. 2022, section 3 ("we can use DDIM inversion to obtain x_T")
        """
        _check_int(num_inference_steps, "num_inference_steps", 1, 1000)
        check_guidance_scale(guidance_scale)
        return self._invert(check_image_input(image).to(self.device), z_i, num_inference_steps, guidance_scale)

    def _invert(self, x: torch.Tensor, z_i, num_inference_steps: int, guidance_scale: float) -> torch.Tensor:
        """`invert` of pictures x (B, 3, 32, 32) in [-1, 1]."""
        z_i = self.clip.encode_image(x) if z_i is None else self._check_embeddings(z_i, len(x))
        B = len(x)
        null = {k: v[:1].expand(B, *v.shape[1:]).to(self.device) for k, v in self.null_text().as_dict().items()}
        cond = {**null, "z_i": z_i}
        uncond = {**null, "z_i": torch.zeros_like(z_i)}
        return ddim_invert(self.decoder, self.to_decoder_space(x), decoder_schedule(self.decoder.config),
                           num_inference_steps, cond=cond, uncond=uncond if guidance_scale != 1 else None,
                           guidance_scale=float(guidance_scale))

    def _edit_options(self, options: dict) -> dict:
        options.setdefault("num_inference_steps", INVERSION_STEPS)
        options.setdefault("guidance_scale", DEFAULT_GUIDANCE_SCALE)
        if options.setdefault("sampler", "ddim") != "ddim":
            raise ValueError("decoding from an inverted x_T needs the ddim sampler (the inversion is DDIM's)")
        return options

    @torch.no_grad()
    def variations(self, image, num_images: int = 4, eta: float = DEFAULT_VARIATION_ETA, invert: bool = True,
                   **options) -> UnCLIPOutput:
        """New images that keep what z_i pins down: decode the picture's (z_i, x_T) with DDIM at eta > 0.

        eta = 0 draws the picture again; larger eta changes more of what z_i leaves open. With
        invert=False each variation starts from fresh noise instead of the inverted x_T, with the
        pipeline's own sampler (eta is not used).
        Paper: Ramesh et al. 2022, section 3.1 (Figure 3: DDIM with eta > 0)
        """
        _check_int(num_images, "num_images", 1)
        x, z_i = self._one_image(image, "variations")
        if not invert:
            return self.decode(z_i.expand(num_images, -1), **options)
        options = self._edit_options(options)
        x_T = self._invert(x, z_i, options["num_inference_steps"], options["guidance_scale"])
        return self.decode(z_i.expand(num_images, -1), x_T=x_T.expand(num_images, -1, -1, -1), eta=eta, **options)

    @torch.no_grad()
    def interpolate(self, image_a, image_b, n: int = 5, invert: bool = True, **options) -> UnCLIPOutput:
        """n images along z_theta = slerp(z_a, z_b, theta), theta = 0 .. 1, decoded by DDIM.

        With invert (the paper's first option) x_T = slerp(x_T(a), x_T(b), theta) of the two pictures'
        inverted noises, so the path starts at picture a and ends at picture b; without, every frame
        starts from the same random x_T (the second option).
        Paper: Ramesh et al. 2022, section 3.2 (Figure 4)
        """
        _check_int(n, "n", 2)
        xa, z_a = self._one_image(image_a, "interpolate")
        xb, z_b = self._one_image(image_b, "interpolate")
        theta = torch.linspace(0, 1, n)
        z = slerp(z_a.expand(n, -1), z_b.expand(n, -1), theta)  # (n, E)
        generator = options.pop("generator", None)
        options = self._edit_options(options)
        if invert:
            x_T = self._invert(torch.cat([xa, xb]), torch.cat([z_a, z_b]), options["num_inference_steps"],
                               options["guidance_scale"])  # (2, C, s, s)
            flat = x_T.flatten(1)
            norms = flat.norm(dim=1)  # slerp the directions, interpolate the lengths
            unit = slerp(F.normalize(flat[:1], dim=-1).expand(n, -1), F.normalize(flat[1:], dim=-1).expand(n, -1), theta)
            length = (1 - theta[:, None]) * norms[0] + theta[:, None] * norms[1]  # (n, 1)
            x_T = (unit * length).view(n, *x_T.shape[1:])
        else:
            x_T = self._shared_noise(n, generator)
        return self.decode(z, x_T=x_T, generator=generator, **options)

    @torch.no_grad()
    def text_diff(self, image, old_caption: str, new_caption: str, n: int = 5, max_theta: float = 0.5,
                  **options) -> UnCLIPOutput:
        """Edit `image` by a caption change: z_theta = slerp(z_i, z_d, theta), theta = 0 .. max_theta, with
        z_d = normalize(z_t(new) - z_t(old)), every frame decoded by DDIM from the picture's inverted x_T.

        Paper: Ramesh et al. 2022, section 3.3 (Figure 5: text diffs)
        """
        _check_int(n, "n", 2)
        if isinstance(max_theta, bool) or not isinstance(max_theta, (int, float)) or not 0 < max_theta <= 1:
            raise ValueError(f"max_theta must be a number in (0, 1], got {max_theta!r}")
        x, z_i = self._one_image(image, "text_diff")
        z_old, z_new = self.encode_prompt([old_caption, new_caption]).z_t
        z_d = F.normalize(z_new - z_old, dim=-1)[None]  # (1, E)
        z = slerp(z_i.expand(n, -1), z_d.expand(n, -1), torch.linspace(0, max_theta, n))  # (n, E)
        options = self._edit_options(options)
        x_T = self._invert(x, z_i, options["num_inference_steps"], options["guidance_scale"])
        return self.decode(z, x_T=x_T.expand(n, -1, -1, -1), **options)


class GLIDEPipeline(_Cascade):
    """The baseline: the same decoder without z_i (text only), with no prior."""

    @torch.no_grad()
    def __call__(self, prompt, num_inference_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                 sampler: str = DEFAULT_SAMPLER, upsampler_num_inference_steps: int = 15,
                 generator: torch.Generator | None = None, num_images_per_prompt: int = 1, output_type: str = "pt",
                 callback=None, progress: bool = False) -> UnCLIPOutput:
        """Images for `prompt`, with the Stable Diffusion and unCLIP pipelines' conventions."""
        self._check(num_inference_steps, guidance_scale, num_images_per_prompt, output_type, sampler,
                    upsampler_num_inference_steps)
        prompts = prompt_list(prompt, "prompt")
        text = self.encode_prompt(prompts)
        k = num_images_per_prompt
        text = repeat_text(text, k)
        low = decode_base(self.decoder, text, None, null=self.null_text(), num_inference_steps=num_inference_steps,
                          guidance_scale=guidance_scale, sampler=sampler, generator=generator,
                          callback=callback, progress=progress)
        return self._finish(low, None, output_type, upsampler_num_inference_steps, sampler, generator, progress)
