"""A tiny CLIP for the Shapes dataset: two encoders, one embedding space, a contrastive loss.

CLIP (Radford et al. 2021) trains an image encoder and a text encoder so that an
image and its caption land close together in a shared space of width E, and
unmatched pairs far apart. Our version follows the paper's text tower
(a causal Transformer over 77 BPE token ids, the end-of-text state pooled) and
replaces its image tower with a small CNN that suits 32x32 images.

* ``encode_text`` returns the pooled, projected embedding z_t (B, E) and the
  per-token states (B, 77, D): Stable Diffusion's cross-attention reads the
  latter, the unCLIP prior and decoder read z_t.
* ``encode_image`` returns z_i (B, E) for images in [-1, 1].
* ``clip_loss`` is the symmetric cross-entropy of the paper's Figure 3.

Notation: B batch, L = 77 positions, D text width, E embedding width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_notes.data.shapes import IMAGE_SIZE, ShapesDataset, check_images, render
from diffusion_notes.data.tokenizer import CONTEXT_LENGTH, END_ID, caption_vocabulary, to_compact, tokenize
from diffusion_notes.nn.transformer import Transformer

OPEN_CLIP_VOCAB_SIZE = 49408


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor | float) -> torch.Tensor:
    r"""Symmetric contrastive loss of a batch of B matching (image, text) pairs.

    With normalised features and temperature scale s = exp(t), the logits are
    s * z_i z_t^T (B, B); pair k is the right answer in row k and in column k:

    .. math:: \mathcal{L} = \tfrac12\big(\mathrm{CE}(s\,Z_I Z_T^\top, k) + \mathrm{CE}(s\,Z_T Z_I^\top, k)\big)

    logit_scale is s itself (already exponentiated), as in open_clip's ClipLoss.

    Book: eq-clip-loss
    Paper: Radford et al. 2021, "Learning Transferable Visual Models From Natural
    Language Supervision", Figure 3.
    """
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError("image_features and text_features must both be (B, E), got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
    logits_per_image = logit_scale * image_features @ text_features.T  # (B, B)
    labels = torch.arange(len(image_features), device=image_features.device)  # (B,)
    return (F.cross_entropy(logits_per_image, labels)
            + F.cross_entropy(logits_per_image.T, labels)) / 2


class TextEncoding(NamedTuple):
    z_t: torch.Tensor  # (B, E) pooled and projected (normalised unless asked otherwise)
    token_states: torch.Tensor  # (B, 77, D) after the final LayerNorm, before pooling


@dataclass
class CLIPConfig:
    embed_dim: int = 64  # E, the shared embedding width
    text_width: int = 128  # D
    text_layers: int = 3
    text_heads: int = 4
    image_widths: tuple = (32, 64, 128)  # one stride-2 stage each: 32 -> 16 -> 8 -> 4 pixels
    image_depth: int = 1  # convolutions per stage (the first one has stride 2)
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
    max_logit_scale: float = 100.0


class TextEncoder(nn.Module):
    """Token ids -> (pooled (B, E), states (B, L, D)): embedding, causal Transformer, LayerNorm.

    The embedding table has one row per id of the compact caption vocabulary and one
    <unk> row; `vocabulary` (a buffer, saved with the weights) maps open_clip ids to rows.
    """

    def __init__(self, config: CLIPConfig):
        super().__init__()
        D = config.text_width
        self.register_buffer("vocabulary", torch.tensor(caption_vocabulary(), dtype=torch.long))
        self.token_embedding = nn.Embedding(len(self.vocabulary) + 1, D)  # +1: <unk>
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(CONTEXT_LENGTH, D))  # (77, D)
        self.transformer = Transformer(D, config.text_layers, config.text_heads, causal=True)
        self.ln_final = nn.LayerNorm(D)
        self.projection = nn.Linear(D, config.embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids: (B, L) open_clip ids, L <= 77. Returns pooled (B, E) and states (B, L, D).

        The causal mask makes positions up to the end token independent of the
        positions after it, so ids cut after the longest text give the same pooled output.
        """
        B, L = ids.shape
        x = self.token_embedding(to_compact(ids, self.vocabulary))  # (B, L, D)
        x = x + self.positional_embedding[:L]  # (B, L, D)
        states = self.ln_final(self.transformer(x))  # (B, L, D)
        eot = ids.argmax(dim=-1)  # (B,) the end token has the largest id, as in CLIP
        pooled = states[torch.arange(B, device=ids.device), eot]  # (B, D)
        return self.projection(pooled), states  # (B, E), (B, L, D)

    def hidden_states(self, ids: torch.Tensor, skip: int = 1) -> torch.Tensor:
        """ids (B, L) -> states (B, L, D) from the hidden state `skip` - 1 layers below the top, then ln_final.

        skip = 1 is the last layer's output (forward's states); skip = layers + 1 the embeddings.
        This is the web UI's clip skip: the hidden state -skip of the text encoder, then its final LayerNorm.
        """
        blocks = self.transformer.blocks
        if isinstance(skip, bool) or not isinstance(skip, int) or not 1 <= skip <= len(blocks) + 1:
            raise ValueError(f"skip must be an int between 1 and {len(blocks) + 1}, got {skip!r}")
        x = self.token_embedding(to_compact(ids, self.vocabulary))  # (B, L, D)
        x = x + self.positional_embedding[:ids.shape[1]]  # (B, L, D)
        for block in blocks[:len(blocks) + 1 - skip]:
            x = block(x)  # (B, L, D)
        return self.ln_final(x)  # (B, L, D)


class ImageEncoder(nn.Module):
    """A small CNN: stride-2 stages with GroupNorm and GELU, then flatten and project to E.

    The final 4x4 map is flattened rather than averaged: captions name the position
    of each object, and a global average would throw away where things are.
    """

    def __init__(self, config: CLIPConfig):
        super().__init__()
        layers, width = [], 3
        for w in config.image_widths:
            for i in range(config.image_depth):
                layers += [nn.Conv2d(width, w, 3, stride=2 if i == 0 else 1, padding=1),
                           nn.GroupNorm(8, w), nn.GELU()]
                width = w
        self.features = nn.Sequential(*layers)
        side = IMAGE_SIZE // 2 ** len(config.image_widths)
        self.projection = nn.Linear(width * side * side, config.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.features(images)  # (B, C, 4, 4)
        return self.projection(h.flatten(1))  # (B, E)


class CLIP(nn.Module):
    """Image and text encoders into one embedding space, and a learned temperature."""

    def __init__(self, config: CLIPConfig | None = None):
        super().__init__()
        self.config = config = config or CLIPConfig()
        self.text = TextEncoder(config)
        self.visual = ImageEncoder(config)
        self.log_logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(t), the inverse temperature, clamped to at most max_logit_scale (100) as in CLIP.

        Book: eq-logit-scale
        """
        return self.log_logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def _device(self) -> torch.device:
        return self.log_logit_scale.device

    def encode_text(self, texts_or_ids: str | list[str] | torch.Tensor, normalize: bool = True,
                    allow_empty: bool = False) -> TextEncoding:
        """Captions (a string, a list of strings, or (B, 77) open_clip ids) -> TextEncoding.

        z_t (B, E), unit length if normalize; token_states (B, 77, D).

        Book: eq-clip-embeddings
        """
        if isinstance(texts_or_ids, torch.Tensor):
            ids = texts_or_ids
            if ids.ndim != 2 or ids.shape[1] != CONTEXT_LENGTH or ids.dtype != torch.long:
                raise ValueError(f"token ids must be a (B, {CONTEXT_LENGTH}) long tensor, "
                                 f"got {tuple(ids.shape)} {ids.dtype}")
            if ids.min() < 0 or ids.max() >= OPEN_CLIP_VOCAB_SIZE or not (ids == END_ID).any(1).all():
                raise ValueError("token ids must be open_clip ids in [0, 49408) with an end token "
                                 "(49407) in every row; make them with diffusion_notes.tokenizer.tokenize")
        else:
            ids = tokenize(texts_or_ids, allow_empty=allow_empty)
        z_t, states = self.text(ids.to(self._device()))
        return TextEncoding(F.normalize(z_t, dim=-1) if normalize else z_t, states)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, 32, 32) images in [-1, 1] -> z_i (B, E), unit length if normalize.

        Book: eq-clip-embeddings
        """
        z_i = self.visual(check_images(images).to(self._device()))
        return F.normalize(z_i, dim=-1) if normalize else z_i

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Training forward: clip_loss of B matching pairs; ids may be cut to the longest text."""
        z_i = F.normalize(self.visual(images), dim=-1)  # (B, E)
        z_t = F.normalize(self.text(ids)[0], dim=-1)  # (B, E)
        return clip_loss(z_i, z_t, self.logit_scale)


def clip_batch(step: int, batch_size: int, seed: int = 0) -> dict:
    """Training batch `step`: items step * B ... step * B + B - 1 of the endless training split.

    A pure function of its arguments, so every step sees new images and a resumed
    run sees the same data. Returns {"images": (B, 3, 32, 32), "tokens": (B, 77) long}.
    """
    dataset = ShapesDataset("train", length=10**9, seed=seed)
    start = step * batch_size
    attributes = [dataset.attributes(i) for i in range(start, start + batch_size)]
    captions = [dataset.caption(start + k, a) for k, a in enumerate(attributes)]
    return {"images": render(attributes), "tokens": tokenize(captions)}


def clip_training_loss(model: CLIP, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
    """clip_loss on one batch (no randomness, so `generator` is unused).

    Runs the text Transformer only up to the longest caption in the batch: with a
    causal mask that gives exactly the pooled output of all 77 positions, faster.
    """
    device = model.log_logit_scale.device
    ids = batch["tokens"].to(device)
    length = int(ids.argmax(dim=-1).max()) + 1  # the last end token, + 1
    return model(batch["images"].to(device), ids[:, :length])
