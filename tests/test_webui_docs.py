"""/docs works offline: Swagger UI's files come from the app (vendored from the npm lock), not a CDN."""

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from diffusion_notes import pretrained
from diffusion_notes.practice.webui.api import create_api
from diffusion_notes.practice.webui.api_docs import ASSETS, FILES, add_docs
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState


def test_docs_loads_swagger_ui_from_the_app(pipe):
    if not all((ASSETS / name).is_file() for name in FILES):
        pytest.fail(f"Swagger UI is not in {ASSETS}: run `make vendor`", pytrace=False)
    client = TestClient(create_api(WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet")))))
    page = client.get("/docs")
    assert page.status_code == 200
    loads = re.findall(r'(?:src|href)=["\']([^"\']+)', page.text)
    assert loads and all(url.startswith("/docs-assets/") for url in loads), loads
    assert "/openapi.json" in page.text
    for url in loads:
        asset = client.get(url)
        assert asset.status_code == 200 and asset.content == (ASSETS / url.rsplit("/", 1)[-1]).read_bytes(), url
    schema = client.get("/openapi.json").json()  # what the page draws: each route and its request's fields
    body = schema["paths"]["/sdapi/v1/txt2img"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    model = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    assert {"prompt", "steps", "sampler_name", "enable_hr", "alwayson_scripts"} <= set(model["properties"])


def test_without_the_vendored_files_docs_says_how_to_get_them(tmp_path):
    client = TestClient(add_docs(FastAPI(docs_url=None, redoc_url=None), assets=tmp_path))
    page = client.get("/docs")
    assert page.status_code == 200 and "make vendor" in page.text and "http" not in page.text
