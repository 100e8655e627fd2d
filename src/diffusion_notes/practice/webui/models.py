"""The checkpoints the web UI offers: the shipped UNet and every `.safetensors` in the user's folder.

A checkpoint here is a latent-diffusion UNet in the library's checkpoint format (`run_files.py`:
tensors named as the state dict, JSON metadata with `recipe: "ldm_unet"` and its config), the
format `train` writes and `ship` copies. The text encoder and the autoencoder are the shipped ones
for every checkpoint, so a checkpoint swaps only the UNet (merged and fine-tuned files change only
the UNet). Each is listed as the web UI lists it: title "name.safetensors [hash]", where the hash is
the first 10 hex digits of the file's sha256.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusion_notes.nn.unet import UNet, UNetConfig
from diffusion_notes.run_files import config_from_dict, load_checkpoint, model_hash, read_metadata, sha256
from diffusion_notes.stable_diffusion.pipeline import LatentDiffusionPipeline

RECIPE = "ldm_unet"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    model_name: str  # the file name without .safetensors
    hash: str  # 10 hex digits
    sha256: str
    error: str = ""  # why the file cannot be used, if it cannot ("" for a checkpoint read without trouble)

    @property
    def title(self) -> str:
        return f"{self.path.name} [{self.hash}]"

    def api(self) -> dict:
        return {"title": self.title, "model_name": self.model_name, "hash": self.hash, "sha256": self.sha256,
                "filename": str(self.path), "config": None, **({"error": self.error} if self.error else {})}


def checkpoint_info(path, check: bool = False) -> CheckpointInfo:
    """A file's name and hashes; with `check`, also why its header is not a UNet checkpoint's, if it is not."""
    path = Path(path)
    try:
        hashes = model_hash(path), sha256(path)
    except OSError as err:  # a file that cannot be read at all (permissions, gone since it was listed)
        if not check:
            raise
        return CheckpointInfo(path, path.stem, "", "", f"{path.name} cannot be read: {err.strerror or err}")
    return CheckpointInfo(path, path.stem, *hashes, _header_error(path) if check else "")


def _header_error(path: Path) -> str:
    try:
        _unet_config(path)
    except ValueError as err:
        return str(err)
    return ""


def _unet_config(path: Path) -> dict:
    try:
        meta = read_metadata(path)
    except Exception as err:  # safetensors' own error for a file that is not one, OSError, ValueError
        raise ValueError(f"{path.name} is not a checkpoint of this library: {err}") from None
    if meta.get("recipe") != RECIPE or "config" not in meta:
        raise ValueError(f"{path.name} holds a {meta.get('recipe')!r} model, not a latent-diffusion UNet ({RECIPE!r})")
    return meta["config"]


def read_unet(path, device="cpu") -> UNet:
    """The UNet stored in a checkpoint file, or a ValueError that says why the file is not one."""
    path = Path(path)
    unet = UNet(config_from_dict(UNetConfig, _unet_config(path), source=f"{path.name}'s config"))
    try:
        tensors, _ = load_checkpoint(path, device)
    except Exception as err:  # SafetensorError for tensors cut short or corrupt, OSError
        raise ValueError(f"{path.name}'s tensors cannot be read: {err}") from None
    try:
        unet.load_state_dict(tensors)
    except RuntimeError as err:
        raise ValueError(f"{path.name} does not fit its own config: {str(err)[:300]}") from None
    return unet.float().to(device).eval()


class ModelRegistry:
    """The shipped pipeline's UNet file plus the user's folder; `pipeline(title)` swaps the UNet in."""

    def __init__(self, pipe: LatentDiffusionPipeline, shipped_unet_path, models_dir=None):
        self.base = pipe
        self.shipped = checkpoint_info(shipped_unet_path)
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.current = self.shipped
        self._pipes = {self.shipped.path: pipe}
        self.refresh()

    def refresh(self) -> list[CheckpointInfo]:
        found = [self.shipped]
        if self.models_dir is not None and self.models_dir.is_dir():
            found += [checkpoint_info(p, check=True) for p in sorted(self.models_dir.glob("*.safetensors"))
                      if p.resolve() != self.shipped.path.resolve()]
        self.checkpoints = found
        return found

    def titles(self) -> list[str]:
        return [c.title for c in self.checkpoints]

    def find(self, name: str) -> CheckpointInfo:
        """A checkpoint by title, file name, model name or hash (as the web UI matches them)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a checkpoint name must be a non-empty string, got {name!r}")
        for refresh in (False, True):
            if refresh:
                self.refresh()
            for c in self.checkpoints:
                if name in (c.title, c.path.name, c.model_name, c.hash, c.sha256):
                    return c
        raise ValueError(f"unknown checkpoint {name!r}; the checkpoints are {', '.join(self.titles())}")

    def pipeline(self, name: str | None = None) -> tuple[LatentDiffusionPipeline, CheckpointInfo]:
        info = self.current if name is None else self.find(name)
        if info.path not in self._pipes:
            base = self.base
            unet = read_unet(info.path, base.device)
            self._pipes = {self.shipped.path: base, info.path: LatentDiffusionPipeline(
                unet, base.vae, base.clip, base.scale_factor, base.schedule)}  # keep one user model loaded
        return self._pipes[info.path], info

    def select(self, name: str) -> CheckpointInfo:
        self.pipeline(name)
        self.current = self.find(name)
        return self.current
