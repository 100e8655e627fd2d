"""Real open_clip models behind the tiny CLIP's interface.

A reader who has downloaded real CLIP weights can swap them in for our tiny model:
:func:`load_open_clip` returns an :class:`OpenCLIPBridge` with the same
``encode_text(texts) -> TextEncoding(z_t, token_states)`` and
``encode_image(images in [-1, 1]) -> z_i``. It never downloads anything: if the
weights are not on disk it says where it looked and how to get them.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_notes.data.shapes import check_images
from diffusion_notes.data.tokenizer import tokenize
from diffusion_notes.unclip.clip import TextEncoding

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class OpenCLIPBridge(nn.Module):
    """Wrap an open_clip ``CLIP`` model (the standard text tower) in our interface."""

    def __init__(self, model: nn.Module, mean=None, std=None):
        super().__init__()
        for name in ("token_embedding", "positional_embedding", "transformer", "ln_final", "visual"):
            if not hasattr(model, name):
                raise TypeError(f"OpenCLIPBridge needs an open_clip CLIP model with a built-in text tower "
                                f"(open_clip.CLIP); {type(model).__name__} has no attribute {name!r}")
        self.model = model.eval()
        preprocess = getattr(model.visual, "preprocess_cfg", None) or {}
        size = model.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.register_buffer("mean", torch.tensor(mean or preprocess.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std or preprocess.get("std", OPENAI_STD)).view(1, 3, 1, 1))

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(t), the model's learned inverse temperature."""
        return self.model.logit_scale.exp()

    def encode_text(self, texts_or_ids, normalize: bool = True, allow_empty: bool = False) -> TextEncoding:
        """z_t (B, E) and the token states (B, 77, D) after ln_final, before pooling."""
        m = self.model
        ids = texts_or_ids if isinstance(texts_or_ids, torch.Tensor) else tokenize(texts_or_ids, allow_empty)
        ids = ids.to(m.positional_embedding.device)
        x = m.token_embedding(ids) + m.positional_embedding  # (B, 77, D)
        states = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))  # (B, 77, D)
        pooled = states[torch.arange(len(ids), device=ids.device), ids.argmax(dim=-1)]  # (B, D)
        projection = m.text_projection
        z_t = projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection  # (B, E)
        return TextEncoding(F.normalize(z_t, dim=-1) if normalize else z_t, states)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1], any size: resized to the model's input and normalised."""
        x = (check_images(images, size=None).to(self.mean.device) + 1) / 2  # (B, 3, H, W) in [0, 1]
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False).clamp(0, 1)
        return self.model.encode_image((x - self.mean) / self.std, normalize=normalize)  # (B, E)


def _find_weights(model_name: str, tag: str, cache_dir: str | None) -> str:
    """Path of the cached weights of an open_clip pretrained tag, or FileNotFoundError."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        raise ValueError(f"{tag!r} is neither a file nor a pretrained tag of {model_name!r}; "
                         f"its tags are {open_clip.list_pretrained_tags_by_model(model_name)}")
    looked = []
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename.endswith(".safetensors") else [*HF_WEIGHT_FILES, filename]
        for name in dict.fromkeys(n for n in names if n):
            path = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(path, str) and os.path.isfile(path):
                return path
            looked.append(f"the Hugging Face cache ({cache_dir or 'HF_HUB_CACHE'}) for {repo_id}/{name}")
    if cfg.get("url"):
        path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        if os.path.isfile(path):
            return path
        looked.append(path)
    raise FileNotFoundError(
        f"no weights for open_clip {model_name!r} / {tag!r} on this machine; looked in: "
        + "; ".join(looked)
        + f". Download them once with open_clip.create_model({model_name!r}, pretrained={tag!r}) "
        "on a machine with internet access (it fills the caches above), or pass pretrained= the "
        "path of a weights file. diffusion_notes never downloads weights.")


def load_open_clip(model_name: str = "ViT-B-32", pretrained: str | None = None,
                   cache_dir: str | None = None) -> OpenCLIPBridge:
    """A real open_clip model with our encode_text / encode_image interface.

    pretrained: an open_clip tag ("openai", "laion2b_s34b_b79k", ...) whose weights are
    already cached, the path of a weights file, or None for random weights (tests).
    Raises FileNotFoundError, saying where it looked, when the weights are not on disk.
    """
    import open_clip

    kwargs = {}
    if pretrained is None:
        warnings.warn(f"building open_clip {model_name!r} with random weights (pretrained=None)", stacklevel=2)
    elif os.path.isfile(pretrained):
        kwargs["pretrained"] = pretrained
    else:
        cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        kwargs["pretrained"] = _find_weights(model_name, pretrained, cache_dir)
        kwargs["force_quick_gelu"] = bool(cfg.get("quick_gelu", False))
        kwargs["force_preprocess_cfg"] = {k: cfg[k] for k in ("mean", "std") if k in cfg}
    model = open_clip.create_model(model_name, **kwargs)
    return OpenCLIPBridge(model)
