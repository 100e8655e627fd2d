"""The web UI's "Interrogate CLIP" on the book's own CLIP (Chapter 4): the words CLIP finds in a picture.

The web UI captions a picture with BLIP and then lets CLIP rank lists of words (artists, mediums,
flavours) against it. Our CLIP was trained on the Shapes captions, so its lists are the Shapes
words: every one-object caption ("a small red circle in the top left", 2 sizes x 8 colours x 6
shapes x 9 places = 864 of them) is scored by the cosine of its text embedding with the picture's,
scaled by CLIP's temperature. The caption is the one that scores highest; each attribute's word is
the one whose captions hold the most probability (as Chapter 4's zero-shot classifier reads them).

    interrogate(clip, image)   -> "a small red circle in the top left"
    ranked(clip, image, k=3)   -> [(caption, probability), ...] best first
    words(clip, image)         -> {"colour": ("red", 0.97), "shape": ..., "size": ..., "position": ...}
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from diffusion_notes.data.captions import canonical_caption
from diffusion_notes.unclip.clip_eval import ATTRIBUTE_VALUES, prompt_embeddings

_CACHE: dict[int, tuple[list[dict], list[str], torch.Tensor]] = {}  # id(clip) -> scenes, captions, z_t


def _prompts(clip) -> tuple[list[dict], list[str], torch.Tensor]:
    if id(clip) not in _CACHE:
        scenes, z_t = prompt_embeddings(clip)  # (864, E)
        captions = [canonical_caption({"n_objects": 1, "relation": None, "objects": [s]}) for s in scenes]
        _CACHE.clear()
        _CACHE[id(clip)] = scenes, captions, z_t
    return _CACHE[id(clip)]


def image_tensor(image: Image.Image, size: int = 32) -> torch.Tensor:
    """A PIL picture -> (1, 3, size, size) in [-1, 1], resized with area averaging if it is not size x size."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BOX)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)  # (3, H, W)
    return x[None]


@torch.no_grad()
def probabilities(clip, image: Image.Image) -> torch.Tensor:
    r"""p(caption | picture) over the 864 captions, (864,).

    $$p_j = \operatorname{softmax}_j\left(e^{t}\, z_i \cdot z_{t,j}\right)$$
    """
    _, _, z_t = _prompts(clip)
    z_i = clip.encode_image(image_tensor(image)).cpu()  # (1, E)
    return (float(clip.logit_scale) * z_i @ z_t.T).softmax(dim=-1)[0]


def ranked(clip, image: Image.Image, k: int = 5) -> list[tuple[str, float]]:
    """The k captions CLIP ranks highest for the picture, with their probabilities."""
    _, captions, _ = _prompts(clip)
    p = probabilities(clip, image)
    top = torch.topk(p, min(k, len(p)))
    return [(captions[int(j)], float(v)) for v, j in zip(top.values, top.indices)]


def words(clip, image: Image.Image) -> dict[str, tuple[str, float]]:
    """Each attribute's word and the probability its captions hold together."""
    scenes, _, _ = _prompts(clip)
    p = probabilities(clip, image)
    out = {}
    for attribute, values in ATTRIBUTE_VALUES.items():
        mass = {v: 0.0 for v in values}
        for scene, pj in zip(scenes, p.tolist()):
            mass[scene[attribute]] += pj
        best = max(mass, key=mass.get)
        out[attribute] = (best, mass[best])
    return out


def interrogate(clip, image: Image.Image) -> str:
    """The caption CLIP ranks highest for the picture (POST /sdapi/v1/interrogate, model "clip")."""
    return ranked(clip, image, k=1)[0][0]
