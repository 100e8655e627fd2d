"""The diffusion prior P(z_i | y): from a caption to a CLIP image embedding.

DALL-E 2's prior (Ramesh et al. 2022, section 2.2) is a decoder-only (causal)
Transformer over a short sequence, in this order:

    [caption token encodings (N), z_t, timestep embedding, noised z_i^(t), query]

and its output at the final (query) position is the clean embedding z_i itself,
not the noise, trained with

    L_prior = E_{t, z_i^(t)} || f_theta(z_i^(t), t, y) - z_i ||^2.

The caption is dropped 10% of the time so the same network gives the
unconditional prediction that classifier-free guidance needs. At sampling time
two candidates are drawn per caption and the one with the larger dot product
z_i . z_t is kept.

Embeddings are unit length and multiplied by sqrt(E) before diffusion, so their
entries have about unit variance (DALLE2-pytorch does the same).

Notation: B batch, E embedding width, N caption tokens, D text width, W model width, L = N + 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_notes.foundations.diffusion import eps_from_x0, q_sample
from diffusion_notes.foundations.guidance import check_guidance_scale
from diffusion_notes.foundations.samplers import sample
from diffusion_notes.foundations.schedules import make_schedule
from diffusion_notes.nn.embeddings import timestep_embedding
from diffusion_notes.nn.transformer import Transformer
from diffusion_notes.rng import per_item_randint, per_item_randn
from diffusion_notes.unclip.conditions import N_TOKENS, TextConditions, best_of_n, drop_text, embed_scale

P_UNCOND = 0.1  # DALL-E 2 drops the text conditioning of the prior 10% of the time
DEFAULT_STEPS = 32  # DALL-E 2 samples its prior with 64 strided steps; our embeddings are 64-wide, not 768
DEFAULT_GUIDANCE_SCALE = 2.0


class Prior(Protocol):
    """P(z_i | y), as the pipeline and the evaluation call it: `DiffusionPrior` and `ar_prior.ARPrior` both.

    One call samples either: `null` (the empty caption's conditions), `num_inference_steps` and
    `guidance_scale` are the diffusion prior's; the autoregressive prior draws its codes without
    guidance, in as many steps as it has codes, and takes them without using them.
    """

    def sample(self, text: TextConditions, *, null: TextConditions | None = None, num_candidates: int = 2,
               generator: torch.Generator | None = None, return_candidates: bool = False, **options):
        """z_i (B, E), unit length, for each caption of `text`: the best of num_candidates by z_i . z_t."""


def prior_schedule():
    """The prior's noise schedule: cosine, T = 1000 (DALL-E 2, Table 3)."""
    return make_schedule("cosine", 1000)


@dataclass(frozen=True)
class PriorConfig:
    embed_dim: int = 64  # E: CLIP's embedding width
    text_width: int = 128  # D: CLIP's token-state width
    n_tokens: int = N_TOKENS
    width: int = 128  # W
    layers: int = 4
    heads: int = 4


class DiffusionPrior(nn.Module):
    """f_theta(z_i^(t), t, y) -> z_i: a causal Transformer whose last output is the denoised embedding.

    Paper: Ramesh et al. 2022, section 2.2 ("Diffusion prior")
    """

    def __init__(self, config: PriorConfig | None = None):
        super().__init__()
        self.config = c = config or PriorConfig()
        self.token_proj = nn.Linear(c.text_width, c.width)  # caption token encodings -> W
        self.text_proj = nn.Linear(c.embed_dim, c.width)  # z_t -> W
        self.time_proj = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.image_proj = nn.Linear(c.embed_dim, c.width)  # noised z_i -> W
        self.query = nn.Parameter(0.02 * torch.randn(c.width))  # the final token, whose output is z_i
        self.position = nn.Parameter(0.01 * torch.randn(c.n_tokens + 4, c.width))  # (L, W)
        self.transformer = Transformer(c.width, c.layers, c.heads, causal=True)
        self.ln_final = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.embed_dim)

    def sequence(self, z_i_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """The Transformer's input (B, L, W): [tokens (N), z_t, t, z_i^(t), query] plus positions."""
        B = z_i_t.shape[0]
        tokens = self.token_proj(cond["tokens"])  # (B, N, W)
        z_t = self.text_proj(cond["z_t"] * embed_scale(self.config.embed_dim))[:, None]  # (B, 1, W)
        temb = self.time_proj(timestep_embedding(t, self.config.width))[:, None]  # (B, 1, W)
        z_i = self.image_proj(z_i_t)[:, None]  # (B, 1, W)
        query = self.query.expand(B, 1, -1)  # (B, 1, W)
        return torch.cat([tokens, z_t, temb, z_i, query], dim=1) + self.position  # (B, L, W)

    def attention_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, N) real-token flags -> (B, 1, L, L): causal, and padding tokens are never attended to."""
        B, L = mask.shape[0], self.config.n_tokens + 4
        keys = torch.cat([mask, mask.new_ones(B, 4)], dim=1)  # (B, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()  # (L, L)
        return (causal[None] & keys[:, None, :])[:, None]  # (B, 1, L, L)

    # ------------------------------------------------------------ the caption prefix, computed once per caption

    def caption_cache(self, cond: dict) -> list:
        """Keys and values of the caption prefix [tokens, z_t] in every layer: [(K, V), ...], each (B, H, N + 1, d).

        With causal attention the prefix never sees t, z_i^(t) or the query, so its keys and values are
        the same at every denoising step: a sampler computes them once per caption (a "KV cache", as
        language models keep for their prompt) and each step only runs the last three positions.
        """
        c = self.config
        P, D, H = c.n_tokens + 1, c.width, c.heads
        tokens = self.token_proj(cond["tokens"])  # (B, N, W)
        z_t = self.text_proj(cond["z_t"] * embed_scale(c.embed_dim))[:, None]  # (B, 1, W)
        x = torch.cat([tokens, z_t], dim=1) + self.position[:P]  # (B, P, W)
        mask = self.attention_mask(cond["mask"].bool())[:, :, :P, :P]  # (B, 1, P, P)
        cache = []
        for block in self.transformer.blocks:
            q, k, v = (u.view(len(x), P, H, D // H).transpose(1, 2)
                       for u in block.attn.in_proj(block.ln_1(x)).split(D, dim=-1))  # (B, H, P, d) each
            cache.append((k, v))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, P, d)
            x = x + block.attn.out_proj(y.transpose(1, 2).reshape(len(x), P, D))
            x = x + block.mlp(block.ln_2(x))
        return cache

    def _forward_cached(self, z_i_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """The last three positions [t, z_i^(t), query] against the cached prefix; equals forward's output."""
        c = self.config
        P, D, H, B = c.n_tokens + 1, c.width, c.heads, z_i_t.shape[0]
        temb = self.time_proj(timestep_embedding(t, c.width))[:, None]  # (B, 1, W)
        x = torch.cat([temb, self.image_proj(z_i_t)[:, None], self.query.expand(B, 1, -1)], dim=1)  # (B, 3, W)
        x = x + self.position[P:]
        mask = self.attention_mask(cond["mask"].bool())[:, :, P:, :]  # (B, 1, 3, L)
        for block, (k_p, v_p) in zip(self.transformer.blocks, cond["cache"]):
            q, k, v = (u.view(B, 3, H, D // H).transpose(1, 2)
                       for u in block.attn.in_proj(block.ln_1(x)).split(D, dim=-1))  # (B, H, 3, d) each
            y = F.scaled_dot_product_attention(q, torch.cat([k_p, k], 2), torch.cat([v_p, v], 2), attn_mask=mask)
            x = x + block.attn.out_proj(y.transpose(1, 2).reshape(B, 3, D))
            x = x + block.mlp(block.ln_2(x))
        return self.out(self.ln_final(x[:, -1]))  # (B, E)

    def forward(self, z_i_t: torch.Tensor, t: torch.Tensor, cond: dict, return_attention: bool = False):
        """z_i^(t) (B, E) scaled by sqrt(E), t (B,), cond {"z_t", "tokens", "mask"} -> predicted z_i (B, E), same scale.

        If cond also holds "cache" (from `caption_cache`), only the last three positions are computed.
        """
        c = self.config
        if z_i_t.ndim != 2 or z_i_t.shape[1] != c.embed_dim:
            raise ValueError(f"z_i_t must have shape (B, {c.embed_dim}), got {tuple(z_i_t.shape)}")
        if cond["tokens"].shape[1:] != (c.n_tokens, c.text_width):
            raise ValueError(f"cond['tokens'] must have shape (B, {c.n_tokens}, {c.text_width}), "
                             f"got {tuple(cond['tokens'].shape)}")
        t = torch.as_tensor(t, device=z_i_t.device)
        t = t.expand(z_i_t.shape[0]) if t.ndim == 0 else t
        if "cache" in cond and not return_attention:
            return self._forward_cached(z_i_t, t, cond)
        x = self.sequence(z_i_t, t, cond)  # (B, L, W)
        mask = self.attention_mask(cond["mask"].bool())
        h = self.transformer(x, mask, return_attention)
        h, maps = h if return_attention else (h, None)
        z_i = self.out(self.ln_final(h[:, -1]))  # (B, E): the query position's output
        return (z_i, maps) if return_attention else z_i

    @torch.no_grad()
    def sample(self, text: TextConditions, *, null: TextConditions | None = None, num_candidates: int = 2,
               num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
               sampler: str = "ddim", generator: torch.Generator | None = None, return_candidates: bool = False):
        """z_i (B, E), unit length, for each caption of `text`: the best of num_candidates by z_i . z_t.

        `null` is the empty caption's conditions through the same CLIP (`null_text(clip)`), the
        unconditional side of guidance; it is needed unless guidance_scale is 1. With return_candidates
        also the (B, num_candidates, E) candidates and their (B, num_candidates) scores (`best_of_n`).
        """
        check_guidance_scale(guidance_scale)
        if guidance_scale != 1 and null is None:
            raise ValueError("guidance needs the empty caption's conditions: pass null=null_text(clip), with the "
                             "CLIP the captions were encoded with (or guidance_scale=1)")
        device, E = next(self.parameters()).device, self.config.embed_dim
        schedule = prior_schedule()

        def draw(cond: dict) -> torch.Tensor:  # (B k, E)
            cond = {key: v.to(device) for key, v in cond.items()}
            cond["cache"] = self.eval().caption_cache(cond)  # the caption's part of the sequence, once for all steps
            uncond = None
            if guidance_scale != 1:
                n = len(cond["z_t"])
                uncond = {key: v[:1].to(device).expand(n, *v.shape[1:]) for key, v in null.as_dict().items()}
                uncond["cache"] = self.caption_cache(uncond)
            x = sample(EpsFromX0(self, schedule), (len(cond["z_t"]), E), sampler=sampler,
                       num_inference_steps=num_inference_steps, schedule=schedule, generator=generator,
                       device=device, cond=cond, uncond=uncond, guidance_scale=float(guidance_scale))
            return F.normalize(x, dim=-1)

        return best_of_n(draw, text, num_candidates, return_candidates)


def prior_loss(model: DiffusionPrior, batch: dict, generator: torch.Generator | None = None, *,
               null: TextConditions, p_uncond: float = P_UNCOND) -> torch.Tensor:
    r"""L_prior on one batch: noise the scaled z_i to a random t and ask for z_i back (not the noise).

    A caption is dropped (replaced by `null`, the empty caption's conditions from the frozen CLIP)
    with probability p_uncond.

    $$L_\text{prior} = \mathbb E_{t \sim [1, T],\, z_i^{(t)} \sim q_t}
        \left[\left\| f_\theta(z_i^{(t)}, t, y) - z_i \right\|^2\right]$$

    Book: eq-prior-loss
    Paper: Ramesh et al. 2022, section 2.2
    """
    device = next(model.parameters()).device
    schedule = prior_schedule()
    x0 = batch["z_i"].to(device) * embed_scale(model.config.embed_dim)  # (B, E)
    cond = drop_text({k: batch[k].to(device) for k in ("z_t", "tokens", "mask")}, p_uncond, null, generator)
    B, T = x0.shape[0], schedule.num_train_timesteps
    t = per_item_randint(0, T, B, generator).to(device)  # (B,) per item: sliced in a data-parallel step
    noise = per_item_randn(x0.shape, generator, device=device)  # (B, E)
    z_i_t = q_sample(x0, t, noise, schedule)  # (B, E)
    return F.mse_loss(model(z_i_t, t, cond), x0)


class EpsFromX0(nn.Module):
    """Wrap an x0-predicting model as the eps-model the samplers call: eps = (x_t - sqrt(ab) x0_hat) / sqrt(1 - ab)."""

    def __init__(self, x0_model: nn.Module, schedule):
        super().__init__()
        self.x0_model, self.schedule = x0_model, schedule

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        return eps_from_x0(x_t, t.long(), self.x0_model(x_t, t, cond), self.schedule)
