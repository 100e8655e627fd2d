"""Datasets the book's models learn from.

`shapes`: 32x32 captioned images of coloured shapes (CLIP, VAE, latent UNet, unCLIP).
`captions`: the caption templates and synonyms of the Shapes dataset.
"""

from .captions import canonical_caption, caption_for
from .shapes import (
    COLOURS,
    HELDOUT_PAIRS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    SPLITS,
    ShapesDataset,
    collate,
    is_heldout_pair,
    make_images,
    render,
    sample_attributes,
)

__all__ = [
    "COLOURS", "HELDOUT_PAIRS", "POSITIONS", "RELATIONS", "SHAPES", "SIZES", "SPLITS",
    "ShapesDataset", "canonical_caption", "caption_for", "collate", "is_heldout_pair",
    "make_images", "render", "sample_attributes",
]
