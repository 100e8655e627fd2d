"""Shapes: a tiny captioned image dataset that every image model in the book learns from.

Each image is 32x32 RGB with one object (by default 70% of images) or two
objects on a black background. An object has a shape, a colour, a size and a
position on a 3x3 grid; two objects stand in a relation ("left of", "above",
...). Captions come from :mod:`diffusion_notes.data.captions`.

Design choices
--------------
* **Pure function of (seed, split, index).** Item i draws its randomness from
  ``np.random.default_rng([seed, split_id, i, purpose])``, so it never depends
  on which other items were made, in which order, or by which DataLoader worker.
  Nothing is stored: the dataset can be as long as you like.
* **Anti-aliasing by analytic coverage.** Every shape has a signed distance
  function d (pixels; negative inside). A pixel with centre at distance d from
  the edge gets coverage ``clip(0.5 - d, 0, 1)``, a one-pixel linear ramp that
  approximates the area of the pixel inside the shape. This is exact enough for
  32x32 and costs one vectorised numpy expression per shape, no supersampling.
* **Objects never overlap.** Every object, including its anti-aliased rim,
  stays inside its own grid cell (jitter is limited to what the cell allows),
  and two objects occupy different cells. So colour compositing is a sum,
  and "the pixels of the top-left cell" are exactly the pixels of that object.
* **Relations come from grid cells**: "left of" means a smaller column, "above"
  a smaller row. For diagonal cells two relations hold; one is picked at random.
* **Colours** are saturated and far apart in RGB (see ``COLOUR_RGB``) so that a
  small CNN can tell them apart; the background is black (-1 in every channel).
* **Held-out colour-shape pairs** (``HELDOUT_PAIRS``): six of the 48 pairs
  (12.5%), one per shape and never red or white, so the training split still
  shows every shape in 7 colours and every colour on at least 5 shapes. The
  "heldout" split puts at least one held-out pair in every image; the "train"
  split never shows one. This is the test of compositional generalisation.

Book: chapter "The Shapes dataset".
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch.utils.data import Dataset

from .captions import canonical_caption, caption_for

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
# Shapes no shipped model was trained on: the new concepts that Part IV's fine-tuning teaches.
# They appear only where asked for (`concept_attributes`); the training splits never draw them.
CONCEPT_SHAPES = ("heart",)
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right",
             "left", "center", "right",
             "bottom left", "bottom", "bottom right")  # index = 3 * row + col
RELATIONS = ("left of", "right of", "above", "below")
SPLITS = ("train", "heldout")

# (R, G, B) in [0, 1]; images store 2 * rgb - 1.
COLOUR_RGB = {
    "red": (0.90, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.00),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.75, 0.15),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.15, 0.30, 1.00),
    "purple": (0.70, 0.20, 0.95),
    "white": (0.95, 0.95, 0.95),
}
BACKGROUND_RGB = (0.0, 0.0, 0.0)

HELDOUT_PAIRS = (
    ("triangle", "green"),
    ("star", "blue"),
    ("circle", "orange"),
    ("square", "purple"),
    ("diamond", "cyan"),
    ("cross", "yellow"),
)

IMAGE_SIZE = 32
CELL = IMAGE_SIZE / 3  # width of a grid cell in pixels
# Half-width of the box that holds the object, in pixels (large: 9 px across, small: 6 px).
SIZE_RADII = {"small": 3.0, "large": 4.5}

ALL_PAIRS = tuple((shape, colour) for shape in SHAPES for colour in COLOURS)
TRAIN_PAIRS = tuple(pair for pair in ALL_PAIRS if pair not in HELDOUT_PAIRS)


def is_heldout_pair(shape: str, colour: str) -> bool:
    """True if this colour-shape pair never appears in the training split."""
    return (shape, colour) in HELDOUT_PAIRS


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_split(split) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


# --------------------------------------------------------------------------- sampling

def _sample_object(rng: np.random.Generator, pair: tuple[str, str], cell: int) -> dict:
    shape, colour = pair
    size_index = int(rng.integers(len(SIZES)))
    radius = SIZE_RADII[SIZES[size_index]]
    jitter = CELL / 2 - radius - 0.5  # keeps the object and its 0.5 px rim inside its cell
    row, col = divmod(cell, 3)
    dx, dy = rng.uniform(-jitter, jitter, size=2)
    return {
        "shape": shape, "shape_index": (SHAPES + CONCEPT_SHAPES).index(shape),
        "colour": colour, "colour_index": COLOURS.index(colour),
        "size": SIZES[size_index], "size_index": size_index,
        "position": POSITIONS[cell], "position_index": cell, "row": row, "col": col,
        "x": float((col + 0.5) * CELL + dx), "y": float((row + 0.5) * CELL + dy),  # centre, pixels
    }


def _true_relations(a: dict, b: dict) -> list[str]:
    """Every relation in RELATIONS that holds between a and b's grid cells."""
    return [name for name, holds in zip(RELATIONS, (a["col"] < b["col"], a["col"] > b["col"],
                                                    a["row"] < b["row"], a["row"] > b["row"])) if holds]


def sample_attributes(index: int, seed: int = 0, split: str = "train",
                      p_two_objects: float = 0.3) -> dict:
    """The attributes of item `index`: a pure function of (seed, split, index, p_two_objects).

    Returns {"n_objects": 1 | 2, "relation": str | None, "relation_index": int | None,
    "objects": [object, ...]}; each object has shape, colour, size, position (names),
    their *_index, row, col, and its centre x, y in pixels.
    """
    split_id, seed, index = _check_split(split), _check_seed(seed), operator.index(index)
    if index < 0:
        raise ValueError(f"index must be a non-negative int, got {index}")
    rng = np.random.default_rng([seed, split_id, index, 0])  # 0: attributes, 1: caption
    n_objects = 2 if rng.random() < p_two_objects else 1
    cells = [int(rng.integers(9))]
    if n_objects == 2:
        cells.append((cells[0] + 1 + int(rng.integers(8))) % 9)  # a different cell
    if split == "train":
        pairs = [TRAIN_PAIRS[rng.integers(len(TRAIN_PAIRS))] for _ in cells]
    else:  # at least one object carries a held-out pair, the other (if any) is any pair
        pairs = [ALL_PAIRS[rng.integers(len(ALL_PAIRS))] for _ in cells]
        pairs[int(rng.integers(n_objects))] = HELDOUT_PAIRS[rng.integers(len(HELDOUT_PAIRS))]
    objects = [_sample_object(rng, pair, cell) for pair, cell in zip(pairs, cells)]
    relation = None
    if n_objects == 2:
        candidates = _true_relations(*objects)
        relation = candidates[int(rng.integers(len(candidates)))]
    return {"n_objects": n_objects, "relation": relation,
            "relation_index": None if relation is None else RELATIONS.index(relation),
            "objects": objects}


# --------------------------------------------------------------------------- drawing

def _sd_box(u, v, half_u, half_v):
    """Signed distance to an axis-aligned box centred at 0 (Inigo Quilez's sdBox)."""
    qu, qv = np.abs(u) - half_u, np.abs(v) - half_v
    return np.hypot(np.maximum(qu, 0), np.maximum(qv, 0)) + np.minimum(np.maximum(qu, qv), 0)


def _sd_star(u, v, radius, n, m):
    """Signed distance to a regular n-gon (m=2) or n-pointed star (2<m<n), a vertex up.

    Inigo Quilez's sdStar: fold the plane into one sector, then measure to one edge.
    """
    an, en = np.pi / n, np.pi / m
    acs = (float(np.cos(an)), float(np.sin(an)))  # python floats keep the arrays float32
    ecs = (float(np.cos(en)), float(np.sin(en)))
    u = np.abs(u)
    bn = np.mod(np.arctan2(u, v), 2 * an) - an  # angle within the sector
    r = np.hypot(u, v)
    pu, pv = r * np.cos(bn) - radius * acs[0], r * np.abs(np.sin(bn)) - radius * acs[1]
    t = np.clip(-(pu * ecs[0] + pv * ecs[1]), 0, radius * acs[1] / ecs[1])
    pu, pv = pu + ecs[0] * t, pv + ecs[1] * t
    return np.hypot(pu, pv) * np.sign(pu)


# u, v: offsets from the object's centre in pixels, v pointing up; s: half-width (n, 1, 1).
# Every shape fits in the box [-s, s]^2.
_SDF = {
    "circle": lambda u, v, s: np.hypot(u, v) - s,
    "square": lambda u, v, s: _sd_box(u, v, 0.85 * s, 0.85 * s),
    # circumradius 2s/sqrt(3) makes the base 2s wide; shift down by R/4 to centre it vertically
    "triangle": lambda u, v, s: _sd_star(u, v + s / 12**0.5, 2 * s / 3**0.5, 3, 2),
    "diamond": lambda u, v, s: _sd_star(u, v, s, 4, 2),
    "cross": lambda u, v, s: np.minimum(_sd_box(u, v, s, 0.35 * s), _sd_box(u, v, 0.35 * s, s)),
    "star": lambda u, v, s: _sd_star(u, v, s, 5, 3),
}


def _sd_heart(u, v):
    """Signed distance to a heart with its tip at the origin and its lobes up (Inigo Quilez's sdHeart).

    The heart spans |u| <= 0.604 and 0 <= v <= 1.104 in its own units.
    """
    u = np.abs(u)
    lobe = np.hypot(u - 0.25, v - 0.75) - 2**0.5 / 4
    t = np.maximum(u + v, 0.0) * 0.5
    body = np.sqrt(np.minimum(u**2 + (v - 1.0) ** 2, (u - t) ** 2 + (v - t) ** 2)) * np.sign(u - v)
    return np.where(u + v > 1.0, lobe, body)


# scale and centre the heart into [-s, s]^2: 1.104 units tall -> 2s pixels
_HEART_UNITS = 1.104
_SDF["heart"] = lambda u, v, s: _sd_heart(u * _HEART_UNITS / (2 * s), (v + s) * _HEART_UNITS / (2 * s)) * (2 * s) / _HEART_UNITS


def concept_attributes(index: int, seed: int = 0, concept: str = "heart", colours=COLOURS) -> dict:
    """One object of the new shape `concept` (see CONCEPT_SHAPES) with a random colour, size and cell.

    A pure function of (seed, index, concept), like `sample_attributes`; `colours` limits the
    colours drawn. The object's shape_index is len(SHAPES) + its place in CONCEPT_SHAPES.
    """
    if concept not in CONCEPT_SHAPES:
        raise ValueError(f"concept must be one of {CONCEPT_SHAPES}, got {concept!r}")
    seed, index = _check_seed(seed), operator.index(index)
    rng = np.random.default_rng([seed, 7, index, CONCEPT_SHAPES.index(concept)])  # 7: not a split id
    colour = colours[int(rng.integers(len(colours)))]
    obj = _sample_object(rng, (concept, colour), int(rng.integers(9)))
    return {"n_objects": 1, "relation": None, "relation_index": None, "objects": [obj]}


def _render_chunk(attributes_list: list[dict], canvas: np.ndarray) -> None:
    """Draw a few thousand images into canvas, (B, 3, H, W) float32, values in [-1, 1]."""
    objects = [(b, slot, obj) for b, attrs in enumerate(attributes_list)
               for slot, obj in enumerate(attrs["objects"])]
    image_idx = np.array([b for b, _, _ in objects])
    slot = np.array([k for _, k, _ in objects])
    names = SHAPES + CONCEPT_SHAPES
    shape_idx = np.array([names.index(o["shape"]) for _, _, o in objects])
    centre = np.array([(o["x"], o["y"]) for _, _, o in objects], dtype=np.float32)  # (N, 2)
    half = np.array([SIZE_RADII[o["size"]] for _, _, o in objects], dtype=np.float32)  # (N,)
    rgb = np.array([COLOUR_RGB[o["colour"]] for _, _, o in objects], dtype=np.float32)  # (N, 3)

    grid = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5  # pixel centres
    alpha = np.empty((len(objects), IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)  # (N, H, W)
    for k, shape in enumerate(names):
        sel = np.flatnonzero(shape_idx == k)
        if sel.size == 0:
            continue
        u = grid[None, None, :] - centre[sel, 0, None, None]  # (n, 1, W)
        v = centre[sel, 1, None, None] - grid[None, :, None]  # (n, H, 1), y points up
        sdf = _SDF[shape](u, v, half[sel, None, None])  # (n, H, W)
        alpha[sel] = np.clip(0.5 - sdf, 0.0, 1.0)

    # Work in [0, 1], map to [-1, 1] at the end. Objects never overlap, so "over"
    # compositing is a sum; within one slot every image appears at most once, so
    # the fancy-indexed += is safe.
    background = np.asarray(BACKGROUND_RGB, dtype=np.float32)
    canvas[:] = background[None, :, None, None]  # (B, 3, H, W)
    for k in (0, 1):
        sel = np.flatnonzero(slot == k)
        tint = (rgb[sel] - background)[:, :, None, None]  # (n, 3, 1, 1)
        canvas[image_idx[sel]] += alpha[sel, None] * tint  # (n, 3, H, W)
    canvas *= 2
    canvas -= 1


def render(attributes_list: list[dict], chunk_size: int = 1024) -> torch.Tensor:
    """Draw many images at once: (B, 3, 32, 32) float32 in [-1, 1]."""
    images = torch.empty(len(attributes_list), 3, IMAGE_SIZE, IMAGE_SIZE)  # (B, 3, H, W)
    canvas = images.numpy()  # shares memory with `images`
    for i in range(0, len(attributes_list), chunk_size):
        _render_chunk(attributes_list[i:i + chunk_size], canvas[i:i + chunk_size])
    return images


# --------------------------------------------------------------------------- dataset

class ShapesDataset(Dataset):
    """Captioned 32x32 shape images, generated on the fly from (seed, split, index).

    split: "train" (never shows a held-out colour-shape pair) or "heldout" (every
    image shows at least one). canonical_captions: use `canonical_caption` instead
    of a random template and synonyms.
    """

    def __init__(self, split: str = "train", length: int = 10_000, seed: int = 0,
                 p_two_objects: float = 0.3, canonical_captions: bool = False):
        self.split_id = _check_split(split)
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise ValueError(f"length must be a positive int (the number of items), got {length!r}")
        if not 0.0 <= p_two_objects <= 1.0:
            raise ValueError(f"p_two_objects must be a probability in [0, 1], got {p_two_objects!r}")
        self.split, self.length, self.seed = split, int(length), _check_seed(seed)
        self.p_two_objects, self.canonical_captions = float(p_two_objects), canonical_captions

    def __len__(self) -> int:
        return self.length

    def _index(self, i) -> int:
        i = operator.index(i)
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} is out of range for a ShapesDataset of length {self.length}")
        return i % self.length

    def attributes(self, i: int) -> dict:
        return sample_attributes(self._index(i), self.seed, self.split, self.p_two_objects)

    def caption(self, i: int, attributes: dict | None = None) -> str:
        attributes = attributes or self.attributes(i)
        if self.canonical_captions:
            return canonical_caption(attributes)
        rng = np.random.default_rng([self.seed, self.split_id, self._index(i), 1])
        return caption_for(attributes, rng=rng)

    def __getitem__(self, i: int) -> dict:
        attributes = self.attributes(i)
        return {"image": render([attributes])[0],  # (3, H, W)
                "caption": self.caption(i, attributes),
                "attributes": attributes}

    def images(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Images start..stop-1 in one batch, (stop - start, 3, 32, 32): the fast path."""
        stop = self.length if stop is None else stop
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"need 0 <= start <= stop <= {self.length}, got start={start}, stop={stop}")
        return render([self.attributes(i) for i in range(start, stop)])


def check_images(images: torch.Tensor, size: int | None = IMAGE_SIZE) -> torch.Tensor:
    """Raise a ValueError unless images is a finite (B, 3, size, size) float batch in [-1, 1]; return it.

    The one check every model that reads Shapes images uses (CLIP, the attribute classifier).
    size=None accepts any H, W.
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor, got {type(images).__name__}"
                         + (f" of dtype {images.dtype}" if isinstance(images, torch.Tensor) else ""))
    expected = "(B, 3, H, W)" if size is None else f"(B, 3, {size}, {size})"
    if images.ndim != 4 or images.shape[1] != 3 or (size is not None and images.shape[2:] != (size, size)):
        raise ValueError(f"images must have shape {expected}, got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    low, high = images.min().item(), images.max().item()
    if low < -1.001 or high > 1.001:
        raise ValueError(f"images must have values in [-1, 1] (map [0, 1] images with 2 * x - 1), "
                         f"got values in [{low:.3g}, {high:.3g}]")
    return images


def collate(batch: list[dict]) -> dict:
    """DataLoader collate_fn: images stacked (B, 3, H, W), captions and attributes as lists."""
    return {"image": torch.stack([item["image"] for item in batch]),
            "caption": [item["caption"] for item in batch],
            "attributes": [item["attributes"] for item in batch]}


def make_images(n: int, seed: int = 0, split: str = "train", p_two_objects: float = 0.3) -> torch.Tensor:
    """The first n images of ShapesDataset(split, n, seed, p_two_objects): (n, 3, 32, 32)."""
    return ShapesDataset(split, n, seed, p_two_objects).images()
