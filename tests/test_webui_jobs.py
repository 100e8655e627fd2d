"""The web UI's queue under load: jobs in order, one at a time; progress, interrupt and skip while a job runs.

A job is held at a chosen step by a gate (a callback that waits), so every check of a running job
looks at a job that is known to be running: the tests wait for the state they check, never race it.
The server is uvicorn in a thread (`BackgroundServer`), so clients are real sockets that can hang up.
"""

import base64
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image

from diffusion_notes import pretrained
from diffusion_notes.practice.webui.api import create_api
from diffusion_notes.practice.webui.app import BackgroundServer
from diffusion_notes.practice.webui.generate import Settings
from diffusion_notes.practice.webui.jobs import JobQueue
from diffusion_notes.practice.webui.models import ModelRegistry
from diffusion_notes.practice.webui.state import WebUIState

PROMPT = "a small red circle on the left"
WAIT = 60  # seconds a test waits for a state before it fails


@pytest.fixture(scope="module")
def state(pipe):
    return WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet")))


@pytest.fixture(scope="module")
def server(state):
    server = BackgroundServer(create_api(state))
    yield server
    server.close()


class Gate:
    """A job's callback that stops it at (batch, step) until released (`reached` says it is there; None: never)."""

    def __init__(self, at: tuple[int, int] | None, log: list, job: int):
        self.at, self.log, self.job = at, log, job
        self.reached, self.release = threading.Event(), threading.Event()
        self.seen = []  # (batch, step) of every step, in order

    def __call__(self, i, t, x, x0_hat):
        batch = 0 if not self.seen else self.seen[-1][0] + (i <= self.seen[-1][1])  # the step went back: a new batch
        self.seen.append((batch, i))
        self.log.append((self.job, batch, i))
        if (batch, i) == self.at:
            self.reached.set()
            assert self.release.wait(WAIT), "the test never released the gate"


class Gates(list):
    """The gates of the jobs the state ran, in the order they asked; a new job's gate stops it at `at`."""

    at: tuple[int, int] | None = (0, 0)

    def __init__(self):
        super().__init__()
        self.log = []  # (job, batch, step) of every step of every job, in the order they ran


@pytest.fixture
def gated(state, monkeypatch):
    """Every job the state runs gets a Gate as its callback (stopping it at `gates.at`); returns the gates."""
    gates, run = Gates(), state.run

    def run_gated(settings, checkpoint=None, callback=None, save=None):
        gate = Gate(gates.at, gates.log, len(gates))
        gates.append(gate)
        return run(settings, checkpoint, callback=gate, save=save)

    monkeypatch.setattr(state, "run", run_gated)
    yield gates
    for gate in gates:
        gate.release.set()


def wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT} s for {what}"
        time.sleep(0.01)


def in_thread(fn, *args):
    out = {}
    thread = threading.Thread(target=lambda: out.update(value=fn(*args)), daemon=True)
    thread.start()
    return thread, out


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=int)


def post(server, payload: dict, path: str = "txt2img") -> requests.Response:
    return requests.post(f"{server.url}/sdapi/v1/{path}", json=payload, timeout=WAIT)


def test_jobs_run_one_at_a_time_in_the_order_they_came(state, gated):
    """modules/call_queue.py, wrap_queued_call: one job holds the queue lock at a time; ours also keeps their order."""
    first, _ = in_thread(state.run, Settings(prompt=PROMPT, steps=2, seed=0))
    wait_for(lambda: gated and gated[0].reached.is_set(), "the first job to hold the queue")
    gated.at = None  # the jobs after it run through
    threads = []
    for k in range(1, 5):  # each asks once the one before it is waiting, so the order of asking is known
        threads.append(in_thread(state.run, Settings(prompt=PROMPT, steps=2, seed=k)))
        wait_for(lambda k=k: state.jobs.queue.pending == k + 1, f"job {k} to wait its turn")
    assert all(not gate.seen for gate in gated[1:])  # nobody ran while the first job held the queue
    gated[0].release.set()
    for thread, _ in [(first, None), *threads]:
        thread.join(WAIT)
    assert [out["value"].seeds[0] for _, out in threads] == [1, 2, 3, 4]
    # every step of each job came after every step of the job before it, in the order the jobs asked
    assert [job for job, _, _ in gated.log] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert state.jobs.queue.pending == 0


def test_progress_while_a_job_runs(state, server, gated):
    """modules/api/api.py, Api.progressapi: progress = 0.01 + job_no / job_count + step / (job_count * steps)."""
    idle = requests.get(f"{server.url}/sdapi/v1/progress", timeout=WAIT).json()
    assert idle["progress"] == 0 and idle["eta_relative"] == 0 and idle["state"]["job_count"] == 0
    job, out = in_thread(post, server, {"prompt": PROMPT, "steps": 3, "n_iter": 2, "seed": 7})
    wait_for(lambda: gated and gated[0].reached.is_set(), "the job to reach its first step")
    body = requests.get(f"{server.url}/sdapi/v1/progress", timeout=WAIT).json()
    s = body["state"]
    assert (s["job"], s["job_no"], s["job_count"], s["sampling_step"], s["sampling_steps"]) == ("txt2img", 0, 2, 1, 3)
    assert body["progress"] == pytest.approx(0.01 + 0 / 2 + 1 / (2 * 3))
    assert body["eta_relative"] > 0 and not s["interrupted"] and not s["skipped"]
    preview = pixels(body["current_image"])
    assert preview.shape == (32, 32, 3)
    assert np.array_equal(preview, np.asarray(state.jobs.progress.decoded()[0], dtype=int))
    quiet = requests.get(f"{server.url}/sdapi/v1/progress?skip_current_image=true", timeout=WAIT).json()
    assert quiet["current_image"] is None and quiet["state"]["sampling_step"] == 1
    gated[0].release.set()
    job.join(WAIT)
    assert out["value"].status_code == 200 and len(out["value"].json()["images"]) == 2
    after = requests.get(f"{server.url}/sdapi/v1/progress", timeout=WAIT).json()
    assert after["progress"] == 0 and after["state"]["job_count"] == 0 and after["current_image"] is None


def test_interrupt_stops_the_job_and_returns_the_stopped_batchs_preview(state, server, gated):
    """modules/sd_samplers_kdiffusion.py, launch_sampling: an interrupted batch returns its last latent; the
    following batches do not run (modules/processing.py, process_images_inner: `if state.interrupted: break`)."""
    job, out = in_thread(post, server, {"prompt": PROMPT, "steps": 4, "n_iter": 3, "seed": 11})
    wait_for(lambda: gated and gated[0].reached.is_set(), "the job to reach its first step")
    preview = requests.get(f"{server.url}/sdapi/v1/progress", timeout=WAIT).json()["current_image"]
    assert requests.post(f"{server.url}/sdapi/v1/interrupt", timeout=WAIT).json() == {}
    assert requests.get(f"{server.url}/sdapi/v1/progress", timeout=WAIT).json()["state"]["interrupted"] is True
    gated[0].release.set()
    job.join(WAIT)
    body = out["value"].json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 1 and info["all_seeds"] == [11] and gated[0].seen == [(0, 0)]
    assert np.array_equal(pixels(body["images"][0]), pixels(preview))
    gated.at = None
    again = post(server, {"prompt": PROMPT, "steps": 2, "n_iter": 2, "seed": 11})  # the next job runs whole
    assert again.status_code == 200 and len(again.json()["images"]) == 2


def test_skip_stops_one_batch_and_the_job_goes_on(state, server, gated):
    """modules/processing.py, process_images_inner: a skipped batch keeps its last latent, the next batch runs."""
    payload = {"prompt": PROMPT, "steps": 3, "n_iter": 3, "seed": 20, "sampler_name": "Euler a"}
    gated.at = None
    whole = post(server, payload).json()["images"]
    gated.at = (1, 1)
    job, out = in_thread(post, server, payload)
    wait_for(lambda: len(gated) == 2 and gated[1].reached.is_set(), "the job to reach batch 2, step 2")
    preview = requests.get(f"{server.url}/sdapi/v1/progress", timeout=WAIT).json()
    assert preview["state"]["job_no"] == 1
    assert requests.post(f"{server.url}/sdapi/v1/skip", timeout=WAIT).json() == {}
    gated[1].release.set()
    job.join(WAIT)
    skipped = out["value"].json()["images"]
    assert len(skipped) == 3 and json.loads(out["value"].json()["info"])["all_seeds"] == [20, 21, 22]
    assert np.array_equal(pixels(skipped[0]), pixels(whole[0]))
    assert np.array_equal(pixels(skipped[2]), pixels(whole[2]))  # the batch after the skipped one is whole
    assert np.array_equal(pixels(skipped[1]), pixels(preview["current_image"]))
    assert not np.array_equal(pixels(skipped[1]), pixels(whole[1]))


def test_twenty_clients_at_once_get_the_pictures_of_the_same_jobs_run_one_by_one(server, capsys):
    """modules/call_queue.py: jobs queued behind one lock; each job's pictures depend on its own settings only."""
    samplers = ["Euler a", "DPM++ 2M", "DDIM", "Euler"]
    jobs = [{"prompt": PROMPT if k % 2 else "a large blue square at the top", "steps": 2 + k % 2, "seed": 100 + k,
             "sampler_name": samplers[k % 4], "batch_size": 1 + k % 3} for k in range(20)]
    start = time.monotonic()
    threads = [in_thread(post, server, job) for job in jobs]
    for thread, _ in threads:
        thread.join(WAIT * 2)
    together = time.monotonic() - start
    answers = [out.get("value") for _, out in threads]
    failures = [k for k, r in enumerate(answers) if r is None or r.status_code != 200]
    start = time.monotonic()
    alone = [post(server, job) for job in jobs]
    one_by_one = time.monotonic() - start
    with capsys.disabled():
        print(f"\nload: 20 clients, {sum(j['batch_size'] for j in jobs)} images, {together:.1f} s at once, "
              f"{one_by_one:.1f} s one by one, {len(failures)} failures")
    assert failures == []
    for k, (r, a) in enumerate(zip(answers, alone)):
        got, want = r.json()["images"], a.json()["images"]
        assert len(got) == jobs[k]["batch_size"] and len(got) == len(want)
        assert all(np.array_equal(pixels(g), pixels(w)) for g, w in zip(got, want)), k


def test_a_client_that_hangs_up_mid_job_does_not_wedge_the_queue(state, server, gated):
    """A client gone while its job runs, or while it waits its turn: the queue goes on with the next job."""
    body = json.dumps({"prompt": PROMPT, "steps": 3, "seed": 1}).encode()
    request = (f"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    host, port = server.url.removeprefix("http://").split(":")
    running = socket.create_connection((host, int(port)))
    running.sendall(request)
    wait_for(lambda: gated and gated[0].reached.is_set(), "the first client's job to run")
    gated.at = None  # the jobs after it run through
    waiting = socket.create_connection((host, int(port)))
    waiting.sendall(request)
    wait_for(lambda: state.jobs.queue.pending == 2, "the second client's job to wait its turn")
    running.close()
    waiting.close()
    gated[0].release.set()
    r = post(server, {"prompt": PROMPT, "steps": 2, "seed": 3})
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    wait_for(lambda: state.jobs.queue.pending == 0, "the queue to empty")
    assert requests.get(f"{server.url}/sdapi/v1/progress", timeout=WAIT).json()["state"]["job_count"] == 0


def test_a_thread_that_stops_waiting_gives_up_its_turn():
    """A job that stops waiting (an exception while it waits) gives up its ticket: the jobs behind it still run."""
    queue, order, stop = JobQueue(), [], threading.Event()
    wait = queue._changed.wait

    def wait_or_stop(timeout=None):  # the quitter's wait ends in an exception once `stop` is set
        if threading.current_thread().name == "quitter" and stop.is_set():
            raise KeyboardInterrupt("stopped waiting")
        return wait(0.01)

    queue._changed.wait = wait_or_stop
    queue.__enter__()  # a job holds the queue
    quitter = threading.Thread(target=lambda: pytest.raises(KeyboardInterrupt, queue.__enter__), name="quitter")
    quitter.start()
    wait_for(lambda: queue.pending == 2, "the quitter to wait")
    last = threading.Thread(target=lambda: (queue.__enter__(), order.append("last"), queue.__exit__()))
    last.start()
    wait_for(lambda: queue.pending == 3, "the last job to wait")
    stop.set()
    quitter.join(WAIT)
    queue.__exit__()
    last.join(WAIT)
    assert order == ["last"] and queue.pending == 0


def test_api_jobs_save_only_when_asked_and_never_over_another_file(pipe, tmp_path):
    """modules/api/api.py: txt2img saves when save_images is true (do_not_save_samples otherwise); file names
    are modules/images.py, save_image: `{sequence number:05}-{seed}` (get_next_sequence_number)."""
    state = WebUIState(ModelRegistry(pipe, pretrained.verify("ldm_unet")), outputs_dir=tmp_path)
    settings = dict(prompt=PROMPT, steps=1, seed=5)
    assert state.run(Settings(**settings), save=False).paths == []
    paths = [p for _ in range(3) for p in state.run(Settings(**settings)).paths]  # the app: saves by default
    assert [p.name for p in paths] == ["00000-5.png", "00001-5.png", "00002-5.png"]
    (tmp_path / "txt2img-images" / "00007-9.png").write_bytes(b"someone else's")
    assert state.run(Settings(**settings), save=True).paths[0].name == "00008-5.png"
    assert (tmp_path / "txt2img-images" / "00007-9.png").read_bytes() == b"someone else's"


def test_a_word_the_model_never_saw_is_named_in_the_warnings(server):
    r = post(server, {"prompt": "a pink circle on the left", "negative_prompt": "a dog", "steps": 1, "seed": 1})
    warnings = json.loads(r.json()["info"])["warnings"]
    assert r.status_code == 200 and len(warnings) == 2
    assert '"pink"' in warnings[0] and "the prompt" in warnings[0] and '"dog"' in warnings[1]
    plain = post(server, {"prompt": "a (small:1.2) red circle on the left AND a blue square", "steps": 1})
    assert json.loads(plain.json()["info"])["warnings"] == []


def test_a_script_polls_progress_and_interrupts_through_the_webuiapi_client(state, server, gated):
    """What a script written for A1111 does with `webuiapi`: start a job, poll `get_progress()` while it runs,
    `interrupt()` it; the job comes back with the batch it stopped, and the client sees the state change."""
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1")
    job, out = in_thread(lambda: api.txt2img(prompt=PROMPT, steps=4, n_iter=2, seed=5, width=32, height=32))
    wait_for(lambda: gated and gated[0].reached.is_set(), "the job to reach its first step")
    polled = api.get_progress()
    assert polled["state"]["job_count"] == 2 and polled["state"]["sampling_step"] == 1 and polled["progress"] > 0.01
    assert polled["current_image"] is not None and polled["eta_relative"] > 0
    assert api.interrupt() == {}
    assert api.get_progress()["state"]["interrupted"] is True
    gated[0].release.set()
    job.join(WAIT)
    result = out["value"]
    assert len(result.images) == 1 and result.info["all_seeds"] == [5]
    gated.at = None
    assert api.get_progress()["state"]["job_count"] == 0  # the queue is free again
