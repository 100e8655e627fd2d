"""How the API reads a request and answers: bodies as JSON or a model, base64 images, the web UI's error body.

    await answer(request, Txt2ImgRequest, work)   # parse, run `work` in a thread, answer JSON or a 4xx error

A body the API cannot read is a 400 (`BadRequest`), a value it cannot take a 422 (any ValueError or
TypeError); either answers {"error": the kind, "detail": what is wrong, "body": "", "errors": the
same text}, the keys of the web UI's error body.
"""

from __future__ import annotations

import base64
import binascii
import io
import json

from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from diffusion_notes.practice.webui import infotext
from diffusion_notes.practice.webui.api_models import BadRequest, http_error

MAX_BODY = 20_000_000


def decode_image(data, what: str):
    """A base64 image (with or without a data: prefix) -> PIL image, or BadRequest."""
    if not isinstance(data, str):
        raise BadRequest(f"{what} must be a base64 string, got {type(data).__name__}")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None
    return infotext.read_image(raw, what)


def png64(image) -> str:
    """A PIL image or an (H, W, 3) uint8 array as a base64 PNG."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def answer(request: Request, model, work):
    """Read the body as `model` (any JSON when None), run `work` on it in a thread; errors as 4xx JSON."""
    try:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise BadRequest(f"the request is {len(raw)} bytes; the limit is {MAX_BODY}")
        body = _parse(model, raw)
        result = await run_in_threadpool(work, body)
        return JSONResponse(result.model_dump() if hasattr(result, "model_dump") else result)
    except BadRequest as err:
        return error(400, err)
    except (ValueError, TypeError) as err:  # a setting out of range or of the wrong type, an unknown sampler
        return error(422, err)


def _parse(model, raw: bytes):
    if model is None:
        try:
            return json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadRequest(f"the request body is not JSON: {err}") from None
    try:
        return model.model_validate_json(raw or b"{}") if isinstance(raw, bytes) else model.model_validate(raw)
    except ValidationError as err:
        raise http_error(err) from None


def error(status: int, err: Exception) -> JSONResponse:
    """The web UI's error body: {"error": the kind, "detail": what is wrong, "body": "", "errors": the same text}."""
    return JSONResponse({"error": type(err).__name__, "detail": str(err), "body": "", "errors": str(err)},
                        status_code=status)


