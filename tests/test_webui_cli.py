"""The `webui` command's options, checked before anything loads; who may call the API and the pages.

The web UI reads the same options (modules/cmd_args.py: --listen, --port, --api-auth, --gradio-auth,
--cors-allow-origins) and guards its API with HTTP basic auth (modules/api/api.py, Api.auth: a 401 with
`WWW-Authenticate: Basic` for a wrong user or password). A wrong option here is one line and exit 2.
"""

import base64
import os
import socket
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from diffusion_notes import pretrained
from diffusion_notes.__main__ import main
from diffusion_notes.practice.webui.api_jobs import parse_credentials
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nothing_loads(monkeypatch):
    """The checks come before any model loads or any server starts: either would fail the test."""
    import diffusion_notes.practice.webui.app as app

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded or a server started before the options were checked")

    monkeypatch.setattr(pretrained, "load", refuse)
    monkeypatch.setattr(app, "serve", refuse)


@pytest.fixture
def started(monkeypatch):
    """Runs `webui` up to the server, which is not started: returns what create_app and serve were given."""
    import diffusion_notes.practice.webui.app as app
    import diffusion_notes.practice.webui.launch as launch

    given = {}
    monkeypatch.setattr(pretrained, "load", lambda name: None)
    monkeypatch.setattr(launch, "build_state", lambda *a: "state")
    monkeypatch.setattr(app, "create_app", lambda state, **access: given.update(access=access) or "app")
    monkeypatch.setattr(app, "serve", lambda a, host, port: given.update(host=host, port=port))
    return given


def folders(tmp_path) -> list[str]:
    return ["--models-dir", str(tmp_path / "models"), "--lora-dir", str(tmp_path / "Lora"),
            "--outputs-dir", str(tmp_path / "outputs")]


def one_line_error(capsys, *words) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert all(w in err for w in words), err
    return err


@pytest.mark.parametrize("port, words", [("99999", ["1-65535", "99999"]), ("0", ["1-65535"]), ("-1", ["1-65535"]),
                                         ("65536", ["65536"]), ("seven", ["whole number", "'seven'"])])
def test_a_port_outside_1_65535_is_one_line_and_exit_2(tmp_path, capsys, nothing_loads, port, words):
    assert main(["webui", "--port", port, *folders(tmp_path)]) == 2
    one_line_error(capsys, "--port", *words)


def test_an_address_that_cannot_be_bound_is_one_line_and_exit_2(tmp_path, capsys, nothing_loads):
    assert main(["webui", "--host", "203.0.113.7", "--port", str(free_port()), *folders(tmp_path)]) == 2
    one_line_error(capsys, "cannot listen on 203.0.113.7")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["webui", "--port", str(port), *folders(tmp_path)]) == 2
    one_line_error(capsys, f"127.0.0.1:{port}", "in use")


@pytest.mark.parametrize("where, option", [("file", "--outputs-dir"), ("sys", "--models-dir"), ("nul", "--lora-dir"),
                                           ("read-only", "--outputs-dir")])
def test_a_folder_that_cannot_be_created_or_written_is_one_line_and_exit_2(tmp_path, capsys, nothing_loads, where,
                                                                           option):
    (tmp_path / "a_file").write_text("not a folder")
    bad = {"file": tmp_path / "a_file" / "outputs", "sys": "/sys/diffusion_notes_outputs",
           "nul": str(tmp_path / "no\0pe"), "read-only": tmp_path / "read_only"}[where]
    if where == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder")
        bad.mkdir(mode=0o500)
    args = folders(tmp_path)
    args[args.index(option) + 1] = str(bad)
    assert main(["webui", "--port", str(free_port()), *args]) == 2
    one_line_error(capsys, option, "cannot create or write")


@pytest.mark.parametrize("value", ["user", ":secret", "user:", "a:b,,c:d"])
def test_credentials_that_are_not_user_password_pairs_are_one_line_and_exit_2(tmp_path, capsys, nothing_loads, value):
    assert main(["webui", "--port", str(free_port()), "--api-auth", value, *folders(tmp_path)]) == 2
    one_line_error(capsys, "--api-auth", "user:password")


def test_the_options_reach_the_app_and_listen_is_opt_in_with_a_warning(tmp_path, capsys, started):
    port = str(free_port())
    assert main(["webui", "--port", port, *folders(tmp_path)]) == 0
    assert (started["host"], started["port"]) == ("127.0.0.1", int(port)) and capsys.readouterr().err == ""
    assert started["access"] == {"api_auth": None, "gradio_auth": None, "cors_allow_origins": None,
                                 "localization": None}
    assert all((tmp_path / name).is_dir() for name in ("models", "Lora", "outputs"))
    assert main(["webui", "--listen", "--port", port, "--api-auth", "a:b:c,d:e", "--gradio-auth", "me:pw",
                 "--cors-allow-origins", "http://a.example, http://b.example", "--localization", "zh_CN",
                 *folders(tmp_path)]) == 0
    assert started["host"] == "0.0.0.0"
    err = capsys.readouterr().err
    assert err.startswith("warning: listening on 0.0.0.0") and "anyone who can reach this machine" in err
    assert started["access"] == {"api_auth": {"a": "b:c", "d": "e"}, "gradio_auth": {"me": "pw"},
                                 "cors_allow_origins": ["http://a.example", "http://b.example"],
                                 "localization": "zh_CN"}
    assert main(["webui", "--listen", "--host", "127.0.0.1", "--port", port, *folders(tmp_path)]) == 2


def test_parse_credentials_as_the_web_ui_reads_them():
    """modules/api/api.py, Api.__init__: pairs split at "," and each at ":" (here at its first ":", so a password
    may hold one)."""
    assert parse_credentials("user:pass") == {"user": "pass"}
    assert parse_credentials("u1:p1,u2:p2") == {"u1": "p1", "u2": "p2"}


@pytest.fixture(scope="module")
def guarded(pipe):
    from diffusion_notes.practice.webui.app import create_app

    state = WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet")))
    app = create_app(state, api_auth={"alice": "s3cret", "bob": "pw:with:colons"}, gradio_auth={"carol": "pages"},
                     cors_allow_origins=["http://allowed.example"])
    with TestClient(app) as client:
        yield client


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_api_auth_asks_every_api_route_for_a_password(guarded):
    """modules/api/api.py, Api.auth: HTTPBasic credentials compared with compare_digest; a 401 otherwise."""
    for headers in ({}, basic("alice", "wrong"), basic("mallory", "s3cret"), {"Authorization": "Basic %%%"},
                    {"Authorization": "Bearer s3cret"}):
        for method, path in (("GET", "/sdapi/v1/sd-models"), ("POST", "/sdapi/v1/txt2img"),
                             ("GET", "/sdapi/v1/progress"), ("POST", "/sdapi/v1/interrupt"),
                             ("GET", "/controlnet/model_list")):
            r = guarded.request(method, path, headers=headers, json={})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Basic", (path, headers)
            assert r.json()["detail"] == "Incorrect username or password"
    assert guarded.get("/sdapi/v1/sd-models", headers=basic("alice", "s3cret")).status_code == 200
    assert guarded.get("/sdapi/v1/progress", headers=basic("bob", "pw:with:colons")).status_code == 200


def test_gradio_auth_puts_a_login_before_the_pages(guarded):
    assert guarded.get("/config").status_code == 401  # the pages' configuration: only after a login
    assert guarded.post("/login", data={"username": "carol", "password": "wrong"}).status_code == 400
    assert guarded.post("/login", data={"username": "carol", "password": "pages"}).status_code == 200
    assert guarded.get("/config").status_code == 200  # the login's cookie
    assert guarded.get("/sdapi/v1/sd-models").status_code == 401  # the pages' login is not the API's


def test_cors_answers_only_the_allowed_origins(guarded, pipe):
    """modules/api/api.py (the web UI's app): CORSMiddleware only when --cors-allow-origins is given."""
    preflight = {"Access-Control-Request-Method": "POST"}
    allowed = guarded.options("/sdapi/v1/txt2img", headers={"Origin": "http://allowed.example", **preflight})
    assert allowed.headers.get("access-control-allow-origin") == "http://allowed.example"
    other = guarded.options("/sdapi/v1/txt2img", headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    from diffusion_notes.practice.webui.api import create_api

    with TestClient(create_api(WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet"))))) as plain:
        r = plain.get("/sdapi/v1/samplers", headers={"Origin": "http://allowed.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # off by default


def test_generate_names_a_word_the_model_never_saw(tmp_path, capsys, one_thread):
    assert main(["generate", "a pink circle on the left", "--negative-prompt", "a dog", "--steps", "1",
                 "--out", str(tmp_path / "x.png")]) == 0
    err = capsys.readouterr().err
    assert 'warning: the prompt has a word the model never saw in training: "pink"' in err
    assert 'warning: the negative prompt has a word the model never saw in training: "dog"' in err
    assert main(["generate", "a small red circle on the left", "--steps", "1", "--out", str(tmp_path / "y.png")]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.slow
def test_the_command_exits_2_with_one_line_in_a_process_of_its_own(tmp_path):
    run = subprocess.run([sys.executable, "-m", "diffusion_notes", "webui", "--port", "99999", *folders(tmp_path)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 2 and run.stderr.strip() == "error: --port must be in 1-65535, got 99999"
