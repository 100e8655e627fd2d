"""How the API reads a request and answers: bodies as JSON or a model, base64 images, the web UI's error body.

    await answer(request, Txt2ImgRequest, work)   # parse, run `work` in a thread, answer JSON or a 4xx error

A body the API cannot read is a 400 (`BadRequest`), a value it cannot take a 422 (any ValueError or
TypeError); either answers {"error": the kind, "detail": what is wrong, "body": "", "errors": the
same text}, the keys of the web UI's error body.
"""

from __future__ import annotations

import base64
import io

from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from diffusion_notes.practice.webui.api_models import BadRequest, http_error
from diffusion_notes.practice.webui.inputs import InputError, decode_image, read_body, read_json  # noqa: F401

MAX_BODY = 20_000_000


def png64(image) -> str:
    """A PIL image or an (H, W, 3) uint8 array as a base64 PNG."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def answer(request: Request, model, work):
    """Read the body as `model` (any JSON when None), run `work` on it in a thread; errors as 4xx JSON."""
    try:
        raw = await read_body(request, MAX_BODY)  # no further than the limit
        body = _parse(model, raw)
        result = await run_in_threadpool(work, body)
        return JSONResponse(result.model_dump() if hasattr(result, "model_dump") else result)
    except (BadRequest, InputError) as err:  # a body or an image the server cannot read
        return error(400, err)
    except (ValueError, TypeError) as err:  # a setting out of range or of the wrong type, an unknown sampler
        return error(422, err)
    except RecursionError as err:  # an input nested deeper than its reader goes
        return error(422, ValueError(f"the request nests too deeply to be read: {err}"))


def _parse(model, raw: bytes):
    body = read_json(raw) if isinstance(raw, bytes) else raw  # a 400 for a body not JSON or nested too deep
    if model is None:
        return body
    try:
        return model.model_validate_json(raw or b"{}") if isinstance(raw, bytes) else model.model_validate(raw)
    except ValidationError as err:
        raise http_error(err) from None


def error(status: int, err: Exception) -> JSONResponse:
    """The web UI's error body: {"error": the kind, "detail": what is wrong, "body": "", "errors": the same text}."""
    return JSONResponse({"error": type(err).__name__, "detail": str(err), "body": "", "errors": str(err)},
                        status_code=status)


