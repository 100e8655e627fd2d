"""Bad input for the web UI's API: every case gets a 4xx JSON answer that says what is wrong, and the server
keeps serving (one GET after each case). Families: the body's shape, nesting, types, ranges, job sizes,
images (bombs among them), prompts, names that leave their folder, corrupt files, routes and methods.

The web UI answers such requests from FastAPI with a JSON body (modules/api/api.py, api_middleware's
handle_exception: {"error", "detail", "body", "errors"}); here none of them reaches that last resort.
"""

import base64
import io
import json
import struct
import zlib

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from diffusion_notes import pretrained
from diffusion_notes.practice.webui.api import create_api
from diffusion_notes.practice.webui.extra_networks import LoRALibrary
from diffusion_notes.practice.webui.inputs import MAX_JOB_SIZE, json_depth
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, data: bytes | None = None, extra: bytes = b"") -> bytes:
    """A 1-bit grey PNG: `data` as its compressed pixels (all of them black when None), `extra` chunks first."""
    if data is None:  # every row: filter byte 0 and black pixels, compressed a row at a time
        packer, row = zlib.compressobj(9), bytes(1 + (width + 7) // 8)
        data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="png")
    return buffer.getvalue()


BOMB = png(20000, 20000)  # 400 million pixels in about 65 KB of base64
IMAGES = {  # name -> (base64 text, what the answer's detail says)
    "bomb 20000x20000 PNG": (b64(BOMB), "pixels"),
    "5000x5000 PNG, above our limit": (b64(png(5000, 5000)), "pixels"),
    "PNG header of 100000x100000, no pixels": (b64(png(100000, 100000, data=b"")), "too large"),
    "PNG text chunk bomb": (b64(png(8, 8, extra=_chunk(b"zTXt", b"k\0\0" + zlib.compress(bytes(64 << 20))))),
                            "Decompressed data too large"),
    "GIF header of 30000x30000": (b64(b"GIF89a" + struct.pack("<HH", 30000, 30000) + b"\0\0\0" + b"," +
                                      struct.pack("<HHHH", 0, 0, 30000, 30000) + b"\0\x02\x02\x4c\x01\0;"), "pixels"),
    "BMP header of 40000x40000": (b64(b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack(
        "<IiiHHIIiiII", 40, 40000, 40000, 1, 24, 0, 0, 0, 0, 0, 0)), "pixels"),
    "truncated PNG": (b64(small_png()[:60]), "not an image"),
    "text, not an image": (b64(b"GIF89a but not really"), "not an image"),
    "an EPS file (a format with a helper program)": (b64(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n"),
                                                     "not an image"),
    "not base64": ("%%%not base64%%%", "base64"),
    "a number, not a string": (5, None),
    "data: prefix and junk": ("data:image/png;base64,@@@@", "base64"),
}


def nested(depth: int, kind: str = "[") -> bytes:
    """JSON arrays (or objects) `depth` deep."""
    if kind == "[":
        return ("[" * depth + "]" * depth).encode()
    return ('{"a": ' * depth + "1" + "}" * depth).encode()


# (name, route, body: dict for JSON or bytes as sent, status, a word of the detail or None)
CASES = []
for route in ("txt2img", "img2img", "png-info", "options"):
    for name, raw in (("not JSON", b"{not json"), ("a JSON array", b"[1, 2]"), ("a JSON string", b'"text"'),
                      ("JSON null", b"null"), ("a JSON number", b"42"), ("invalid UTF-8", b"\xff\xfe{}"),
                      ("an unclosed object", b'{"prompt": "a"'), ("a trailing comma", b'{"prompt": "a",}'),
                      ("text after the object", b'{"prompt": "a"} and more'),
                      ("arrays 100000 deep", nested(100000)), ("objects 100000 deep", nested(100000, "{")),
                      ("arrays 40 deep", nested(40))):
        if route == "options" and name in ("a JSON array", "a JSON string", "JSON null", "a JSON number"):
            CASES.append((f"{route}: {name}", route, raw, 422, "JSON object"))
        else:
            CASES.append((f"{route}: {name}", route, raw, 400, "deep" if "deep" in name else None))
for field, value in (("prompt", json.loads(nested(40))),
                     ("override_settings", json.loads(nested(60, "{"))),
                     ("alwayson_scripts", {"controlnet": {"args": json.loads(nested(50))}})):
    CASES.append((f"txt2img: {field} nested too deep", "txt2img", {field: value}, 400, "deep"))

WRONG_TYPES = [("steps", "many"), ("steps", [20]), ("steps", {"n": 20}), ("cfg_scale", "high"), ("cfg_scale", [7]),
               ("seed", "abc"), ("seed", [1]), ("subseed", {"s": 1}), ("batch_size", "lots"), ("n_iter", {}),
               ("prompt", 123), ("prompt", ["a", "b"]), ("prompt", {"text": "a"}), ("negative_prompt", 5),
               ("negative_prompt", ["x"]), ("sampler_name", 5), ("sampler_name", ["Euler"]),
               ("subseed_strength", "half"), ("width", "wide"), ("height", [32]), ("denoising_strength", "x"),
               ("mask_blur", "soft"), ("inpaint_full_res_padding", "x")]
CASES += [(f"txt2img: {f} = {v!r}", "txt2img", {"prompt": "a", f: v}, 422, f) for f, v in WRONG_TYPES]
OUT_OF_RANGE = [("steps", 0), ("steps", -5), ("steps", 100000), ("cfg_scale", -1), ("cfg_scale", 1000),
                ("seed", 2**32), ("seed", -2), ("seed", 2**70), ("seed", 1.5), ("subseed", -7), ("batch_size", 0),
                ("batch_size", 1000), ("n_iter", 0), ("n_iter", -1), ("n_iter", 10**6), ("subseed_strength", -0.5),
                ("subseed_strength", 1.5), ("denoising_strength", 2), ("denoising_strength", -0.1),
                ("mask_blur", -1), ("mask_blur", 1000), ("width", 0), ("width", -32), ("height", 100000),
                ("inpaint_full_res_padding", -4)]
CASES += [(f"txt2img: {f} = {v!r}", "txt2img", {"prompt": "a", f: v}, 422, "seed" if f == "subseed" else f)
          for f, v in OUT_OF_RANGE]  # generate.check names the subseed "seed"
CASES += [(f"txt2img: cfg_scale = {text}", "txt2img", f'{{"prompt": "a", "cfg_scale": {text}}}'.encode(), 422,
           "cfg_scale") for text in ("NaN", "Infinity", "-Infinity", "1e400")]
CASES += [(f"txt2img: {b} x {n} x {s} steps x 32 x 32 is above the job limit", "txt2img",
           {"prompt": "a", "batch_size": b, "n_iter": n, "steps": s}, 422, "too large")
          for b, n, s in ((8, 100, 150), (8, 100, 21), (8, 25, 100), (4, 100, 50), (8, 50, 50))]

for name, (text, word) in IMAGES.items():
    CASES.append((f"img2img init_images: {name}", "img2img", {"prompt": "a", "init_images": [text]},
                  400 if word in ("base64", None) else 422, word))
    CASES.append((f"png-info image: {name}", "png-info", {"image": text}, 400 if word in ("base64", None) else 422,
                  word))
    if not isinstance(text, int):
        CASES.append((f"img2img mask: {name}", "img2img", {"prompt": "a", "init_images": [b64(small_png())],
                                                           "mask": text}, 400 if "base64" in word else 422, word))
        CASES.append((f"ControlNet image: {name}", "txt2img", {"prompt": "a", "alwayson_scripts": {"controlnet": {
            "args": [{"image": text, "model": "controlnet"}]}}}, 400 if "base64" in word else 422, word))
CASES += [("img2img: no init_images", "img2img", {"prompt": "a"}, 400, "init_images"),
          ("img2img: init_images empty", "img2img", {"prompt": "a", "init_images": []}, 400, "init_images"),
          ("img2img: init_images a string", "img2img", {"prompt": "a", "init_images": "abc"}, 400, "init_images"),
          ("png-info: no image", "png-info", {}, 400, "image"),
          ("png-info: empty image", "png-info", {"image": ""}, 400, "image"),
          ("txt2img: a mask without an init image", "txt2img", {"prompt": "a", "mask": b64(small_png())}, None, None)]
CASES = [c for c in CASES if c[3] is not None]  # txt2img ignores img2img's fields

PROMPTS = {"( 5000 deep": "(" * 5000, "[ 5000 deep": "[" * 5000, "(a  3000 times": "(a " * 3000,
           "[a: 3000 deep": "[a:" * 3000, "[a| 3000 deep": "[a|" * 3000, "( and ) 3000 deep": "(" * 3000 + ")" * 3000,
           "emphasis (red:1.2.3)": "a (red:1.2.3) circle",
           "a LoRA weight that is not a number": "a circle <lora:x:strong>",
           "a LoRA weight inf": "a circle <lora:x:inf>", "a prompt of 200000 characters": "a " * 100000}
CASES += [(f"txt2img prompt: {name}", "txt2img", {"prompt": text, "steps": 1}, 422, None)
          for name, text in PROMPTS.items()]
CASES += [("txt2img negative prompt: ( 5000 deep", "txt2img", {"prompt": "a", "negative_prompt": "(" * 5000,
                                                               "steps": 1}, 422, None)]
CASES += [(f"txt2img: {name} of 30000 characters", "txt2img", {"prompt": "a", name: "a" * 30000}, 422, "limit")
          for name in ("negative_prompt", "hr_prompt", "hr_negative_prompt")]

NAMES = {"<lora:../x:1>": "folder", "<lora:../../etc/passwd:1>": "folder", "<lora:/etc/passwd:1>": "folder",
         "<lora:sub/dir:1>": "folder", "<lora:..\\x:1>": "folder", "<lora:..:1>": "folder",
         "<lora:garbage:1>": "cannot be read", "<lora:truncated:1>": "cannot be read",
         "<lora:other_model:1>": "does not fit", "<lora:nope:1>": "unknown LoRA", "<hypernet:x:1>": "lora"}
CASES += [(f"txt2img: {tag}", "txt2img", {"prompt": f"a circle {tag}", "steps": 1}, 422, word)
          for tag, word in NAMES.items()]
for model, word in (("../zeroed", "unknown checkpoint"), ("/etc/passwd", "unknown checkpoint"),
                    ("garbage", "not a checkpoint"), ("truncated_unet", "not fully covered"),
                    ("a_lora", "no 'diffusion_notes' metadata"), ("", "non-empty"), (5, "non-empty")):
    CASES.append((f"txt2img: override checkpoint {model!r}", "txt2img",
                  {"prompt": "a", "steps": 1, "override_settings": {"sd_model_checkpoint": model}}, 422, word))
    CASES.append((f"options: checkpoint {model!r}", "options", {"sd_model_checkpoint": model}, 422, word))
CASES += [("txt2img: a body of 25 MB", "txt2img", b'{"prompt": "' + b"a" * 25_000_000 + b'"}', 400, "limit")]

ROUTES = [("GET", "/sdapi/v1/txt2img", 405), ("GET", "/sdapi/v1/img2img", 405), ("PUT", "/sdapi/v1/options", 405),
          ("GET", "/sdapi/v1/nowhere", 404), ("POST", "/sdapi/v1/progress", 405), ("GET", "/sdapi/v1/interrupt", 405),
          ("GET", "/sdapi/v1/skip", 405), ("GET", "/sdapi/v1/progress?skip_current_image=maybe", 422),
          ("DELETE", "/sdapi/v1/sd-models", 405), ("POST", "/controlnet/nowhere", 404)]


@pytest.fixture(scope="module")
def client(pipe, tmp_path_factory):
    models, loras = tmp_path_factory.mktemp("Stable-diffusion"), tmp_path_factory.mktemp("Lora")
    shipped = pretrained.verify("ldm_unet")
    (models / "zeroed.safetensors").write_bytes(shipped.read_bytes())
    (models / "garbage.safetensors").write_bytes(bytes(range(70)))
    (models / "truncated_unet.safetensors").write_bytes(shipped.read_bytes()[:200_000])
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, str(models / "a_lora.safetensors"))
    (loras / "garbage.safetensors").write_bytes(bytes(range(70)))
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 64)}, str(loras / "full.safetensors"))
    (loras / "truncated.safetensors").write_bytes((loras / "full.safetensors").read_bytes()[:-100])
    (loras / "full.safetensors").unlink()
    save_file({"lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_no_such_layer.lora_up.weight": torch.zeros(4, 2)}, str(loras / "other_model.safetensors"))
    state = WebUIState(ModelRegistry(pipe, shipped, models), loras=LoRALibrary(pipe.unet, {}, loras))
    with TestClient(create_api(state), raise_server_exceptions=False) as c:
        yield c


def healthy(client) -> None:
    r = client.get("/sdapi/v1/progress?skip_current_image=true")
    assert r.status_code == 200 and r.json()["state"]["job_count"] == 0


def test_there_are_at_least_120_cases():
    assert len(CASES) + len(ROUTES) >= 120, len(CASES) + len(ROUTES)


@pytest.mark.parametrize("name, route, body, status, word", CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_gets_a_4xx_json_answer_and_the_server_keeps_serving(client, name, route, body, status, word):
    sent = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = client.post(f"/sdapi/v1/{route}", **sent)
    assert r.headers["content-type"].startswith("application/json"), r.text[:300]
    answer = r.json()
    assert r.status_code == status, (r.status_code, answer)
    assert answer["detail"] and (word is None or word in answer["detail"]), answer["detail"]
    healthy(client)


@pytest.mark.parametrize("method, path, status", ROUTES)
def test_wrong_routes_and_methods_get_a_4xx_json_answer(client, method, path, status):
    r = client.request(method, path)
    assert r.status_code == status and r.headers["content-type"].startswith("application/json")
    assert r.json()["detail"]
    healthy(client)


def test_the_server_still_draws_and_lists_the_corrupt_files_with_their_error(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a small red circle on the left", "steps": 2, "seed": 1})
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    models = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json()}
    assert "error" not in models["ldm_unet"] and "error" not in models["zeroed"]
    assert "not a checkpoint" in models["garbage"]["error"] and "a_lora" in models
    loras = {lora["name"]: lora for lora in client.get("/sdapi/v1/loras").json()}
    assert "cannot be read" in loras["garbage"]["error"] and "does not fit" in loras["other_model"]["error"]


def test_the_limits_are_stated_and_checked():
    """The largest job is the web UI's largest batch and count at its default steps: 8 x 100 x 20 x 32 x 32."""
    assert MAX_JOB_SIZE == 8 * 100 * 20 * 32 * 32
    assert json_depth({"a": [1, {"b": []}]}) == 4 and json_depth(3) == 0
    assert len(BOMB) < 50_000  # the bomb is small; its pixels are not


def test_an_error_nothing_else_caught_is_still_a_json_answer(pipe, monkeypatch):
    """modules/api/api.py, api_middleware: an exception no route handled is answered as JSON, not plain text."""
    state = WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet")))

    def broken():
        raise RuntimeError("a bug, not a bad input")

    monkeypatch.setattr(state.registry, "refresh", broken)
    with TestClient(create_api(state), raise_server_exceptions=False) as client:
        r = client.get("/sdapi/v1/sd-models")
        assert r.status_code == 500 and r.headers["content-type"].startswith("application/json")
        assert r.json()["error"] == "RuntimeError" and "a bug" in r.json()["detail"]
        assert client.get("/sdapi/v1/progress").status_code == 200


def test_good_images_and_names_still_pass(tmp_path):
    from diffusion_notes.practice.webui.inputs import decode_image, inside

    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF"):
        buffer = io.BytesIO()
        Image.new("RGB", (4096, 4096) if fmt == "PNG" else (32, 32), (1, 2, 3)).save(buffer, format=fmt)
        image = decode_image("data:image/x;base64," + b64(buffer.getvalue()), fmt)
        assert image.size in ((32, 32), (4096, 4096))  # 4096 x 4096 is the largest image read
    assert inside(tmp_path, "my_lora.v2", ".safetensors") == tmp_path / "my_lora.v2.safetensors"
