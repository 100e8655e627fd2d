"""What the unCLIP models read: captions and pictures as the frozen CLIP embeds them.

DALL-E 2's prior and decoder never see raw text: they see what the frozen CLIP
makes of it. For each training item we keep

* z_i (E,): CLIP's image embedding of the 32x32 image, unit length;
* z_t (E,): CLIP's text embedding of its caption, unit length;
* the caption's token states (N_TOKENS, D) from CLIP's text encoder, and which
  of those positions are real tokens (start ... end) rather than padding.

Tokenising and encoding a caption costs far more than drawing its image, so a
training run builds one bank of `BANK_SIZE` items and walks through shuffled
copies of it; the images are redrawn from the stored attributes when a batch
asks for them. A batch is a pure function of (bank, step, batch size, seed).
The CLIP is always an argument: the training command builds its bank from the
shipped one (`training/frozen.py`), and a pipeline encodes with its own.

The empty caption's conditions (`null_text`) are the unconditional side of
guidance and what a dropped caption becomes (`drop_text`); `best_of_n` is the
choice among prior samples that both priors share.

Notation: N items, B batch, E = 64 embedding width, D = 128 text width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffusion_notes.data.shapes import ShapesDataset, render
from diffusion_notes.data.tokenizer import tokenize
from diffusion_notes.foundations.guidance import drop_condition
from diffusion_notes.rng import step_generator

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
    """The empty caption's conditions through `clip`, repeated batch_size times: what a dropped caption becomes."""
    null = _null_text(clip)
    return TextConditions(*(x.expand(batch_size, *x.shape[1:]) for x in (null.z_t, null.tokens, null.mask)))


def drop_text(cond: dict, p: float, null: TextConditions, generator: torch.Generator | None = None) -> dict:
    """Replace each caption's conditions (z_t, tokens, mask together) by the empty caption's with probability p.

    `guidance.drop_condition` on the three tensors at once (one uniform number per row).
    Book: eq-cfg-dropout
    """
    return drop_condition(cond, p, {key: getattr(null, key)[0] for key in ("z_t", "tokens", "mask")}, generator)


def repeat_text(text: TextConditions, k: int) -> TextConditions:
    """Each caption's conditions k times in a row: (B, ...) -> (B k, ...)."""
    return TextConditions(*(x.repeat_interleave(k, 0) for x in (text.z_t, text.tokens, text.mask)))


def best_of_n(draw, text: TextConditions, num_candidates: int, return_candidates: bool = False):
    """DALL-E 2's choice among prior samples: draw num_candidates z_i per caption, keep the largest z_i . z_t.

    `draw(cond)` gets the captions' conditions repeated num_candidates times (a dict of (B k, ...) tensors
    on the prior's device) and returns (B k, E) unit-length candidates. Returns the best (B, E), and with
    return_candidates also the (B, k, E) candidates and their (B, k) scores.
    Book: eq-best-of-two
    Paper: Ramesh et al. 2022, section 2.2 (two samples, the one with the higher dot product with z_t)
    """
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
        raise ValueError(f"num_candidates must be a positive int, got {num_candidates!r}")
    B, k = len(text), num_candidates
    candidates = draw(repeat_text(text, k).as_dict())  # (B k, E)
    candidates = candidates.view(B, k, -1)  # (B, k, E)
    scores = (candidates * text.z_t.to(candidates.device)[:, None]).sum(-1)  # (B, k): z_i . z_t
    best = candidates[torch.arange(B, device=candidates.device), scores.argmax(dim=1)]  # (B, E)
    return (best, candidates, scores) if return_candidates else best


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
        starts = tqdm(starts, desc=f"CLIP-encoding {n} {split} items", leave=False)
    for s in starts:
        z_i.append(clip.encode_image(render(attributes[s:s + chunk])).cpu())
        texts.append(encode_text(clip, captions[s:s + chunk]))
    text = TextConditions(torch.cat([t.z_t for t in texts]).cpu(), torch.cat([t.tokens for t in texts]).cpu(),
                          torch.cat([t.mask for t in texts]).cpu())
    return Bank(attributes, captions, torch.cat(z_i), text)


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


def unclip_batch(bank: Bank, step: int, batch_size: int, seed: int = 0) -> dict:
    """Training batch `step` of `bank`: images (B, 3, 32, 32) in [-1, 1], z_i (B, E), z_t (B, E), tokens, mask."""
    rows = bank_indices(step, batch_size, seed, len(bank.z_i))
    return {"images": render([bank.attributes[r] for r in rows.tolist()]),
            "z_i": bank.z_i[rows], "z_t": bank.text.z_t[rows],
            "tokens": bank.text.tokens[rows], "mask": bank.text.mask[rows]}
