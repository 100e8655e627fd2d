"""What every unCLIP model trains on: Shapes images with their CLIP embeddings, computed once.

DALL-E 2's prior and decoder never see raw text: they see what the frozen CLIP
makes of it. For each training item we keep

* z_i (E,): CLIP's image embedding of the 32x32 image, unit length;
* z_t (E,): CLIP's text embedding of its caption, unit length;
* the caption's token states (N_TOKENS, D) from CLIP's text encoder, and which
  of those positions are real tokens (start ... end) rather than padding.

Tokenising and encoding a caption costs far more than drawing its image, so a
training run builds one bank of `BANK_SIZE` items and walks through shuffled
copies of it; the images are redrawn from the stored attributes when a batch
asks for them. A batch is a pure function of (step, batch size, seed).

Notation: N items, B batch, E = 64 embedding width, D = 128 text width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .data.shapes import ShapesDataset, render
from .recipes import step_generator
from .tokenizer import tokenize

N_TOKENS = 40  # token states kept per caption: the longest Shapes caption has 40 tokens, start and end included
BANK_SIZE = 24576
P_TWO_OBJECTS_TRAIN = 0.5  # as for the latent UNet: two-object binding is the hard case, so train on more of it
BASE_SIZE = 16  # the base decoder's resolution; the upsampler takes it to 32


def embed_scale(embed_dim: int) -> float:
    """sqrt(E): unit-length embeddings times this have entries of about unit variance, the scale diffusion expects."""
    return math.sqrt(embed_dim)


@dataclass
class TextConditions:
    """A caption as the unCLIP models read it: z_t (B, E), token states (B, N, D), mask (B, N) True = real token."""

    z_t: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    def as_dict(self) -> dict:
        return {"z_t": self.z_t, "tokens": self.tokens, "mask": self.mask}

    def __len__(self) -> int:
        return len(self.z_t)


@torch.no_grad()
def encode_text(clip, prompts: list[str], n_tokens: int = N_TOKENS) -> TextConditions:
    """Captions -> TextConditions from the frozen CLIP. "" gives the empty caption (start, end): 'no text'."""
    ids = tokenize(list(prompts), allow_empty=True)  # (B, 77)
    encoding = clip.encode_text(ids)
    device = encoding.z_t.device
    length = ids.argmax(dim=-1) + 1  # (B,) positions up to and including the end token
    mask = torch.arange(n_tokens)[None, :] < length[:, None]  # (B, N)
    return TextConditions(encoding.z_t, encoding.token_states[:, :n_tokens].contiguous(), mask.to(device))


@lru_cache(maxsize=4)
def _null_text(clip) -> TextConditions:
    return encode_text(clip, [""])


def null_text(clip, batch_size: int = 1) -> TextConditions:
    """The empty caption's conditions repeated batch_size times: what a dropped caption becomes."""
    null = _null_text(clip)
    return TextConditions(*(x.expand(batch_size, *x.shape[1:]) for x in (null.z_t, null.tokens, null.mask)))


@dataclass
class Bank:
    attributes: list  # N attribute dicts (render them for the images)
    captions: list  # N strings
    z_i: torch.Tensor  # (N, E) unit length
    text: TextConditions  # (N, E), (N, N_TOKENS, D), (N, N_TOKENS)


@torch.no_grad()
def build_bank(clip, n: int, seed: int = 0, split: str = "train", p_two_objects: float = P_TWO_OBJECTS_TRAIN,
               chunk: int = 1024, progress: bool = True) -> Bank:
    """Items 0 .. n-1 of the Shapes split with their CLIP embeddings and token states."""
    dataset = ShapesDataset(split, length=max(n, 1), seed=seed, p_two_objects=p_two_objects)
    attributes = [dataset.attributes(i) for i in range(n)]
    captions = [dataset.caption(i, a) for i, a in enumerate(attributes)]
    z_i, texts = [], []
    starts = range(0, n, chunk)
    if progress and n > chunk:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"CLIP-encoding {n} {split} items", leave=False)
    for s in starts:
        z_i.append(clip.encode_image(render(attributes[s:s + chunk])).cpu())
        texts.append(encode_text(clip, captions[s:s + chunk]))
    text = TextConditions(torch.cat([t.z_t for t in texts]).cpu(), torch.cat([t.tokens for t in texts]).cpu(),
                          torch.cat([t.mask for t in texts]).cpu())
    return Bank(attributes, captions, torch.cat(z_i), text)


@lru_cache(maxsize=1)
def frozen_clip():
    """The shipped CLIP, frozen: every unCLIP model is trained against it."""
    from . import pretrained

    clip = pretrained.load("clip", "cpu")
    clip.requires_grad_(False)
    return clip


CACHE_ENV_VAR = "DIFFUSION_NOTES_CACHE"


@lru_cache(maxsize=2)
def training_bank(seed: int = 0, n: int = BANK_SIZE) -> Bank:
    """The bank the unCLIP recipes train on (built once per process, about two minutes on 2 cores).

    If $DIFFUSION_NOTES_CACHE names a folder, the bank is kept there between runs,
    under a name that includes the shipped CLIP's checksum.
    """
    import os

    cache = os.environ.get(CACHE_ENV_VAR)
    if not cache:
        return build_bank(frozen_clip(), n, seed=seed, split="train")
    from pathlib import Path

    from . import pretrained

    path = Path(cache) / f"unclip_bank_{seed}_{n}_{pretrained.info('clip')['sha256'][:12]}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        return Bank(saved["attributes"], saved["captions"], saved["z_i"], TextConditions(**saved["text"]))
    bank = build_bank(frozen_clip(), n, seed=seed, split="train")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"attributes": bank.attributes, "captions": bank.captions, "z_i": bank.z_i,
                "text": bank.text.as_dict()}, tmp)
    tmp.replace(path)
    return bank


def bank_indices(step: int, batch_size: int, seed: int, n: int) -> torch.Tensor:
    """Rows of the bank for batch `step`: consecutive slices of a fresh permutation per pass over the bank."""
    rows = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, position = divmod(k, n)
        rows.append(_permutation(seed, epoch, n)[position])
    return torch.stack(rows)


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=step_generator(seed, epoch, stream=3))


def downsample(images: torch.Tensor, size: int = BASE_SIZE) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, size, size) by averaging blocks (area interpolation): the base decoder's images."""
    return F.interpolate(images, size=(size, size), mode="area")


def upsample(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 3, size, size) bilinear: the upsampler's view of the low-resolution image."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def unclip_batch(step: int, batch_size: int, seed: int = 0) -> dict:
    """Training batch `step`: images (B, 3, 32, 32) in [-1, 1], z_i (B, E), z_t (B, E), tokens, mask."""
    bank = training_bank(seed)
    rows = bank_indices(step, batch_size, seed, len(bank.z_i))
    return {"images": render([bank.attributes[r] for r in rows.tolist()]),
            "z_i": bank.z_i[rows], "z_t": bank.text.z_t[rows],
            "tokens": bank.text.tokens[rows], "mask": bank.text.mask[rows]}
