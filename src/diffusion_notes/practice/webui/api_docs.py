"""The API's /docs page, with Swagger UI served by the app itself: it works with no network.

FastAPI's own /docs page loads Swagger UI's script and style sheet from a CDN, so offline it is
blank. Here the page takes the copies `make vendor` installs from the npm lock (`_vendor/swagger-ui`)
and the app serves them under /docs-assets; the page then draws every route and request schema
from /openapi.json. Without the vendored copies, /docs says how to get them instead of reaching out.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema

ASSETS = Path(__file__).resolve().parents[4] / "_vendor" / "swagger-ui"  # the repository's, from `make vendor`
FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")


def with_request_bodies(app: FastAPI, bodies: dict) -> FastAPI:
    """The schema of each POST route in `bodies` ({path: pydantic model}) shown as its request body.

    The routes read their bodies themselves (to answer as the web UI does), so FastAPI cannot see
    the models; their schemas are added to /openapi.json's components and referenced from the routes.
    """

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            refs, defs = models_json_schema([(model, "validation") for model in bodies.values()],
                                            ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
            for (path, model) in bodies.items():
                schema["paths"][path]["post"]["requestBody"] = {
                    "required": True, "content": {"application/json": {"schema": refs[(model, "validation")]}}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def add_docs(app: FastAPI, assets: Path = ASSETS) -> FastAPI:
    """GET /docs (Swagger UI from `assets`) and GET /docs-assets/*; `app` must be made with docs_url=None."""
    if all((assets / name).is_file() for name in FILES):
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                       swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                       swagger_css_url="/docs-assets/swagger-ui.css",
                                       swagger_favicon_url="/docs-assets/favicon-32x32.png")
    else:
        @app.get("/docs", include_in_schema=False)
        def docs_missing() -> HTMLResponse:
            return HTMLResponse(f"<p>Swagger UI is not installed in {assets}: run <code>make vendor</code>. "
                                f"The API's schema is at <a href='{app.openapi_url}'>{app.openapi_url}</a>.</p>")
    return app
