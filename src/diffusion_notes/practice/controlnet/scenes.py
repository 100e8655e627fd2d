"""Scenes for a ControlNet that sets the layout: objects anywhere, at any size, and captions that may not say where.

The Shapes dataset puts each object in one of nine cells at one of two radii, and its caption
names the cell. A ControlNet trained only on those learns nothing the caption did not already
say. Here a scene may be *moved*: every object gets a centre anywhere on the canvas and a radius
anywhere in `RADIUS_RANGE` (its size word is the nearer of "small" and "large"), and the caption
comes in three kinds:

    "none"   names no position:             "a large red circle"
    "same"   names the cell the object is in: "a large red circle in the top left"
    "other"  names another cell:             "a large red circle in the bottom right"

so only the condition can say where. `render_scene` draws a scene with each object's own
radius (`radius`, else the dataset's radius for its size word), the same signed distance
functions as `data.shapes.render`.

Notation: B batch, H = W = 32 pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion_notes.data.captions import _object_fields, _position_phrase
from diffusion_notes.data.shapes import _SDF, CELL, COLOUR_RGB, IMAGE_SIZE, POSITIONS, SIZE_RADII

CAPTION_KINDS = ("none", "same", "other")
RADIUS_RANGE = (2.0, 6.0)  # pixels; the dataset's radii are 3 (small) and 4.5 (large)
SMALL_BELOW = (SIZE_RADII["small"] + SIZE_RADII["large"]) / 2  # a moved object smaller than this is "small"


def radius_of(obj: dict) -> float:
    """The object's radius in pixels: its own `radius`, else the dataset's for its size word."""
    return float(obj.get("radius", SIZE_RADII[obj["size"]]))


def object_sdf(obj: dict) -> np.ndarray:
    """(H, W) signed distance in pixels to one object's edge (negative inside), the renderer's SDF."""
    grid = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5  # pixel centres, as `render` samples them
    u = grid[None, :] - np.float32(obj["x"])  # (1, W)
    v = np.float32(obj["y"]) - grid[:, None]  # (H, 1), y points up
    return _SDF[obj["shape"]](u, v, np.float32(radius_of(obj)))


def render_scene(attributes_list: list[dict]) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1]: each object's coverage clip(0.5 - sdf, 0, 1) times its colour, on black."""
    out = np.zeros((len(attributes_list), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)  # (B, 3, H, W)
    for b, attrs in enumerate(attributes_list):
        for obj in attrs["objects"]:
            alpha = np.clip(0.5 - object_sdf(obj), 0.0, 1.0)  # (H, W)
            out[b] += alpha[None] * np.asarray(COLOUR_RGB[obj["colour"]], dtype=np.float32)[:, None, None]
    return torch.from_numpy(out * 2 - 1)


def cell_of(x: float, y: float) -> int:
    """The index in POSITIONS of the 3x3 cell that holds the point (x, y) (pixels, y down the rows)."""
    col, row = (min(int(c // CELL), 2) for c in (x, y))
    return 3 * row + col


def place(obj: dict, x: float, y: float, radius: float) -> dict:
    """A copy of `obj` centred at (x, y) with `radius`; its size word, cell, row and column follow."""
    cell = cell_of(x, y)
    size = "small" if radius < SMALL_BELOW else "large"
    return {**obj, "x": float(x), "y": float(y), "radius": float(radius), "size": size,
            "size_index": int(size == "large"), "position": POSITIONS[cell], "position_index": cell,
            "row": cell // 3, "col": cell % 3}


def move(attributes: dict, rng: np.random.Generator, tries: int = 20) -> dict:
    """The scene with every object at a random place and radius inside the canvas, the objects apart.

    Two objects are kept sqrt(2) (r_1 + r_2) + 1 pixels apart (a square's corner reaches sqrt(2) r).
    After `tries` failed draws the scene is returned unmoved.
    """
    lo, hi = RADIUS_RANGE
    for _ in range(tries):
        radii = rng.uniform(lo, hi, size=len(attributes["objects"]))
        centres = [rng.uniform(r + 1, IMAGE_SIZE - r - 1, size=2) for r in radii]
        if len(radii) == 1 or np.hypot(*(centres[0] - centres[1])) > np.sqrt(2) * radii.sum() + 1:
            objects = [place(o, c[0], c[1], r) for o, c, r in zip(attributes["objects"], centres, radii)]
            return {**attributes, "objects": objects, "relation": None, "relation_index": None}
    return attributes


def scene_caption(attributes: dict, kind: str, rng: np.random.Generator | None = None) -> str:
    """A caption of `kind` (CAPTION_KINDS) for the scene: every object's size, colour and shape, and where:
    nowhere ("none"), its own cell ("same") or another cell ("other", drawn with `rng`)."""
    if kind not in CAPTION_KINDS:
        raise ValueError(f"kind must be one of {CAPTION_KINDS}, got {kind!r}")
    if kind == "other" and rng is None:
        raise ValueError("a caption that names another cell needs an rng to pick the cell")
    parts = []
    for obj in attributes["objects"]:
        f = _object_fields(obj, rng)
        text = f"{f['a']} {f['size']} {f['colour']} {f['shape']}"
        if kind != "none":
            cell = obj["position_index"]
            if kind == "other":
                cell = (cell + 1 + int(rng.integers(len(POSITIONS) - 1))) % len(POSITIONS)  # any cell but its own
            text += " " + _position_phrase(POSITIONS[cell], POSITIONS[cell])
        parts.append(text)
    return " and ".join(parts)
