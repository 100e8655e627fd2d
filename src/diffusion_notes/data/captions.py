"""Captions for the Shapes dataset: synonyms, templates and the canonical caption.

A text encoder only learns something if the same picture can be described in
more than one way, so every attribute has a few synonyms and there are several
sentence templates. One rule holds for every template: **a caption states every
attribute of every object** (colour, shape, size, position) and, for two
objects, their relation. The caption is therefore never ambiguous, and a test
can check it word by word against the attributes.

The word tables below are keyed by the attribute names of
:mod:`diffusion_notes.data.shapes` (``SHAPES``, ``COLOURS``, ...). No phrase
appears under two keys, so each phrase names exactly one attribute value.

Book: chapter "The Shapes dataset".
"""

from __future__ import annotations

import numpy as np

SHAPE_WORDS = {
    "circle": ("circle", "disc", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
    "star": ("star",),
}
# Words for the new concepts of Part IV (data.shapes.CONCEPT_SHAPES); kept apart from SHAPE_WORDS,
# so the caption vocabulary the shipped text encoder knows stays as it was.
CONCEPT_WORDS = {
    "heart": ("heart",),
}
COLOUR_WORDS = {
    "red": ("red",),
    "orange": ("orange",),
    "yellow": ("yellow",),
    "green": ("green",),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "white": ("white",),
}
SIZE_WORDS = {
    "small": ("small", "tiny", "little"),
    "large": ("large", "big"),
}
# Bare position words; `_position_phrase` adds the preposition ("in the top left").
POSITION_WORDS = {
    "top left": ("top left", "upper left", "top-left"),
    "top": ("top",),
    "top right": ("top right", "upper right", "top-right"),
    "left": ("left", "left side"),
    "center": ("center", "centre", "middle"),
    "right": ("right", "right side"),
    "bottom left": ("bottom left", "lower left", "bottom-left"),
    "bottom": ("bottom",),
    "bottom right": ("bottom right", "lower right", "bottom-right"),
}
RELATION_WORDS = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}

ONE_OBJECT_TEMPLATES = (
    "{a} {size} {colour} {shape} {where}",  # canonical
    "there is {a} {size} {colour} {shape} {where}",
    "a picture of {a_colour} {colour} {shape}, {size}, {where}",
    "{colour} {shape}, {size}, {pos}",
    "{where}, {a} {size} {colour} {shape}",
    "an image with {a} {size} {colour} {shape} {where}",
)
TWO_OBJECT_TEMPLATES = (
    "{a1} {size1} {colour1} {shape1} {where1}, {rel} {a2} {size2} {colour2} {shape2} {where2}",  # canonical
    "{a1} {size1} {colour1} {shape1} {rel} {a2} {size2} {colour2} {shape2}; "
    "one is {where1}, the other {where2}",
    "two shapes: {a1} {size1} {colour1} {shape1} {where1} and {a2} {size2} {colour2} {shape2} "
    "{where2}; the {colour1} {shape1} is {rel} the {colour2} {shape2}",
    "{colour1} {shape1}, {size1}, {pos1}, {rel} {colour2} {shape2}, {size2}, {pos2}",
    "there is {a1} {size1} {colour1} {shape1} {where1} and {a2} {size2} {colour2} {shape2} "
    "{where2}; the first is {rel} the second",
)


def _article(word: str) -> str:
    """'a' or 'an' for the word that follows ('an orange circle')."""
    return "an" if word[0] in "aeiou" else "a"


def _position_phrase(name: str, word: str) -> str:
    """'in the top left', 'at the top', 'on the left', 'in the center'."""
    if name in ("top", "bottom"):
        return f"at the {word}"
    if name in ("left", "right"):
        return f"on the {word}"
    return f"in the {word}"


def _pick(words: tuple[str, ...], rng: np.random.Generator | None) -> str:
    """The first (canonical) synonym without an rng, a random one with it."""
    return words[0] if rng is None else words[int(rng.integers(len(words)))]


def _object_fields(obj: dict, rng: np.random.Generator | None, suffix: str = "") -> dict:
    size = _pick(SIZE_WORDS[obj["size"]], rng)
    colour = _pick(COLOUR_WORDS[obj["colour"]], rng)
    pos = _pick(POSITION_WORDS[obj["position"]], rng)
    fields = {
        "size": size,
        "colour": colour,
        "shape": _pick(SHAPE_WORDS.get(obj["shape"]) or CONCEPT_WORDS[obj["shape"]], rng),
        "pos": pos,
        "where": _position_phrase(obj["position"], pos),
        "a": _article(size),
        "a_colour": _article(colour),
    }
    return {key + suffix: value for key, value in fields.items()}


def caption_for(attributes: dict, template: int | None = None,
                rng: np.random.Generator | None = None) -> str:
    """A caption for one image's attributes.

    template: index into ONE_OBJECT_TEMPLATES or TWO_OBJECT_TEMPLATES (by the
    number of objects); None draws one with `rng`. rng: a numpy Generator that
    picks the template and the synonyms; None means template 0 and the first
    synonym of every word, i.e. the canonical caption.
    """
    objects = attributes["objects"]
    if len(objects) not in (1, 2):
        raise ValueError(f"attributes must describe 1 or 2 objects, got {len(objects)}")
    templates = ONE_OBJECT_TEMPLATES if len(objects) == 1 else TWO_OBJECT_TEMPLATES
    if template is None:
        template = 0 if rng is None else int(rng.integers(len(templates)))
    if not 0 <= template < len(templates):
        raise ValueError(f"template must be an index between 0 and {len(templates) - 1} "
                         f"for {len(objects)} object(s), got {template}")
    if len(objects) == 1:
        return templates[template].format(**_object_fields(objects[0], rng))
    fields = {**_object_fields(objects[0], rng, "1"), **_object_fields(objects[1], rng, "2")}
    fields["rel"] = _pick(RELATION_WORDS[attributes["relation"]], rng)
    return templates[template].format(**fields)


def canonical_caption(attributes: dict) -> str:
    """The one fixed caption of an image: template 0, first synonym of every word.

    'a small red circle in the top left' or 'a small red circle in the top left,
    to the left of a large blue square in the top right'. Used for zero-shot
    CLIP prompts, where every class must be worded the same way.
    """
    return caption_for(attributes, template=0, rng=None)
