"""How well the tiny CLIP matches pictures and words: zero-shot accuracy and retrieval recall.

* Zero-shot classification (Radford et al. 2021, section 3.1): to classify one
  attribute, say colour, write captions for every class and pick the class whose
  captions match the image best. The prompts are the 864 canonical captions of
  every one-object scene (6 shapes x 8 colours x 2 sizes x 9 positions), worded
  like training captions, so the text encoder is never asked about sentences it
  never saw. We ensemble the prompts of a class in probability space: with the
  model's temperature, softmax over all 864 prompts gives p(prompt | image), and
  p(red | image) is the sum over the 108 prompts that say "red". (Averaging the
  class's prompt *embeddings*, the paper's ensembling in section 3.1.4, works
  badly here: "a small red circle in the top left" and "a large red star at the
  bottom" are far apart, and their mean mostly says "red" weakly. We measured
  60% shape accuracy that way against 90% with the sum of probabilities.)
* Text-to-image retrieval: for each of n captions, rank the n images by cosine
  similarity. recall@k is the fraction of captions whose own image is among the
  top k. Many Shapes images share all their attributes (they differ only by a
  pixel of jitter), so recall@1 has a ceiling below 1; match@1, the fraction
  whose top image has exactly the caption's attributes, measures what the
  caption can actually tell apart.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from diffusion_notes.data.captions import canonical_caption
from diffusion_notes.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, ShapesDataset, render

ATTRIBUTE_VALUES = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "position": POSITIONS}


@torch.no_grad()
def _encode_images(model, attributes: list[dict], batch_size: int = 500) -> torch.Tensor:
    return torch.cat([model.encode_image(render(attributes[i:i + batch_size]))
                      for i in range(0, len(attributes), batch_size)]).cpu()  # (N, E)


@torch.no_grad()
def _encode_texts(model, texts: list[str], batch_size: int = 500) -> torch.Tensor:
    return torch.cat([model.encode_text(texts[i:i + batch_size]).z_t
                      for i in range(0, len(texts), batch_size)]).cpu()  # (N, E)


def prompt_embeddings(model) -> tuple[list[dict], torch.Tensor]:
    """The 864 one-object scenes ({"colour", "shape", "size", "position"}) and the z_t (864, E)
    of their canonical captions."""
    scenes = [dict(zip(ATTRIBUTE_VALUES, values)) for values in itertools.product(*ATTRIBUTE_VALUES.values())]
    prompts = [canonical_caption({"n_objects": 1, "relation": None, "objects": [scene]}) for scene in scenes]
    return scenes, _encode_texts(model, prompts)


def class_probabilities(z_i: torch.Tensor, z_t: torch.Tensor, labels: torch.Tensor,
                        logit_scale: float) -> torch.Tensor:
    """p(class | image) = sum of softmax(logit_scale * z_i . z_t) over the prompts of each class.

    z_i (N, E) and z_t (P, E) unit vectors; labels (P,) the class of each prompt.
    Returns (N, K) with K = labels.max() + 1; rows sum to 1.
    """
    p_prompt = (logit_scale * z_i @ z_t.T).softmax(dim=-1)  # (N, P)
    one_hot = F.one_hot(labels, int(labels.max()) + 1).to(p_prompt)  # (P, K)
    return p_prompt @ one_hot  # (N, K)


def _one_object_items(dataset: ShapesDataset, n: int) -> list[dict]:
    """Attributes of the first n one-object items of the dataset."""
    items = []
    for i in range(len(dataset)):
        attributes = dataset.attributes(i)
        if attributes["n_objects"] == 1:
            items.append(attributes)
            if len(items) == n:
                return items
    raise ValueError(f"the dataset has only {len(items)} one-object items, fewer than n={n}")


def zero_shot_accuracy(model, dataset: ShapesDataset, n: int = 1000,
                       attributes=("colour", "shape", "size", "position")) -> dict[str, float]:
    """Zero-shot accuracy per attribute on the first n one-object images of `dataset`."""
    unknown = set(attributes) - set(ATTRIBUTE_VALUES)
    if unknown:
        raise ValueError(f"attributes must be among {tuple(ATTRIBUTE_VALUES)}, got {sorted(unknown)}")
    items = _one_object_items(dataset, n)
    z_i = _encode_images(model, items)  # (n, E)
    scenes, z_t = prompt_embeddings(model)
    with torch.no_grad():
        logit_scale = float(model.logit_scale)
    accuracy = {}
    for attribute in attributes:
        values = ATTRIBUTE_VALUES[attribute]
        labels = torch.tensor([values.index(scene[attribute]) for scene in scenes])  # (864,)
        truth = torch.tensor([values.index(a["objects"][0][attribute]) for a in items])  # (n,)
        predicted = class_probabilities(z_i, z_t, labels, logit_scale).argmax(dim=-1)  # (n,)
        accuracy[attribute] = (predicted == truth).float().mean().item()
    return accuracy


def retrieval_recall(model, dataset: ShapesDataset, n: int = 1000, ks=(1, 5)) -> dict[str, float]:
    """Text-to-image recall@k over the first n (image, caption) pairs, and match@1."""
    if not 1 <= n <= len(dataset):
        raise ValueError(f"n must be between 1 and len(dataset) = {len(dataset)}, got {n}")
    items = [dataset.attributes(i) for i in range(n)]
    captions = [dataset.caption(i, a) for i, a in enumerate(items)]
    similarity = _encode_texts(model, captions) @ _encode_images(model, items).T  # (n texts, n images)
    own = similarity.diagonal()[:, None]  # (n, 1)
    rank = (similarity > own).sum(dim=-1)  # (n,) images scored above the right one
    out = {f"recall@{k}": (rank < k).float().mean().item() for k in ks}
    top = similarity.argmax(dim=-1).tolist()
    names = [canonical_caption(a) for a in items]
    out["match@1"] = sum(names[t] == names[i] for i, t in enumerate(top)) / n
    return out


def evaluate_clip(model, n: int = 1000) -> dict:
    """Zero-shot accuracy and retrieval on unseen images of seen combinations
    (ShapesDataset("train", seed=1)) and on held-out colour-shape combinations
    (ShapesDataset("heldout"), keys prefixed "heldout_"), plus the parameter count."""
    was_training = model.training
    model.eval()
    metrics = {"parameters": sum(p.numel() for p in model.parameters())}
    for prefix, split, seed in (("", "train", 1), ("heldout_", "heldout", 0)):
        dataset = ShapesDataset(split, length=10 * n, seed=seed)
        for name, value in zero_shot_accuracy(model, dataset, n).items():
            metrics[f"{prefix}zero_shot_{name}"] = value
        for name, value in retrieval_recall(model, dataset, n).items():
            metrics[f"{prefix}{name}"] = value
    model.train(was_training)
    return metrics
