"""The X/Y/Z plot script: one image per combination of up to three settings, laid out in a labelled grid.

Axes: "CFG Scale", "Steps", "Sampler", "Seed", "Prompt S/R" (search and replace: the first value is
the text searched for in the prompt and negative prompt, each value replaces it), and "Nothing".
Values are written as the web UI takes them: "1, 4, 7", ranges "1-5" (every integer), "1-9 (+2)"
(a step) and "1-2 [5]" (a count), and for Prompt S/R quoted CSV ("red", "dark blue").
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffusion_notes.practice.webui.generate import Settings, sampler_name
from diffusion_notes.practice.webui.seeds import resolve_seed

AXES = ("Nothing", "CFG Scale", "Steps", "Sampler", "Seed", "Prompt S/R")
MAX_CELLS = 64
_RANGE = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?)\s*-\s*([+-]?\d+(?:\.\d*)?)(?:\s*\(([+-]?\d+(?:\.\d*)?)\)|\s*\[(\d+)\])?\s*$")


def parse_values(kind: str, text: str) -> list:
    """The values of one axis, typed: floats for CFG Scale, ints for Steps and Seed, strings otherwise."""
    if kind not in AXES:
        raise ValueError(f"unknown X/Y/Z axis {kind!r}; the axes are {', '.join(AXES)}")
    if kind == "Nothing":
        return [None]
    text = text or ""
    if kind == "Prompt S/R":
        values = [v.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for v in row]
        values = [v for v in values if v]
        if not values:
            raise ValueError("Prompt S/R needs values: the text to search for first, then its replacements")
        return values
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        m = _RANGE.match(item) if kind != "Sampler" else None
        if m:
            lo, hi = float(m[1]), float(m[2])
            if m[4]:
                out += list(np.linspace(lo, hi, int(m[4])))
            else:
                step = float(m[3] or 1) * (1 if hi >= lo else -1)
                out += list(np.arange(lo, hi + step / 2, step))
        else:
            out.append(item)
    if not out:
        raise ValueError(f"the {kind} axis has no values")
    try:
        if kind == "CFG Scale":
            return [float(v) for v in out]
        if kind in ("Steps", "Seed"):
            return [int(float(v)) for v in out]
    except ValueError:
        raise ValueError(f"{kind} values must be numbers, got {text!r}") from None
    return [sampler_name(v) for v in out]


def apply(settings: Settings, kind: str, value, search: str | None) -> Settings:
    if kind == "Nothing":
        return settings
    if kind == "Prompt S/R":
        if search not in settings.prompt and search not in settings.negative_prompt:
            raise ValueError(f"Prompt S/R: {search!r} is not in the prompt")
        return dataclasses.replace(settings, prompt=settings.prompt.replace(search, value),
                                   negative_prompt=settings.negative_prompt.replace(search, value))
    field = {"CFG Scale": "cfg_scale", "Steps": "steps", "Sampler": "sampler_name", "Seed": "seed"}[kind]
    return dataclasses.replace(settings, **{field: value})


class Plot(NamedTuple):
    grid: Image.Image
    images: list  # one per cell, x fastest, then y, then z
    labels: tuple  # (x labels, y labels, z labels)
    infotexts: list

    def describe(self) -> str:
        x, y, z = self.labels
        return f"X/Y/Z plot: {len(x)} x {len(y)} x {len(z)} images\n" + (self.infotexts[0] if self.infotexts else "")


def _label(kind, value) -> str:
    if kind == "Nothing":
        return ""
    return f"{kind}: {value:g}" if isinstance(value, float) else f"{kind}: {value}"


def draw_grid(images: list, xs: list[str], ys: list[str], zs: list[str], cell: int = 64) -> Image.Image:
    """Images (x fastest) scaled to `cell` pixels, in one block per z, with the axes' labels."""
    font = ImageFont.load_default()
    nx, ny, nz = len(xs), len(ys), len(zs)
    left = 8 + 6 * max((len(s) for s in ys), default=0) if any(ys) else 4
    top = 18 if any(xs) else 4
    block_h = top + ny * cell + (14 if any(zs) else 4)
    out = Image.new("RGB", (left + nx * cell + 4, nz * block_h), "white")
    draw = ImageDraw.Draw(out)
    for k, image in enumerate(images):
        i, j, z = k % nx, (k // nx) % ny, k // (nx * ny)
        y0 = z * block_h + top
        out.paste(image.resize((cell, cell), Image.NEAREST), (left + i * cell, y0 + j * cell))
    for z in range(nz):
        for i, text in enumerate(xs):
            draw.text((left + i * cell + 2, z * block_h + 4), text, fill="black", font=font)
        for j, text in enumerate(ys):
            draw.text((4, z * block_h + top + j * cell + cell // 2 - 5), text, fill="black", font=font)
        if zs[z]:
            draw.text((left, z * block_h + top + ny * cell + 2), zs[z], fill="black", font=font)
    return out


def run(job, settings: Settings, x_type="Nothing", x_values="", y_type="Nothing", y_values="",
        z_type="Nothing", z_values="") -> Plot:
    """`job(settings) -> generate.Result` for every cell (its first image); the grid of them all."""
    axes = [(kind, parse_values(kind, values)) for kind, values in
            ((x_type, x_values), (y_type, y_values), (z_type, z_values))]
    cells = 1
    for _, values in axes:
        cells *= len(values)
    if cells > MAX_CELLS:
        raise ValueError(f"the X/Y/Z plot asks for {cells} images; the limit is {MAX_CELLS}")
    searches = [values[0] if kind == "Prompt S/R" else None for kind, values in axes]
    base = dataclasses.replace(settings, batch_size=1, n_iter=1)
    if base.seed == -1:  # one random seed for the whole plot, so only the axes change
        base.seed = resolve_seed(-1)
    images, texts = [], []
    (xk, xv), (yk, yv), (zk, zv) = axes
    for z in zv:
        for y in yv:
            for x in xv:
                s = base
                for (kind, _), value, search in zip(axes, (x, y, z), searches):
                    s = apply(s, kind, value, search)
                result = job(s)
                images.append(result.images[0])
                texts.append(result.infotexts[0])
    labels = tuple([_label(k, v) for v in vs] for k, vs in axes)
    return Plot(draw_grid(images, *labels), images, labels, texts)
