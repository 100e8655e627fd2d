"""Condition images made on the fly from the Shapes generator, the training batch and loss, and IoU.

Two kinds of condition, both white on black, (B, 3, 32, 32) in [0, 1], drawn from the
same signed distance functions that draw the dataset's pictures:

    "outline"  the objects' outlines, a line about one pixel wide (the paper's Fill50K:
               a circle's outline turned into the filled circle in the caption's colour)
    "mask"     the objects' filled silhouettes (a position mask): where to draw, not what

The caption still says the colour and the shape; the condition says where the
object's edge runs. `condition_region` is the region a condition implies (the
dataset renderer's own coverage, > 0.5), `drawn_region` the region a picture draws
(any channel brighter than `DRAWN_THRESHOLD` = 0.45 on the black background), and `iou`
compares them.

Notation: B batch, H = W = 32 pixels, z0 (B, 4, 8, 8), context (B, 77, D_c).
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion_notes.data.shapes import _SDF, IMAGE_SIZE, SIZE_RADII, ShapesDataset, render
from diffusion_notes.data.tokenizer import tokenize
from diffusion_notes.foundations.diffusion import noise_prediction_loss
from diffusion_notes.foundations.guidance import drop_condition
from diffusion_notes.practice.controlnet.model import controlled_eps
from diffusion_notes.rng import step_generator
from diffusion_notes.stable_diffusion.ldm import encode_latents, ldm_schedule

KINDS = ("outline", "mask")
P_UNCOND_CONTROLNET = 0.5  # the paper replaces half of the prompts by "" so the ControlNet learns from c_f alone
P_TWO_OBJECTS = 0.5  # as the latent UNet trained: an edge map of a two-object scene half of the time
DRAWN_THRESHOLD = 0.45  # the background is black; where the renderer covers half a pixel, its brightest channel is about 0.45


def signed_distance(attributes_list: list[dict]) -> torch.Tensor:
    """(B, H, W) signed distance in pixels to the nearest object's edge (negative inside), the renderer's SDFs."""
    grid = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5  # pixel centres, as `render` samples them
    out = np.full((len(attributes_list), IMAGE_SIZE, IMAGE_SIZE), np.inf, dtype=np.float32)  # (B, H, W)
    for b, attrs in enumerate(attributes_list):
        for obj in attrs["objects"]:
            u = grid[None, :] - np.float32(obj["x"])  # (1, W)
            v = np.float32(obj["y"]) - grid[:, None]  # (H, 1), y points up
            sdf = _SDF[obj["shape"]](u, v, np.float32(SIZE_RADII[obj["size"]]))  # (H, W)
            out[b] = np.minimum(out[b], sdf)
    return torch.from_numpy(out)


def make_condition(attributes_list: list[dict], kind: str | list[str] = "outline") -> torch.Tensor:
    """Condition images c_f (B, 3, H, W) in [0, 1] for `kind` ("outline" or "mask"; one kind, or one per image)."""
    kinds = [kind] * len(attributes_list) if isinstance(kind, str) else list(kind)
    if len(kinds) != len(attributes_list) or any(k not in KINDS for k in kinds):
        raise ValueError(f"kind must be one of {KINDS}, or a list of them with one per image; got {kind!r}")
    sdf = signed_distance(attributes_list)  # (B, H, W)
    outline = (1.0 - sdf.abs()).clamp(0, 1)  # 1 on the edge, 0 a pixel away
    mask = (0.5 - sdf).clamp(0, 1)  # the renderer's coverage
    is_mask = torch.tensor([k == "mask" for k in kinds])[:, None, None]  # (B, 1, 1)
    return torch.where(is_mask, mask, outline)[:, None].expand(-1, 3, -1, -1).contiguous()  # (B, 3, H, W)


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
    """Batch `step`'s attributes, captions and condition kinds: a pure function of (step, batch_size, seed)."""
    dataset = ShapesDataset("train", length=10**9, seed=seed, p_two_objects=P_TWO_OBJECTS)
    start = step * batch_size
    attributes = [dataset.attributes(i) for i in range(start, start + batch_size)]
    captions = [dataset.caption(start + k, a) for k, a in enumerate(attributes)]
    pick = torch.rand(batch_size, generator=step_generator(seed, step, stream=3)) < 0.5  # (B,) half masks
    return attributes, captions, [KINDS[int(p)] for p in pick]


@torch.no_grad()
def controlnet_batch(step: int, batch_size: int, seed: int = 0, *, vae, clip, scale_factor: float) -> dict:
    """Training batch `step`: latents z0 (B, 4, 8, 8), token states (B, 77, D_c), conditions (B, 3, H, W)."""
    device = next(vae.parameters()).device
    attributes, captions, kinds = training_items(step, batch_size, seed)
    z0 = encode_latents(vae, render(attributes).to(device), scale_factor, step_generator(seed, step, stream=2))
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
