"""The API's job routes, its answer of last resort, and who may call it.

    GET  /sdapi/v1/progress?skip_current_image=false   {"progress", "eta_relative", "state", "current_image",
                                                        "textinfo", "current_task"}  (the web UI's ProgressResponse)
    POST /sdapi/v1/interrupt                            stop the running job after its current step
    POST /sdapi/v1/skip                                 stop the running batch; the job goes on with the next

These answer at once, on the server's event loop, while a job runs in its thread and others wait
their turn. `add_access` puts HTTP basic auth on the API (`--api-auth user:pass,...`) and lets the
pages of other origins call it (`--cors-allow-origins`), both off unless asked for.
"""

from __future__ import annotations

import base64
import binascii
import io
import secrets

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from diffusion_notes.practice.webui.state import WebUIState

API_PATHS = ("/sdapi/", "/controlnet/")  # what --api-auth guards; the pages have --gradio-auth


def add_job_routes(app: FastAPI, state: WebUIState) -> FastAPI:
    """progress, interrupt and skip on `state`'s queue; and a JSON answer for any error nothing else caught."""
    progress = state.jobs.progress

    @app.get("/sdapi/v1/progress")
    async def progress_route(skip_current_image: bool = False) -> dict:
        fraction, eta = progress.fraction()
        preview = None if skip_current_image else progress.preview()
        return {"progress": fraction, "eta_relative": eta, "state": progress.dict(),
                "current_image": None if preview is None else _png64(preview), "textinfo": progress.textinfo,
                "current_task": None}

    @app.post("/sdapi/v1/interrupt")
    async def interrupt() -> dict:
        progress.interrupt()
        return {}

    @app.post("/sdapi/v1/skip")
    async def skip() -> dict:
        progress.skip()
        return {}

    app.add_exception_handler(RecursionError, _answer(422, "the request nests too deeply to be read"))
    app.add_exception_handler(MemoryError, _answer(413, "the request is too large to process"))
    app.add_exception_handler(Exception, _answer(500, "the server failed on this request"))
    return app


def _answer(status: int, what: str):
    """An exception handler: the error as the API's JSON body, with `status`."""
    async def handler(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"error": type(err).__name__, "detail": f"{what}: {str(err)[:500]}", "body": None,
                             "errors": str(err)[:500]}, status_code=status)
    return handler


def _png64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_credentials(text: str, option: str = "--api-auth") -> dict[str, str]:
    """"user:pass[,user2:pass2]" -> {user: password}, as the web UI reads its --api-auth and --gradio-auth."""
    credentials = {}
    for pair in text.split(","):
        user, colon, password = pair.strip().partition(":")
        if not colon or not user or not password:
            raise ValueError(f"{option} takes user:password pairs separated by commas, got {pair.strip()!r}")
        credentials[user] = password
    return credentials


class BasicAuth:
    """ASGI middleware: HTTP basic auth on the paths under `prefixes`, a 401 JSON answer without it."""

    def __init__(self, app, credentials: dict[str, str], prefixes=API_PATHS):
        self.app, self.credentials, self.prefixes = app, dict(credentials), tuple(prefixes)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes) and not self.allowed(scope):
            response = JSONResponse({"error": "HTTPException", "detail": "Incorrect username or password",
                                     "body": None, "errors": None}, status_code=401,
                                    headers={"WWW-Authenticate": "Basic"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)

    def allowed(self, scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, value = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            return False
        same = secrets.compare_digest(password.encode(), self.credentials.get(user, "").encode())  # constant time
        return same and user in self.credentials


def add_access(app: FastAPI, api_auth: dict[str, str] | None = None, cors_allow_origins=None) -> FastAPI:
    """Basic auth on the API paths when `api_auth` is given; CORS for the listed origins (none by default)."""
    if api_auth:
        app.add_middleware(BasicAuth, credentials=api_auth)
    if cors_allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_allow_origins), allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
    return app
