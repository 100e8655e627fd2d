"""The autoregressive prior: z_i as a short sequence of discrete codes, predicted one by one.

DALL-E 2's first prior (Ramesh et al. 2022, section 2.2) turns the image
embedding into something a language model can predict:

1. **PCA**: keep the top K principal directions of z_i (the paper keeps 319 of
   1024; we keep 16 of 64), ordered by variance, so the most informative come first;
2. **quantise** each coordinate into one of `n_bins` buckets (equal-mass
   buckets from the training distribution; the paper uses 1,024);
3. a **causal Transformer** reads the caption (token states and z_t) and predicts
   the codes left to right with cross-entropy, as GPT predicts words.

Sampling draws the codes one at a time and maps them back through the bucket
centres and the PCA basis. As with the diffusion prior, two samples are drawn
per caption and the one with the larger z_i . z_t is kept.

Notation: B batch, E embedding width, K components, V = n_bins codes per component, N caption tokens, W width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_notes.nn.transformer import Transformer
from diffusion_notes.unclip.conditions import N_TOKENS, TextConditions, best_of_n, embed_scale


@dataclass(frozen=True)
class ARPriorConfig:
    embed_dim: int = 64
    text_width: int = 128
    n_tokens: int = N_TOKENS
    n_components: int = 16  # K
    n_bins: int = 64  # V
    width: int = 128
    layers: int = 4
    heads: int = 4


class ARPrior(nn.Module):
    """P(code_k | code_<k, y): PCA + quantisation of z_i, and a causal Transformer over [tokens, z_t, codes].

    Paper: Ramesh et al. 2022, section 2.2 ("Autoregressive (AR) prior")
    """

    def __init__(self, config: ARPriorConfig | None = None):
        super().__init__()
        self.config = c = config or ARPriorConfig()
        K, V, E = c.n_components, c.n_bins, c.embed_dim
        self.register_buffer("pca_mean", torch.zeros(E))  # (E,)
        self.register_buffer("pca_components", torch.zeros(K, E))  # (K, E), rows orthonormal
        self.register_buffer("pca_variance", torch.zeros(K))  # (K,) variance along each component
        self.register_buffer("bin_edges", torch.zeros(K, V - 1))  # (K, V - 1) inner edges
        self.register_buffer("bin_centres", torch.zeros(K, V))  # (K, V)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.token_proj = nn.Linear(c.text_width, c.width)
        self.text_proj = nn.Linear(E, c.width)
        self.code_embedding = nn.Embedding(K * V, c.width)  # one table per component: row k V + v
        self.position = nn.Parameter(0.01 * torch.randn(c.n_tokens + K, c.width))  # (N + K, W)
        self.transformer = Transformer(c.width, c.layers, c.heads, causal=True)
        self.ln_final = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, V)

    # ----------------------------------------------------------------- PCA and quantisation

    @torch.no_grad()
    def fit(self, z_i: torch.Tensor) -> None:
        """Fit the PCA basis and the equal-mass buckets on training embeddings z_i (M, E), unit length."""
        c = self.config
        mean = z_i.mean(0)  # (E,)
        _, S, Vh = torch.linalg.svd(z_i - mean, full_matrices=False)  # Vh (E, E) rows = directions
        components = Vh[:c.n_components]  # (K, E)
        coords = (z_i - mean) @ components.T  # (M, K)
        q = torch.linspace(0, 1, c.n_bins + 1, dtype=coords.dtype)
        edges = torch.quantile(coords, q[1:-1], dim=0).T.contiguous()  # (K, V - 1)
        centres = torch.quantile(coords, (q[:-1] + q[1:]) / 2, dim=0).T.contiguous()  # (K, V): bucket medians
        for name, value in (("pca_mean", mean), ("pca_components", components),
                            ("pca_variance", S[:c.n_components] ** 2 / (len(z_i) - 1)),
                            ("bin_edges", edges), ("bin_centres", centres)):
            getattr(self, name).copy_(value)
        self.fitted.fill_(True)

    def _check_fitted(self):
        if not bool(self.fitted):
            raise ValueError("this ARPrior has no PCA basis yet: call fit(z_i) on training embeddings first")

    def encode(self, z_i: torch.Tensor) -> torch.Tensor:
        """z_i (B, E) -> codes (B, K) in [0, V): project on the PCA basis, then find each coordinate's bucket."""
        self._check_fitted()
        coords = (z_i - self.pca_mean) @ self.pca_components.T  # (B, K)
        return torch.stack([torch.bucketize(coords[:, k].contiguous(), self.bin_edges[k]) for k in range(coords.shape[1])], 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, K) -> z_i (B, E), unit length: bucket centres back through the PCA basis."""
        self._check_fitted()
        K = self.config.n_components
        coords = self.bin_centres[torch.arange(K, device=codes.device), codes]  # (B, K)
        return F.normalize(self.pca_mean + coords @ self.pca_components, dim=-1)

    # ----------------------------------------------------------------- the Transformer

    def forward(self, codes: torch.Tensor, cond: dict) -> torch.Tensor:
        """Teacher forcing: codes (B, k) with k <= K -> logits (B, k + 1 if k < K else K, V) for codes 1 .. k + 1.

        The output at the z_t position predicts code 1; the output at code j predicts code j + 1.
        """
        c = self.config
        B, k = codes.shape
        tokens = self.token_proj(cond["tokens"])  # (B, N, W)
        z_t = self.text_proj(cond["z_t"] * embed_scale(c.embed_dim))[:, None]  # (B, 1, W)
        offsets = torch.arange(k, device=codes.device) * c.n_bins  # (k,)
        given = codes[:, :c.n_components - 1]  # the last code is never an input
        code_emb = self.code_embedding(given + offsets[:given.shape[1]])  # (B, k', W)
        x = torch.cat([tokens, z_t, code_emb], dim=1)  # (B, L, W)
        L = x.shape[1]
        x = x + self.position[:L]
        keys = torch.cat([cond["mask"].bool(), cond["mask"].new_ones(B, L - c.n_tokens, dtype=torch.bool)], 1)
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        h = self.transformer(x, (causal[None] & keys[:, None, :])[:, None])  # (B, L, W)
        return self.head(self.ln_final(h[:, c.n_tokens:]))  # (B, L - N, V)

    @torch.no_grad()
    def sample(self, text: TextConditions, *, null: TextConditions | None = None, num_candidates: int = 2,
               generator: torch.Generator | None = None, return_candidates: bool = False, temperature: float = 1.0,
               num_inference_steps: int | None = None, guidance_scale: float | None = None):
        """z_i (B, E) for each caption: sample K codes left to right, decode, keep the best of num_candidates by z_i . z_t.

        The call is the diffusion prior's (`prior.Prior`): this prior has no guidance and takes K steps, so
        `null`, `num_inference_steps` and `guidance_scale` are accepted and not used.
        """
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        device, K = next(self.parameters()).device, self.config.n_components
        self.eval()

        def draw(cond: dict) -> torch.Tensor:  # (B k, E)
            cond = {key: v.to(device) for key, v in cond.items()}
            codes = torch.zeros(len(cond["z_t"]), 0, dtype=torch.long, device=device)
            for _ in range(K):
                logits = self(codes, cond)[:, -1] / temperature  # (B k, V)
                nxt = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator).to(device)  # (B k, 1)
                codes = torch.cat([codes, nxt], dim=1)
            return self.decode(codes)

        return best_of_n(draw, text, num_candidates, return_candidates)


def ar_prior_loss(model: ARPrior, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cross-entropy of each code given the caption and the codes before it.

    The model's PCA basis and buckets must be fitted first (`model.fit`, on the run's own training
    embeddings; the recipe does it before step 0).

    $$L_\\text{AR} = -\\sum_{k=1}^{K} \\log P_\\theta(c_k \\mid c_{<k}, y)$$
    averaged over codes. Book: eq-ar-prior-loss
    """
    device = next(model.parameters()).device
    codes = model.encode(batch["z_i"].to(device))  # (B, K)
    cond = {k: batch[k].to(device) for k in ("z_t", "tokens", "mask")}
    logits = model(codes, cond)  # (B, K, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))
