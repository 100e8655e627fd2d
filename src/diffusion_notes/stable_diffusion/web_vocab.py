"""The in-page tokenizer's table (`vocab.json`) and its Python twin.

A browser has no open_clip, but the Shapes captions use only 66 pieces of text (words and
punctuation), so the page tokenizes with a table: clean the text (trim, one space between
words, lower case, a final . ! or ? dropped), cut it with the BPE's pattern, look each piece up, and write

    [start, ids of piece 1, ..., ids of piece k, end, pad, ..., pad]      (77 ids)

exactly as `data.tokenizer.tokenize` does for any text made of those pieces. A piece that is
not in the table is refused with a message naming it (open_clip would map it to ids this
model never learnt: its <unk> row). `tokenize_with_table` below is what `web/sd_page.js`
does, written in Python, so a test can hold the table against open_clip's tokenizer.
"""

from __future__ import annotations

import warnings

import regex

from diffusion_notes.data import captions
from diffusion_notes.data.tokenizer import CONTEXT_LENGTH, END_ID, PAD_ID, START_ID, caption_words

# open_clip's pattern without its two special tokens; the page's JavaScript uses the same one (flag "u").
PIECE_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"""


def vocab_table(vocabulary) -> dict:
    """What vocab.json holds: piece -> open_clip ids, the special ids, the context length, word groups.

    `vocabulary`: the text encoder's compact list of open_clip ids (`clip.text.vocabulary`); every
    piece's ids must be in it (else the model would read them as <unk>).
    """
    words = caption_words()
    known = {int(i) for i in vocabulary}
    missing = {w: ids for w, ids in words.items() if not set(ids) <= known}
    if missing:
        raise ValueError(f"the text encoder's vocabulary lacks the ids of {missing}: it does not fit these captions")
    groups = {"colours": captions.COLOUR_WORDS, "shapes": captions.SHAPE_WORDS, "sizes": captions.SIZE_WORDS}
    return {
        "words": words,
        "start_id": START_ID, "end_id": END_ID, "pad_id": PAD_ID, "context_length": CONTEXT_LENGTH,
        "pattern": PIECE_PATTERN,
        "groups": {name: [p for phrases in table.values() for p in phrases] for name, table in groups.items()},
    }


def clean(text: str) -> str:
    """Trim, one space between words, lower case: open_clip's cleaning for plain text."""
    return " ".join(text.split()).lower()


def without_final_stop(text: str) -> str:
    """A caption written as a sentence, "a red circle.", read as the caption: final . ! ? dropped.

    open_clip would give the full stop its own id, one this model's vocabulary lacks (it would be
    read as <unk>, a row no caption trained); the page drops it instead of refusing the caption.
    """
    return text.rstrip().rstrip(".!?").rstrip()


def unknown_word_message(word: str, table: dict) -> str:
    """The message for a piece the table lacks; sd_page.js writes the same sentence."""
    groups = "; ".join(f"{name}: {', '.join(words)}" for name, words in table["groups"].items())
    return (f'unknown word "{word}": the model knows only the {len(table["words"])} words and signs of the '
            f"Shapes captions ({groups}; and positions, relations and the captions' other words)")


def tokenize_with_table(text: str, table: dict) -> list[int]:
    """77 open_clip ids of `text` by table look-up: `data.tokenizer.tokenize` for caption text ("" allowed).

    A piece not in the table is a ValueError naming it; over 77 ids are cut keeping the end
    token last, with a warning, as `tokenize` does.
    """
    ids = [table["start_id"]]
    for piece in regex.findall(table["pattern"], without_final_stop(clean(text))):
        if piece not in table["words"]:
            raise ValueError(unknown_word_message(piece, table))
        ids += table["words"][piece]
    ids.append(table["end_id"])
    L = table["context_length"]
    if len(ids) > L:
        warnings.warn(f"the text has {len(ids)} tokens, more than {L}; cut to {L}, keeping the end token last",
                      stacklevel=2)
        ids = ids[:L - 1] + [table["end_id"]]
    return ids + [table["pad_id"]] * (L - len(ids))  # (77,)
