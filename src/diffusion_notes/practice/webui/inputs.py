"""What the server reads from a client, read so that no input can stop it: images, JSON, names, job sizes.

Each reader either returns what was sent or raises a ValueError that says what is wrong (the API
answers it with a 4xx); none lets a client make the server decode, recurse or compute without bound.

    decode_image(b64, "init_images[0]")   base64 -> PIL image; the pixel count is checked from the header,
                                          before the pixels are decoded (a 65 KB PNG can hold 400 million)
    read_json(body)                       JSON -> Python, at most MAX_JSON_DEPTH arrays and objects deep
    inside(folder, name, ".safetensors")  a file of `folder` named by a client, never one outside it
    check_job_size(settings)              batch x iterations x steps x pixels within MAX_JOB_SIZE
    check_prompt_lengths(settings)        prompts within MAX_PROMPT_LENGTH characters
    await read_body(request, limit)       a request's body, never more than `limit` bytes of it
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_IMAGE_PIXELS = 4096 * 4096  # an uploaded image may be this large; ours are 32 x 32, the web UI's 512 x 512
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # what browsers and scripts send; no format with a helper program
MAX_JSON_DEPTH = 32  # arrays and objects inside each other; the deepest request the API reads is 6
# The largest job: the web UI's largest batch (8 images) and count (100 batches) at its default 20 steps,
# on 32 x 32 pixels. A job's size is batch_size x n_iter x (steps + hires steps) x width x height.
MAX_JOB_SIZE = 8 * 100 * 20 * 32 * 32  # 16,384,000 pixel-steps
MAX_PROMPT_LENGTH = 20_000  # characters in a prompt: some 270 chunks of 75 tokens, far beyond what changes a picture
PROMPTS = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")


class InputError(ValueError):
    """A request the server cannot read at all (not JSON, not base64, too long): the API answers 400.

    Any other ValueError of these readers is a value the server read and refuses: a 422.
    """


def decode_base64(data, what: str) -> bytes:
    """A base64 string, with or without a `data:...;base64,` prefix -> its bytes."""
    if not isinstance(data, str):
        raise InputError(f"{what} must be a base64 string, got {type(data).__name__}")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64") from None


def decode_image(data, what: str) -> Image.Image:
    """A base64 image -> a loaded PIL image; a 4xx error for anything else, or for too many pixels."""
    return read_image(decode_base64(data, what), what)


def read_image(raw: bytes, what: str = "the image") -> Image.Image:
    """An image file's bytes -> a loaded PIL image, its size checked before its pixels are decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower
            image = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)  # reads the header only
    except Image.DecompressionBombError as err:  # Pillow's own limit, twice its MAX_IMAGE_PIXELS
        raise ValueError(f"{what} is too large to decode: {err}") from None
    except Exception as err:  # UnidentifiedImageError, OSError, SyntaxError, ValueError (a text chunk too large), ...
        reason = "" if isinstance(err, UnidentifiedImageError) else f": {type(err).__name__}: {str(err)[:200]}"
        raise ValueError(f"{what} is not an image file PIL can read ({len(raw)} bytes; the formats are "
                         f"{', '.join(IMAGE_FORMATS)}){reason}") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what} is {width}x{height} = {width * height} pixels; "
                         f"the limit is {MAX_IMAGE_PIXELS} (4096x4096)")
    try:
        image.load()
    except Exception as err:  # a truncated or corrupt stream: OSError, SyntaxError, zlib.error, EOFError, ...
        raise ValueError(f"{what} is not an image file PIL can read ({len(raw)} bytes; its data is cut "
                         f"short or corrupt: {type(err).__name__}: {str(err)[:200]})") from None
    return image


async def read_body(request, limit: int) -> bytes:
    """A request's body, read no further than `limit` bytes (the declared length is checked first)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise InputError(f"the request is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(f"the request is more than {limit} bytes; the limit is {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def read_json(raw: bytes):
    """A request body -> its JSON value; a 400 for a body that is not JSON or that nests too deeply."""
    try:
        value = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"the request body is not JSON: {err}") from None
    except RecursionError:  # nested deeper than Python's own recursion limit
        raise InputError(f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} deep") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InputError(f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} deep")
    return value


def json_depth(value) -> int:
    """How many arrays and objects deep a JSON value goes (a number or string is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            depth += 1
            deepest = max(deepest, depth)
            stack += [(child, depth) for child in (node.values() if isinstance(node, dict) else node)]
    return deepest


def inside(folder, name, suffix: str = "", what: str = "a file") -> Path:
    """folder / (name + suffix), where `name` is one file name: a name that would leave the folder is an error."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be named by a non-empty string, got {name!r}")
    bad = any(c in name for c in "/\\\0:") or name in (".", "..") or name.startswith("..")
    folder = Path(folder)
    path = folder / f"{name}{suffix}"
    if bad or path.resolve().parent != folder.resolve():
        raise ValueError(f"{what} is named by a file name in {folder}, without folders or '..'; got {name!r}")
    return path


def job_size(settings) -> int:
    """batch_size x n_iter x (steps + the hires pass's steps at its size) x width x height."""
    pixel_steps = settings.steps * settings.width * settings.height
    if getattr(settings, "enable_hr", False):  # the hires fix draws a second, larger pass
        scale = settings.hr_scale if isinstance(settings.hr_scale, (int, float)) else 1
        width = settings.hr_resize_x or settings.width * scale
        height = settings.hr_resize_y or settings.height * scale
        pixel_steps += (settings.hr_second_pass_steps or settings.steps) * width * height
    return int(settings.batch_size * settings.n_iter * pixel_steps)


def check_prompt_lengths(settings) -> None:
    """A ValueError for a prompt longer than MAX_PROMPT_LENGTH (before it is parsed: its words are encoded
    while the job holds the model)."""
    for name in PROMPTS:
        text = getattr(settings, name, "")
        if isinstance(text, str) and len(text) > MAX_PROMPT_LENGTH:
            raise ValueError(f"{name} is {len(text)} characters long; the limit is {MAX_PROMPT_LENGTH}")


def check_job_size(settings) -> None:
    """A ValueError for a job larger than MAX_JOB_SIZE: it would hold the one model for many minutes."""
    size = job_size(settings)
    if size > MAX_JOB_SIZE:
        raise ValueError(
            f"this job is too large: batch_size x n_iter x steps x width x height = {settings.batch_size} x "
            f"{settings.n_iter} x {settings.steps} x {settings.width} x {settings.height}"
            f"{' (with the hires pass)' if getattr(settings, 'enable_hr', False) else ''} = {size}, "
            f"above the limit of {MAX_JOB_SIZE}; draw it as several jobs")

