"""Words a prompt holds that the model never saw in training, named in a warning.

The text encoder keeps a row for each open_clip id of the Shapes captions and one `<unk>` row for
every other id (`data.tokenizer.to_compact`). A word outside that vocabulary ("pink", "dog") is
read as `<unk>`: the picture does not follow it. The in-page model of Chapter 13 refuses such a
word; the web UI draws anyway, as the original does with any text, and says which words were
not understood:

    >>> unknown_words("a pink circle", vocabulary)
    ['pink']

A piece of text is what CLIP's tokenizer cuts a cleaned text into (`web_vocab.PIECE_PATTERN`); a
web-UI prompt is first read as the text encoder reads it: extra-network tags removed, each step's
text of its prompt editing, each AND part, emphasis brackets and weights taken off.
"""

from __future__ import annotations

import warnings

import regex
import torch

from diffusion_notes.data.tokenizer import END_ID, tokenize
from diffusion_notes.practice.webui.extra_networks import parse_extra_networks
from diffusion_notes.practice.webui.prompts import parse_prompt_attention, prompt_schedule, split_and
from diffusion_notes.stable_diffusion.web_vocab import PIECE_PATTERN, clean

SHOWN = 10  # words named in one warning; the rest are counted


def unknown_words(text: str, vocabulary) -> list[str]:
    """The pieces of `text` (in order, each once) with an open_clip id outside `vocabulary`."""
    pieces = list(dict.fromkeys(regex.findall(PIECE_PATTERN, clean(text))))
    if not pieces:
        return []
    known = set(torch.as_tensor(vocabulary).tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a piece of over 75 tokens is cut: its first ids still tell
        rows = tokenize(pieces, allow_empty=True).tolist()  # (N, 77)
    return [piece for piece, row in zip(pieces, rows)
            if not set(row[1:row.index(END_ID) if END_ID in row[1:] else None]) <= known]


def prompt_texts(prompt: str, steps: int) -> list[str]:
    """The plain texts the text encoder reads for a web-UI prompt, over all its steps."""
    prompt, _ = parse_extra_networks(prompt)
    texts = []
    for _, text in prompt_schedule(prompt, steps):
        for part, _ in split_and(text):
            texts += [fragment for fragment, weight in parse_prompt_attention(part) if weight != -1]
    return texts


def word_warnings(settings, vocabulary) -> list[str]:
    """One warning each for the prompt's and the negative prompt's words the model never saw."""
    out = []
    for name in ("prompt", "negative_prompt"):
        words = list(dict.fromkeys(w for text in prompt_texts(getattr(settings, name), settings.steps)
                                   for w in unknown_words(text, vocabulary)))
        if words:
            out.append(unknown_words_message(words, "the negative prompt" if name == "negative_prompt" else
                                             "the prompt"))
    return out


def unknown_words_message(words: list[str], where: str = "the prompt") -> str:
    shown = ", ".join(f'"{w}"' for w in words[:SHOWN]) + (f" and {len(words) - SHOWN} more" if len(words) > SHOWN
                                                            else "")
    return (f"{where} has {'a word' if len(words) == 1 else 'words'} the model never saw in training: {shown}; "
            f"it reads {'it' if len(words) == 1 else 'each'} as an unknown token, so the picture does not "
            f"follow {'it' if len(words) == 1 else 'them'}")
