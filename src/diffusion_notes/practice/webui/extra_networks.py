"""The web UI's extra networks: `<lora:name:weight>` in the prompt, and textual-inversion embeddings.

    "a small orange heart on the left <lora:heart_lora:0.8>"
      -> the text encoder reads "a small orange heart on the left"
      -> the UNet draws with heart_lora merged in at 0.8 x (alpha / r)

As in the web UI, a tag is `<kind:name>` or `<kind:name:weight>` (weight 1 if left out),
anywhere in the positive prompt; tags are removed from the text the encoder sees and kept in
the infotext. Only the "lora" kind exists here; an unknown kind or name is an error that lists
what there is. A weight of 0 draws exactly what the prompt without the tag draws.

Embeddings are the web UI's other extra network: a file whose name is the word it teaches.
Here the shipped textual-inversion embeddings are always on, as the web UI's are: the text
encoder gives their words their learnt rows, and every other word reads what it read before.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from safetensors import SafetensorError

from diffusion_notes.practice.finetune.lora_files import LoRANetwork, read_lora
from diffusion_notes.practice.webui.inputs import inside

_TAG = re.compile(r"<(\w+):([^>]+)>")  # the web UI's extra-network pattern


def parse_extra_networks(prompt: str) -> tuple[str, list[tuple[str, str, float]]]:
    """(the prompt without its tags, [(kind, name, weight), ...])."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {prompt!r}")
    tags = []

    def take(match):
        kind, args = match.group(1), match.group(2).split(":")
        name = args[0].strip()
        weight = 1.0
        if len(args) > 1 and args[1].strip():
            try:
                weight = float(args[1])
            except ValueError:
                raise ValueError(f"the weight in {match.group(0)!r} must be a number, got {args[1]!r}") from None
            if not math.isfinite(weight):
                raise ValueError(f"the weight in {match.group(0)!r} must be finite")
        if not name:
            raise ValueError(f"{match.group(0)!r} names no network")
        tags.append((kind, name, weight))
        return ""

    return _TAG.sub(take, prompt), tags


def _read(path: Path, unet) -> LoRANetwork:
    """A LoRA file of the folder, or a ValueError that says why it cannot be used."""
    try:
        return read_lora(path, unet)
    except ValueError as err:  # LoRAFileError: keys or shapes that fit no layer of this UNet
        raise ValueError(f"the LoRA file {path.name} does not fit this model: {err}") from None
    except (SafetensorError, OSError, KeyError, RuntimeError) as err:  # not a safetensors file, or cut short
        raise ValueError(f"the LoRA file {path.name} cannot be read: {type(err).__name__}: {err}") from None


class LoRALibrary:
    """The LoRAs a prompt can name: the shipped ones and the .safetensors files in `folder` (kohya or diffusers)."""

    def __init__(self, unet, shipped: dict[str, LoRANetwork] | None = None, folder=None):
        self.unet, self.shipped = unet, dict(shipped or {})
        self.folder = Path(folder) if folder is not None else None
        self._files: dict[Path, tuple[float, LoRANetwork]] = {}

    def names(self) -> list[str]:
        found = list(self.shipped)
        if self.folder is not None and self.folder.is_dir():
            found += [p.stem for p in sorted(self.folder.glob("*.safetensors")) if p.stem not in self.shipped]
        return found

    def get(self, name: str) -> LoRANetwork:
        if name in self.shipped:
            return self.shipped[name]
        path = inside(self.folder, name, ".safetensors", "a LoRA") if self.folder is not None else None
        if path is None or not path.is_file():
            raise ValueError(f"unknown LoRA {name!r}; the LoRAs are {', '.join(self.names()) or 'none'}")
        mtime = path.stat().st_mtime
        if path not in self._files or self._files[path][0] != mtime:
            self._files[path] = (mtime, _read(path, self.unet))
        return self._files[path][1]

    def error(self, name: str) -> str:
        """Why a LoRA file of the folder cannot be used ("" if it can): its header and tensor names are read."""
        try:
            self.get(name)
        except ValueError as err:
            return str(err)
        return ""

    def api(self) -> list[dict]:
        """GET /sdapi/v1/loras: [{"name", "alias", "path", "metadata"}], and "error" for a file that cannot be read."""
        out = []
        for name in self.names():
            path = "" if name in self.shipped else str(self.folder / f"{name}.safetensors")
            meta = self.shipped[name].metadata if name in self.shipped else {}
            out.append({"name": name, "alias": name, "path": path, "metadata": {k: str(v) for k, v in meta.items()}})
            error = "" if name in self.shipped else self.error(name)
            if error:  # listed, with why it cannot be used
                out[-1]["error"] = error
        return out

    def networks(self, tags: list[tuple[str, str, float]]) -> list[tuple[LoRANetwork, float]]:
        """The (network, weight) pairs of a prompt's tags; a ValueError for an unknown kind or name."""
        out = []
        for kind, name, weight in tags:
            if kind != "lora":
                raise ValueError(f"unknown extra network <{kind}:{name}>; the kinds here are: lora")
            out.append((self.get(name), weight))
        return out
