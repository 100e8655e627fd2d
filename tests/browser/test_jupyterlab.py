"""A real JupyterLab session: `make lab`'s command on a copy of book/, driven in headless Chromium.

The test runs the command line `make -n lab` prints (so it starts JupyterLab exactly as `make lab`
does, with its config in jupyter_config/), adding only a free localhost port, a token and no
browser. Jupyter's, IPython's and matplotlib's state and HOME live in tmp_path; the notebooks are a
copy, so the real chapters are not modified. In the browser it opens Chapter 3, runs all cells,
moves the sampler panel's "guidance" slider and checks that the kernel redraws the panel's picture.

Nothing may leave this machine: the page's outside requests are aborted and fail the test, and a
`sitecustomize` audit hook in the server's and the kernel's Python records every outside address
they resolve or connect to (JupyterLab's news feed and update check would be made by the server).
"""

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[2]
CHAPTER = "03_guidance.ipynb"
RUN_ALL_TIMEOUT_S = 900  # the chapter trains a small model and renders its panel's frames: minutes on a laptop CPU

AUDIT_HOOK = '''
import os, sys
_LOG = os.environ.get("DN_OUTSIDE_LOG")
_LOCAL = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "", None}
def _record(event, args):
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect":
        host = args[1][0] if isinstance(args[1], tuple) and args[1] else None
    else:
        return
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host not in _LOCAL and _LOG:
        with open(_LOG, "a") as f:
            f.write(f"{os.getpid()} {sys.argv[:3]} {event} {host}\\n")
sys.addaudithook(_record)
'''

# FNV-1a of the bytes an <img> shows (its src is a blob: or data: URL): changes when the picture does.
IMAGE_DIGEST_JS = """async (img) => {
    const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
    let h = 0x811c9dc5;
    for (const b of bytes) { h ^= b; h = Math.imul(h, 0x01000193) >>> 0; }
    return `${bytes.length}:${h.toString(16)}`;
}"""


def _make_lab_command(extra_args: list) -> str:
    """The shell line `make lab` runs, with `extra_args` passed through LAB_ARGS."""
    if not shutil.which("make"):
        pytest.skip("`make` not found: this test runs the command `make lab` runs")
    out = subprocess.run(["make", "-n", "--no-print-directory", "lab", "LAB_ARGS=" + shlex.join(extra_args)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.replace("\\\n", " ").splitlines()
    lab = [line for line in lines if re.search(r"bin/jupyter\S* lab\b", line)]
    assert len(lab) == 1, f"no single `jupyter lab` line in `make -n lab`:\n{out.stdout}"
    assert "jupyter_config" in lab[0], "make lab no longer uses jupyter_config/ (news and update checks off)"
    return lab[0]


class Lab:
    def __init__(self, url: str, token: str, proc: subprocess.Popen, log: Path, outside_log: Path):
        self.url, self.token, self.proc, self.log, self.outside_log = url, token, proc, log, outside_log

    def api(self, path: str):
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def server_log(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def outside(self) -> list:
        return self.outside_log.read_text().splitlines() if self.outside_log.exists() else []


@pytest.fixture
def lab(tmp_path, chromium_path, free_port):
    """JupyterLab started by `make lab`'s command line on a copy of book/, torn down after the test."""
    shutil.copytree(ROOT / "book", tmp_path / "book",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "_build"))
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the make line calls .venv/bin/jupyter, relative
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    env.update({
        "JUPYTER_DATA_DIR": str(state / "jupyter/data"), "JUPYTER_CONFIG_DIR": str(state / "jupyter/config"),
        "JUPYTER_RUNTIME_DIR": str(state / "jupyter/runtime"), "IPYTHONDIR": str(state / "ipython"),
        "MPLCONFIGDIR": str(state / "matplotlib"), "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "home/.config"), "XDG_CACHE_HOME": str(tmp_path / "home/.cache"),
        "XDG_DATA_HOME": str(tmp_path / "home/.local/share"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "DN_OUTSIDE_LOG": str(tmp_path / "outside.log"),
    })
    for d in ("JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR", "HOME"):
        Path(env[d]).mkdir(parents=True, exist_ok=True)
    port, token = free_port, secrets.token_hex(16)
    command = _make_lab_command(["--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                                 "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                                 f"--ServerApp.root_dir={tmp_path / 'book'}"])
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Lab(f"http://127.0.0.1:{port}", token, proc, log, tmp_path / "outside.log")
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited ({proc.returncode}):\n{server.server_log()}", pytrace=False)
            try:
                server.api("/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in 180 s:\n{server.server_log()}", pytrace=False)
                time.sleep(0.5)
        yield server
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)  # the server, its kernels and the bash that started them
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass


class KernelWatch:
    """Samples the kernel's execution state from the server's REST API in a thread (20 per second)."""

    def __init__(self, lab: Lab, page):
        self.lab, self.page, self.samples, self._stop = lab, page, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                kernels = self.lab.api("/api/kernels")
                self.samples.append((time.monotonic(), [k["execution_state"] for k in kernels]))
            except OSError:
                pass
            self._stop.wait(0.05)

    def states_since(self, t0: float) -> list:
        return [s for t, states in list(self.samples) if t >= t0 for s in states]

    def wait_idle(self, timeout: float, since: float | None = None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recent = [states for t, states in list(self.samples)[-4:] if since is None or t >= since]
            if len(recent) == 4 and all(states and all(s == "idle" for s in states) for states in recent):
                return
            self.page.wait_for_timeout(100)  # not time.sleep: the page's requests are routed through this thread
        raise AssertionError(f"the kernel was not idle within {timeout:.0f} s: {self.samples[-3:]}")

    def stop(self):
        self._stop.set()
        self._thread.join(5)


NUMBER = re.compile(r"^\s*-?\d+(\.\d+)?\s*$")


def _number_shown(page, readout, timeout_s: float = 60) -> float:
    """The readout's value once it shows a number: ipywidgets redraws the readout, which is empty meanwhile.

    The text is read once per try and parsed from that same read, so a redraw between a check and a
    read cannot hand back an empty string.
    """
    deadline, seen = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        seen = readout.inner_text()
        if NUMBER.match(seen):
            return float(seen)
        page.wait_for_timeout(100)
    raise AssertionError(f"the slider's readout showed no number for {timeout_s:.0f} s (last: {seen!r})")


def _settled_src(page, picture, quiet_ms: int = 1500, timeout_s: float = 120) -> str:
    """The picture's src once it has not changed for `quiet_ms`: the last of the kernel's redraws."""
    deadline = time.monotonic() + timeout_s
    src, since = picture.get_attribute("src"), time.monotonic()
    while time.monotonic() < deadline:
        page.wait_for_timeout(250)
        now = picture.get_attribute("src")
        if now != src:
            src, since = now, time.monotonic()
        elif src and (time.monotonic() - since) * 1000 >= quiet_ms:
            return src
    raise AssertionError(f"the panel's picture kept changing (or had no src) for {timeout_s:.0f} s")


def _news_prompts(page) -> list:
    texts = page.locator(".Toastify__toast").all_inner_texts()
    return [t for t in texts if re.search(r"news|newer version|update", t, re.IGNORECASE)]


def test_guidance_panel_redraws_in_jupyterlab(lab, offline_page, tmp_path):
    """`offline_page` aborts the page's outside requests and fails the test on any."""
    started = time.monotonic()
    page = offline_page
    page.set_viewport_size({"width": 1400, "height": 1000})
    watch = KernelWatch(lab, page)
    try:
        page.set_default_timeout(120_000)
        page.goto(f"{lab.url}/lab/tree/{CHAPTER}?token={lab.token}", wait_until="domcontentloaded")
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=180_000)
        watch_start = time.monotonic()
        while not lab.api("/api/sessions"):
            assert time.monotonic() - watch_start < 120, "no kernel session was started for the notebook"
            page.wait_for_timeout(500)
        watch.wait_idle(180)

        # JupyterLab would ask about news on start-up (after the app is restored): it must not
        page.wait_for_timeout(3000)
        assert not _news_prompts(page), f"JupyterLab shows a news or update prompt: {_news_prompts(page)}"

        # Run -> Run All Cells, then wait until every code cell has its execution count
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        run_all = page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$"))
        page.locator(".lm-Menu-item", has=run_all).click()
        run_started = time.monotonic()
        # (JupyterLab stops a Run All at a failing cell, whose later cells never get a count: stop waiting there)
        page.wait_for_function(
            """() => {
                const prompts = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')];
                const failed = document.querySelector(
                    '.jp-NotebookPanel .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
                return (prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent)))
                    || (failed !== null && /Traceback|Error/.test(failed.textContent));
            }""", timeout=RUN_ALL_TIMEOUT_S * 1000, polling=1000)
        watch.wait_idle(120)
        ran_in = time.monotonic() - run_started
        errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]',
                              has_text=re.compile("Traceback|Error"))
        assert errors.count() == 0, f"a cell failed:\n{errors.first.inner_text()[:2000]}"

        # The sampler panel: a box holding a FloatSlider labelled "guidance" and an Image
        label = page.locator(".widget-label", has_text=re.compile(r"^\s*guidance\s*$"))
        slider = page.locator(".widget-slider", has=label)
        panel = slider.locator("xpath=ancestor::div[contains(@class, 'widget-box')][.//img][1]").first
        panel.wait_for(state="visible", timeout=60_000)
        slider = panel.locator(".widget-slider", has=label)
        picture = panel.locator("img").last
        picture.scroll_into_view_if_needed()
        picture.wait_for(state="visible")
        readout = slider.locator(".widget-readout")
        before_value = _number_shown(page, readout)
        before_src = _settled_src(page, picture)
        before_digest = picture.evaluate(IMAGE_DIGEST_JS)

        moved_at = time.monotonic()
        handle = slider.locator(".noUi-handle").first
        handle.focus()
        for _ in range(3):
            handle.press("ArrowRight")
            page.wait_for_timeout(300)
        # wait for the picture of the last value: a new src, the kernel idle, and no redraw for a while;
        # then for the readout, which ipywidgets re-renders (empty meanwhile), to show a number
        expect(picture).not_to_have_attribute("src", before_src, timeout=120_000)
        watch.wait_idle(120, since=moved_at)
        _settled_src(page, picture)
        after_value = _number_shown(page, readout)
        assert after_value > before_value, f"the guidance slider did not move: {before_value} -> {after_value}"
        after_digest = picture.evaluate(IMAGE_DIGEST_JS)

        assert after_digest != before_digest, "the panel's picture did not change after the slider moved"
        states = watch.states_since(moved_at)
        assert "busy" in states, "the kernel never went busy after the slider moved: who drew the picture?"
        assert not _news_prompts(page), f"JupyterLab shows a news or update prompt: {_news_prompts(page)}"

        # the server's own news and update endpoints answer without going out
        assert lab.api("/lab/api/news").get("news") == []
        assert lab.api("/lab/api/update").get("notification") is None
        print(f"\nJupyterLab session: {time.monotonic() - started:.0f} s in all, Run All {ran_in:.0f} s, "
              f"guidance {before_value} -> {after_value}")
    except BaseException:
        shot = tmp_path / "jupyterlab-failure.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot of the failure: {shot}\nserver log:\n{lab.server_log()}")
        raise
    finally:
        watch.stop()
    assert not lab.outside(), "the server or the kernel reached outside this machine:\n  " + "\n  ".join(lab.outside())
