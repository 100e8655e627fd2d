"""The web UI's extra networks: `<lora:name:weight>` in the prompt, and textual-inversion embeddings.

    "a small orange heart on the left <lora:heart_lora:0.8>"
      -> the text encoder reads "a small orange heart on the left"
      -> the UNet draws with heart_lora merged in at 0.8 x (alpha / r)

As in the web UI, a tag is `<kind:name>`, `<kind:name:te>` or `<kind:name:te:unet>`, anywhere in
the positive prompt; the multipliers may also be named (`<lora:name:unet=0.5>`). The text-encoder
multiplier `te` is 1 if left out and the UNet multiplier `unet` is `te` if left out. A LoRA here
adapts the UNet only (a file with text-encoder layers is refused when read), so `unet` is the
weight it is merged in at and `te` has no layer to scale. Tags are removed from the text the
encoder sees and kept in the infotext, with each LoRA's short hash ("Lora hashes"). Only the
"lora" kind exists here; an unknown kind or name is an error that lists what there is. A weight
of 0 draws exactly what the prompt without the tag draws.

Embeddings are the web UI's other extra network: a file whose name is the word it teaches.
Here the shipped textual-inversion embeddings are always on, as the web UI's are: the text
encoder gives their words their learnt rows, and every other word reads what it read before.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import save

from diffusion_notes.practice.finetune.lora_files import LoRANetwork, read_lora, to_kohya
from diffusion_notes.practice.webui.inputs import inside

_TAG = re.compile(r"<(\w+):([^>]+)>")  # the web UI's extra-network pattern


def _number(tag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"the weight in {tag!r} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"the weight in {tag!r} must be finite")
    return value


def multipliers(tag: str, args: list[str]) -> tuple[float, float]:
    """(te, unet) of a tag's arguments after the name: positional te and unet, or te=... and unet=...

    te is 1 if left out, unet is te if left out (the web UI's Lora extension). `dyn=` (a rank cut)
    is refused: these LoRAs are merged whole.
    """
    positional, named = [], {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq:
            named[key.strip()] = value
        elif arg.strip():
            positional.append(arg)
    if "dyn" in named or len(positional) > 2:
        raise ValueError(f"{tag!r}: a rank cut (dyn) is not supported here; write <lora:name:te:unet>")
    unknown = set(named) - {"te", "unet"}
    if unknown:
        raise ValueError(f"{tag!r}: unknown multiplier {sorted(unknown)[0]!r}; the multipliers are te and unet")
    te = _number(tag, named.get("te", positional[0] if positional else "1"))
    unet = named.get("unet", positional[1] if len(positional) > 1 else None)
    return te, te if unet is None else _number(tag, unet)


def parse_extra_networks(prompt: str) -> tuple[str, list[tuple[str, str, float]]]:
    """(the prompt without its tags, [(kind, name, UNet weight), ...]); `parse_tags` also gives te."""
    text, tags = parse_tags(prompt)
    return text, [(kind, name, unet) for kind, name, _, unet in tags]


def parse_tags(prompt: str) -> tuple[str, list[tuple[str, str, float, float]]]:
    """(the prompt without its tags, [(kind, name, te, unet), ...])."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {prompt!r}")
    tags = []

    def take(match):
        kind, args = match.group(1), match.group(2).split(":")
        name = args[0].strip()
        if not name:
            raise ValueError(f"{match.group(0)!r} names no network")
        tags.append((kind, name, *multipliers(match.group(0), args[1:])))
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

    def shorthash(self, name: str) -> str:
        """The LoRA's short hash for the infotext's "Lora hashes": 12 hex digits of the sha256 of its tensor data.

        As the web UI hashes a .safetensors LoRA (kohya's "addnet" hash): the bytes after the header,
        so metadata does not count. A shipped LoRA is hashed as its kohya file would be, so it and a
        kohya copy of it in the folder have the same hash.
        """
        if name in self.shipped:
            return addnet_hash(io.BytesIO(save(to_kohya(self.shipped[name], self.unet))))[:12]
        self.get(name)  # a ValueError for a name that is not there
        with open(self.folder / f"{name}.safetensors", "rb") as file:
            return addnet_hash(file)[:12]

    def hashes(self, tags) -> str:
        """The infotext's "Lora hashes" of a prompt's LoRA tags: "name: shorthash, ..." (names without ":" and ",")."""
        seen = {}
        for kind, name, *_ in tags:
            if kind == "lora":
                seen.setdefault(name.replace(":", "").replace(",", ""), self.shorthash(name))
        return ", ".join(f"{name}: {h}" for name, h in seen.items())

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


def addnet_hash(file) -> str:
    """sha256 of a .safetensors file's bytes after its header (8 bytes of header length, then the JSON header)."""
    file.seek(0)
    file.seek(8 + int.from_bytes(file.read(8), "little"))
    digest = hashlib.sha256()
    for block in iter(lambda: file.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()
