"""Text to token ids: open_clip's BPE tokenizer and the compact vocabulary of the Shapes captions.

Every text becomes 77 open_clip token ids, as in CLIP and Stable Diffusion:
``[start, w_1, ..., w_n, end, pad, ..., pad]`` with start = 49406, end = 49407
and pad = 0. The ids are the ones a real CLIP text encoder reads, so our tiny
model and a real open_clip model take the same input (see ``bridges.py``).

A real CLIP embeds all 49,408 ids; at our width that table alone would weigh
~25 MB. The Shapes captions use about a hundred of them, so the tiny CLIP keeps
only those: :func:`caption_vocabulary` lists them (sorted open_clip ids,
including pad, start and end) and :func:`to_compact` maps any open_clip id to its
row in that list, or to one extra ``<unk>`` row for a word no caption uses.

open_clip's tokenizer works offline (its BPE merges ship in the package). It is
loaded on first use, and by itself: importing all of open_clip takes a few seconds.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import string
import sys
import warnings
from pathlib import Path

import torch

from diffusion_notes.data import captions

CONTEXT_LENGTH = 77
PAD_ID, START_ID, END_ID = 0, 49406, 49407


@functools.lru_cache(maxsize=1)
def _bpe():
    return _open_clip_tokenizer().SimpleTokenizer(context_length=CONTEXT_LENGTH)


def _open_clip_tokenizer():
    """open_clip's own tokenizer module, without importing the rest of open_clip when that is not loaded yet.

    The package's __init__ imports its models, and with them torchvision and transformers (about 5 s);
    the tokenizer module needs none of them, so it is run from its file. If that ever fails (a new
    open_clip whose tokenizer imports its siblings), the package is imported the ordinary way.
    """
    if "open_clip.tokenizer" in sys.modules:
        return sys.modules["open_clip.tokenizer"]
    try:
        package = importlib.util.find_spec("open_clip")
        path = Path(package.submodule_search_locations[0]) / "tokenizer.py"
        spec = importlib.util.spec_from_file_location("diffusion_notes.data._open_clip_tokenizer", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except (ImportError, OSError, AttributeError, TypeError):
        from open_clip import tokenizer

        return tokenizer


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts is an empty list; pass at least one caption")
    return list(texts)


def tokenize(texts: str | list[str], allow_empty: bool = False) -> torch.Tensor:
    """Token ids of each text, (B, 77) long: start, the BPE ids, end, then pad (0).

    The same ids as ``open_clip.get_tokenizer("ViT-B-32")(texts)``. A text longer
    than 77 tokens (start and end included) is cut to 77 keeping the end token
    last, as open_clip does, with a warning. An empty text raises a ValueError
    unless ``allow_empty=True``: then it gives ``[start, end, pad, ...]``, the
    empty prompt that classifier-free guidance uses as its unconditional input.
    """
    texts = _check_texts(texts)
    bpe = _bpe()
    ids = torch.full((len(texts), CONTEXT_LENGTH), PAD_ID, dtype=torch.long)  # (B, 77)
    for b, text in enumerate(texts):
        words = bpe.encode(text)
        if not words and not allow_empty:
            raise ValueError(
                f"text {b} is empty ({text!r}); pass allow_empty=True to get the empty-prompt "
                "encoding that classifier-free guidance uses as the unconditional input "
                "(Stable Diffusion encodes \"\" for it)")
        row = [START_ID, *words, END_ID]
        if len(row) > CONTEXT_LENGTH:
            warnings.warn(
                f"text {b} has {len(row)} tokens (start and end included), more than the "
                f"{CONTEXT_LENGTH} a CLIP text encoder reads; truncated to {CONTEXT_LENGTH}, "
                "keeping the end token last", stacklevel=2)
            row = row[:CONTEXT_LENGTH - 1] + [END_ID]
        ids[b, :len(row)] = torch.tensor(row)
    return ids


def decode(ids: torch.Tensor) -> list[str]:
    """The texts behind (B, 77) token ids, without start, end and pad (BPE spacing)."""
    bpe = _bpe()
    ids = torch.as_tensor(ids).reshape(-1, ids.shape[-1])  # (B, L)
    special = {PAD_ID, START_ID, END_ID}
    return [bpe.decode([i for i in row.tolist() if i not in special]).strip() for row in ids]


def _caption_texts() -> list[str]:
    """Every word and fixed piece of text the caption generator can produce."""
    texts = []
    for table in (captions.SHAPE_WORDS, captions.COLOUR_WORDS, captions.SIZE_WORDS,
                  captions.POSITION_WORDS, captions.RELATION_WORDS):
        texts += [phrase for phrases in table.values() for phrase in phrases]
    # Template text with the {fields} blanked out, and the words that fields add around
    # the table entries (articles, "in the", "at the", "on the").
    for template in captions.ONE_OBJECT_TEMPLATES + captions.TWO_OBJECT_TEMPLATES:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        texts.append(template.format(**{name: " " for name in fields}))
    texts += ["a", "an", "in the", "at the", "on the"]
    return texts


# What `derive_caption_vocabulary()` returns, written out so that building a CLIP (and so
# `pretrained.load("clip")`) does not import open_clip, which takes seconds.
# tests/test_clip.py checks that the two agree.
CAPTION_VOCABULARY = (
    0, 81, 267, 268, 281, 282, 320, 518, 525, 530, 531, 533, 536, 537, 539, 550, 593, 637, 736, 874,
    906, 962, 997, 1010, 1145, 1155, 1205, 1237, 1253, 1274, 1470, 1565, 1579, 1674, 1746, 1798, 1823,
    1901, 2063, 2119, 2241, 2292, 2442, 2840, 2867, 2916, 3097, 3417, 3638, 3694, 3788, 3999, 4287,
    4348, 4481, 4909, 5496, 5591, 5931, 6235, 7067, 7117, 10712, 14615, 15377, 16118, 16850, 17970,
    19899, 49406, 49407,
)


def caption_vocabulary() -> tuple[int, ...]:
    """Sorted open_clip ids of every token in the Shapes captions, plus pad, start and end.

    The stored copy of :func:`derive_caption_vocabulary` (a test keeps them equal).
    """
    return CAPTION_VOCABULARY


def derive_caption_vocabulary() -> tuple[int, ...]:
    """Build the caption vocabulary from the word tables and templates of :mod:`diffusion_notes.data.captions`.

    It is the same on every machine. CLIP's BPE splits text into words and
    punctuation first and then encodes each word on its own, so the tokens of a
    caption are the tokens of its pieces.
    """
    bpe = _bpe()
    ids = {PAD_ID, START_ID, END_ID}
    for text in _caption_texts():
        ids.update(bpe.encode(re.sub(r"\s+", " ", text)))
    return tuple(sorted(ids))


def caption_words() -> dict[str, list[int]]:
    """Every piece CLIP's BPE cuts the Shapes captions into (words and punctuation), with its open_clip ids.

    The pieces are what the BPE's pattern splits a cleaned, lower-cased text into before it
    encodes each one on its own, so a caption's ids are its pieces' ids in order (the table
    the in-page tokenizer of Chapter 13 reads; `stable_diffusion/web_vocab.py`).
    """
    bpe = _bpe()
    words = {}
    for text in _caption_texts():
        for piece in bpe.pat.findall(bpe.clean_fn(text)):
            words[piece] = bpe.encode(piece)
    return dict(sorted(words.items()))


def to_compact(ids: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
    """Map open_clip ids to rows of a compact table: the index in `vocabulary`, else len(vocabulary).

    vocabulary: (V,) sorted open_clip ids; the extra row V is ``<unk>``.
    """
    index = torch.searchsorted(vocabulary, ids.contiguous()).clamp(max=len(vocabulary) - 1)  # same shape as ids
    known = vocabulary[index] == ids
    return torch.where(known, index, torch.full_like(index, len(vocabulary)))
