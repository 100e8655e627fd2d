"""Condition images made on the fly from the Shapes generator, the training batch and loss, and IoU.

Three kinds of condition, all white on black, (B, 3, 32, 32) in [0, 1]:

    "outline"  the objects' outlines, a line about one pixel wide, from the signed distance
               functions that draw the dataset's pictures (the ControlNet repository's
               tutorial set, Fill50K, turns circle outlines into filled circles)
    "mask"     the objects' filled silhouettes (a position mask): where to draw, not what
    "canny"    Canny's edges (skimage.feature.canny) of the rendered picture, what the web
               UI's "canny" preprocessor hands a ControlNet

The training scenes and captions come from `scenes.py`: half of the scenes moved anywhere at any
radius, captions that name no position, the same cells or other cells, so that only the
condition says where. `condition_region` is the region a condition implies (the renderer's
coverage, > 0.5), `drawn_region` the region a picture draws (any channel brighter than
`DRAWN_THRESHOLD` = 0.45 on the black background), and `iou` compares them.

Notation: B batch, H = W = 32 pixels, z0 (B, 4, 8, 8), context (B, 77, D_c).
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion_notes.data.shapes import IMAGE_SIZE, ShapesDataset
from diffusion_notes.data.tokenizer import tokenize
from diffusion_notes.foundations.diffusion import noise_prediction_loss
from diffusion_notes.foundations.guidance import drop_condition
from diffusion_notes.practice.controlnet.model import controlled_eps
from diffusion_notes.practice.controlnet.scenes import CAPTION_KINDS, move, object_sdf, render_scene, scene_caption
from diffusion_notes.rng import step_generator
from diffusion_notes.stable_diffusion.ldm import encode_latents, ldm_schedule

KINDS = ("outline", "mask", "canny")
CANNY_SIGMA = 0.5  # the Gaussian blur before Canny's gradients, pixels: more rounds a 32x32 cross into a blob
P_UNCOND_CONTROLNET = 0.5  # the paper replaces half of the prompts by "" so the ControlNet learns from c_f alone
P_MOVED = 0.5  # half of the scenes anywhere at any size, half at the dataset's places and sizes
P_TWO_OBJECTS = 0.5  # as the latent UNet trained: an edge map of a two-object scene half of the time
DRAWN_THRESHOLD = 0.45  # the background is black; where the renderer covers half a pixel, its brightest channel is about 0.45


def signed_distance(attributes_list: list[dict]) -> torch.Tensor:
    """(B, H, W) signed distance in pixels to the nearest object's edge (negative inside), the renderer's SDFs."""
    out = np.full((len(attributes_list), IMAGE_SIZE, IMAGE_SIZE), np.inf, dtype=np.float32)  # (B, H, W)
    for b, attrs in enumerate(attributes_list):
        for obj in attrs["objects"]:
            out[b] = np.minimum(out[b], object_sdf(obj))  # each object at its own radius (scenes.radius_of)
    return torch.from_numpy(out)


def canny_edges(pictures: torch.Tensor, sigma: float = CANNY_SIGMA) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1]: Canny's edges (skimage.feature.canny) of each picture's brightest channel.

    pictures: (B, 3, H, W) in [0, 1], objects on a dark background, as the web UI's "canny" preprocessor reads them.
    """
    if not torch.is_tensor(pictures) or pictures.ndim != 4 or pictures.shape[1] != 3:
        raise ValueError(f"canny_edges takes pictures (B, 3, H, W) in [0, 1], got {getattr(pictures, 'shape', pictures)}")
    grey = pictures.amax(dim=1).double().numpy()  # (B, H, W)
    from skimage.feature import canny  # scikit-image: the webui extra; imported here so training loads without it

    edges = np.stack([canny(g, sigma=sigma) for g in grey]).astype(np.float32)  # (B, H, W) 0 or 1
    return torch.from_numpy(edges)[:, None].expand(-1, 3, -1, -1).contiguous()


def make_condition(attributes_list: list[dict], kind: str | list[str] = "outline") -> torch.Tensor:
    """Condition images c_f (B, 3, H, W) in [0, 1] for `kind` (one of KINDS, or a list with one per image).

    "outline" and "mask" come from the scene's signed distance; "canny" from its rendered picture.
    """
    kinds = [kind] * len(attributes_list) if isinstance(kind, str) else list(kind)
    if len(kinds) != len(attributes_list) or any(k not in KINDS for k in kinds):
        raise ValueError(f"kind must be one of {KINDS}, or a list of them with one per image; got {kind!r}")
    sdf = signed_distance(attributes_list)  # (B, H, W)
    outline = (1.0 - sdf.abs()).clamp(0, 1)  # 1 on the edge, 0 a pixel away
    mask = (0.5 - sdf).clamp(0, 1)  # the renderer's coverage
    is_mask = torch.tensor([k == "mask" for k in kinds])[:, None, None]  # (B, 1, 1)
    out = torch.where(is_mask, mask, outline)[:, None].expand(-1, 3, -1, -1).contiguous()  # (B, 3, H, W)
    edged = [i for i, k in enumerate(kinds) if k == "canny"]
    if edged:
        out[edged] = canny_edges((render_scene([attributes_list[i] for i in edged]) + 1) / 2)
    return out


def condition_region(attributes_list: list[dict]) -> torch.Tensor:
    """(B, H, W) bool: the pixels the condition says an object covers (the renderer's coverage > 0.5)."""
    return signed_distance(attributes_list) < 0


def drawn_region(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: the pixels a picture (B, 3, H, W) in [0, 1] draws an object on (max channel > DRAWN_THRESHOLD)."""
    return images.amax(dim=1) > DRAWN_THRESHOLD


def iou(drawn: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Intersection over union per image, (B,): $|A \cap B| / |A \cup B|$ of two (B, H, W) bool masks (1 if both empty)."""
    inter = (drawn & target).flatten(1).sum(1).float()  # (B,)
    union = (drawn | target).flatten(1).sum(1).float()  # (B,)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def training_items(step: int, batch_size: int, seed: int = 0) -> tuple[list[dict], list[str], list[str]]:
    """Batch `step`'s attributes, captions and condition kinds: a pure function of (step, batch_size, seed).

    Each item is a training-split scene (two objects half of the time), moved anywhere at any radius with
    probability P_MOVED (`scenes.move`); its caption names no position, its own cells or other cells (a third
    each; an unmoved scene's "same" caption is the dataset's own); its condition is an outline, a mask or the
    Canny edges of its picture (a third each).
    """
    dataset = ShapesDataset("train", length=10**9, seed=seed, p_two_objects=P_TWO_OBJECTS)
    rng = np.random.default_rng([seed, step, batch_size, 31])
    attributes, captions, kinds = [], [], []
    for i in range(step * batch_size, (step + 1) * batch_size):
        scene = dataset.attributes(i)
        moved = rng.random() < P_MOVED
        scene = move(scene, rng) if moved else scene
        caption_kind = CAPTION_KINDS[int(rng.integers(len(CAPTION_KINDS)))]
        same_as_dataset = caption_kind == "same" and not moved
        captions.append(dataset.caption(i, scene) if same_as_dataset else scene_caption(scene, caption_kind, rng))
        attributes.append(scene)
        kinds.append(KINDS[int(rng.integers(len(KINDS)))])
    return attributes, captions, kinds


@torch.no_grad()
def controlnet_batch(step: int, batch_size: int, seed: int = 0, *, vae, clip, scale_factor: float) -> dict:
    """Training batch `step`: latents z0 (B, 4, 8, 8), token states (B, 77, D_c), conditions (B, 3, H, W)."""
    device = next(vae.parameters()).device
    attributes, captions, kinds = training_items(step, batch_size, seed)
    z0 = encode_latents(vae, render_scene(attributes).to(device), scale_factor, step_generator(seed, step, stream=2))
    return {"z0": z0, "context": clip.encode_text(tokenize(captions)).token_states,
            "condition": make_condition(attributes, kinds).to(device)}


def controlnet_loss(controlnet, batch: dict, generator: torch.Generator | None = None, *, unet, null: torch.Tensor,
                    p_uncond: float = P_UNCOND_CONTROLNET) -> torch.Tensor:
    r"""The LDM loss of the controlled UNet; only the ControlNet learns, the caption is dropped with probability p_uncond.

    $$L = \mathbb E_{z_0, t, c_t, c_f, \epsilon}\left[\left\|\epsilon
      - \epsilon_\theta(z_t, t, c_t, c_f)\right\|^2\right]$$

    Book: eq-controlnet-loss
    Paper: Zhang et al. 2023, eq. 3
    """
    device = next(controlnet.parameters()).device
    context = drop_condition(batch["context"].to(device), p_uncond, null.to(device), generator)  # (B, 77, D_c)

    def eps_model(x_t, t, cond):
        return controlled_eps(unet, controlnet, x_t, t, cond["context"], cond["condition"])

    return noise_prediction_loss(eps_model, batch["z0"].to(device), ldm_schedule(), generator=generator,
                                 cond={"context": context, "condition": batch["condition"].to(device)})
