"""What a checkpoint file is: a safetensors header beside its bytes, a pickle's instructions, half precision.

A safetensors file is three things in a row:

    8 bytes      N, the header's length (a little-endian unsigned 64-bit integer)
    N bytes      JSON: {"name": {"dtype": "F32", "shape": [64, 4, 3, 3], "data_offsets": [start, end]}, ...,
                        "__metadata__": {"key": "text", ...}}
    the rest     the tensors' raw bytes, back to back; data_offsets count from the end of the header

so reading the names, dtypes and shapes needs only the header, and loading a tensor is
copying bytes. Nothing in the file is run. A `.ckpt` (torch.save) file is a zip holding a
pickle: a small program for Python's unpickler, whose GLOBAL and REDUCE instructions import
any function by name and call it. torch's own checkpoints call only torch's tensor-rebuilding
functions, but the format lets a file call anything (`os.system` too) the moment it is loaded;
`pickle_imports` lists what a pickle would import, without running it.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import struct
from pathlib import Path
from typing import NamedTuple

import torch

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class TensorEntry(NamedTuple):
    name: str
    dtype: str  # safetensors' name: F32, F16, BF16, I64, ...
    shape: tuple[int, ...]
    start: int  # byte offsets into the data section (after the header)
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class Header(NamedTuple):
    header_bytes: int  # N, the JSON's length
    metadata: dict  # the "__metadata__" strings
    tensors: list[TensorEntry]  # in file order (by offset)

    @property
    def data_bytes(self) -> int:
        return max((t.end for t in self.tensors), default=0)

    def parameters(self, prefix: str = "") -> int:
        """Numbers stored under names starting with `prefix`."""
        return sum(t.numel for t in self.tensors if t.name.startswith(prefix))


def read_header(path) -> Header:
    """The header of a safetensors file, read by hand: its 8-byte length, then the JSON; no tensor is read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file: it has fewer than 8 bytes")
        (n,) = struct.unpack("<Q", head)  # little-endian unsigned 64-bit
        if n > path.stat().st_size - 8:
            raise ValueError(f"{path} is not a safetensors file: its first 8 bytes announce a {n}-byte header "
                             f"in a {path.stat().st_size}-byte file (a .ckpt pickle starts with a zip signature, PK)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path} is not a safetensors file: its header is not JSON") from None
    metadata = header.pop("__metadata__", {}) or {}
    tensors = [TensorEntry(name, v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for name, v in header.items()]
    for t in tensors:
        if t.end - t.start != t.numel * DTYPE_BYTES.get(t.dtype, 0):
            raise ValueError(f"{path}: {t.name} holds {t.end - t.start} bytes for a {t.dtype} tensor of shape {t.shape}")
    return Header(n, metadata, sorted(tensors, key=lambda t: t.start))


def read_tensor(path, entry: TensorEntry) -> torch.Tensor:
    """One tensor read from its offsets alone (what safetensors does, without its library)."""
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
              "I32": torch.int32, "F64": torch.float64, "U8": torch.uint8, "BOOL": torch.bool}
    header = read_header(path)
    with open(path, "rb") as f:
        f.seek(8 + header.header_bytes + entry.start)
        data = bytearray(f.read(entry.end - entry.start))
    return torch.frombuffer(data, dtype=dtypes[entry.dtype]).reshape(entry.shape)


def pickle_imports(data: bytes) -> list[str]:
    """The "module name" pairs a pickle would import when loaded (GLOBAL and STACK_GLOBAL), read without loading it."""
    imports, strings = [], []
    for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(arg)
        elif opcode.name == "GLOBAL":
            imports.append(arg.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":
            imports.append(f"{strings[-2]}.{strings[-1]}")
    return imports


class _Calls:
    """An object whose pickle says: import `function` and call it with `args` (what pickle's __reduce__ allows)."""

    def __init__(self, function, args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def call_on_load_pickle(function=print, args=("this ran when the file was loaded",)) -> bytes:
    """A pickle that calls `function(*args)` when loaded. Made to be read (`pickletools.dis`), never loaded here."""
    return pickle.dumps(_Calls(function, args), protocol=4)


def torch_save_imports(tensors: dict[str, torch.Tensor]) -> list[str]:
    """What torch.save's pickle of a state dict imports when loaded (the rebuild functions it calls)."""
    import zipfile

    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        return sorted(set(pickle_imports(archive.read(name))))


def half(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every floating tensor in float16 (what a web UI's "fp16" checkpoint stores); other tensors unchanged."""
    return {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}


def largest_half_error(tensors: dict[str, torch.Tensor]) -> float:
    """The largest relative change float16 storage makes to a weight, over all floating tensors (about 2^-11)."""
    worst = 0.0
    for v in tensors.values():
        if v.is_floating_point():
            v = v.float()
            back = v.half().float()
            nonzero = v.abs() > 1e-4
            if nonzero.any():
                worst = max(worst, float(((back - v).abs()[nonzero] / v.abs()[nonzero]).max()))
    return worst


# Parameter counts of the released models, part by part (diffusers' folders of each release).
RELEASED_PARAMETERS = {
    "SD 1.5": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "SD 2.1": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "SDXL 1.0": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480 + 694_659_840},
}
