"""The web UI's queue and the progress of its one running job, as the web UI's `shared.state` keeps them.

    with jobs.queue:                                  # waits its turn: one job at a time, in the order asked
        jobs.progress.begin("txt2img", n_iter, steps, pipe.decode_latents)
        generate(..., callback=jobs.progress.watch())  # each step: the step count and the x0 prediction
        jobs.progress.next_job()                      # after each batch
        jobs.progress.end()

`/sdapi/v1/progress` reads `Progress.response()` while the job runs: the fraction done, the time left,
the counters and a preview, the decoded x0 prediction of the last step. `interrupt()` stops the job
after the step that is running, `skip()` stops the current batch and goes on with the next; the
batch that was stopped keeps the preview's pictures, as the web UI returns its last latent.
"""

from __future__ import annotations

import threading
import time

import torch
from PIL import Image

from diffusion_notes.data.images import to_pil


class Interrupted(Exception):
    """Raised from the sampler's callback when the user interrupts the job or skips the batch."""


class JobQueue:
    """A lock that lets jobs through one at a time, in the order they asked (a ticket lock): `with queue:`.

    A plain `threading.Lock` lets any waiting thread in when it is released; the web UI's queue runs
    jobs in the order they came. A thread that stops waiting (an exception while it waits) gives up
    its ticket, so the jobs behind it still get their turn.
    """

    def __init__(self):
        self._changed = threading.Condition()
        self._next = 0  # the ticket the next job to ask gets
        self._serving = 0  # the ticket whose job may run
        self._abandoned: set[int] = set()

    def __enter__(self):
        with self._changed:
            ticket, self._next = self._next, self._next + 1
            try:
                while ticket != self._serving:
                    self._changed.wait()
            except BaseException:
                self._abandoned.add(ticket)
                raise
        return self

    def __exit__(self, *exc) -> None:
        with self._changed:
            self._serving += 1
            while self._serving in self._abandoned:
                self._abandoned.discard(self._serving)
                self._serving += 1
            self._changed.notify_all()

    @property
    def pending(self) -> int:
        """The jobs running or waiting."""
        return self._next - self._serving - len(self._abandoned)


class Progress:
    """The running job's counters, as the web UI's `shared.state`: job, job_no of job_count, step of steps."""

    def __init__(self):
        self.job, self.job_no, self.job_count, self.job_timestamp = "", 0, 0, "0"
        self.sampling_step, self.sampling_steps = 0, 0
        self.interrupted = self.skipped = False
        self.time_start, self.textinfo = None, None
        self.latent = None  # the last step's x0 prediction, (B, 4, 8, 8)
        self._decode = None
        self._preview = (None, None)  # (the latent it was decoded from, the image)

    def begin(self, job: str, job_count: int, steps: int, decode=None) -> None:
        """A job starts: `job_count` batches of `steps` steps; `decode(latents) -> images` draws the preview."""
        self.job, self.job_no, self.job_count = job, 0, job_count
        self.job_timestamp = time.strftime("%Y%m%d%H%M%S")
        self.sampling_step, self.sampling_steps = 0, steps
        self.interrupted = self.skipped = False
        self.time_start, self.textinfo = time.time(), None
        self.latent, self._decode, self._preview = None, decode, (None, None)

    def next_job(self) -> None:
        """A batch is done."""
        self.job_no += 1
        self.sampling_step = 0
        self.skipped = False

    def end(self) -> None:
        self.job, self.job_count = "", 0
        self.latent, self._decode = None, None

    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        self.skipped = True

    def watch(self, then=None):
        """The sampler's callback(i, t, x_t, x0_hat): counts the step, keeps x0_hat, stops when asked."""
        def callback(i, t, x, x0_hat):
            self.sampling_step = min(i + 1, self.sampling_steps)
            self.latent = x0_hat.detach()
            if then is not None:
                then(i, t, x, x0_hat)
            if self.interrupted or self.skipped:
                raise Interrupted("interrupted" if self.interrupted else "skipped")
        return callback

    def decoded(self) -> list[Image.Image]:
        """The last x0 prediction as pictures (the preview; a stopped batch's images)."""
        latent, decode = self.latent, self._decode
        if latent is None or decode is None:
            return []
        with torch.no_grad():
            return to_pil(decode(latent).cpu())  # (B, 3, 32, 32) -> B pictures

    def preview(self) -> Image.Image | None:
        """The batch's previews side by side, decoded again only when a step has passed."""
        latent = self.latent
        if latent is None:
            return None
        if self._preview[0] is not latent:
            images = self.decoded()
            if not images:
                return None
            row = Image.new("RGB", (sum(im.width for im in images), images[0].height))
            for k, im in enumerate(images):
                row.paste(im, (k * im.width, 0))
            self._preview = (latent, row)
        return self._preview[1]

    def dict(self) -> dict:
        return {"skipped": self.skipped, "interrupted": self.interrupted, "stopping_generation": False,
                "job": self.job, "job_count": self.job_count, "job_timestamp": self.job_timestamp,
                "job_no": self.job_no, "sampling_step": self.sampling_step, "sampling_steps": self.sampling_steps}

    def fraction(self) -> tuple[float, float]:
        """(progress, eta_relative) as the web UI's progress API reckons them.

        progress = 0.01 + job_no / job_count + (1 / job_count) (step / steps), at most 1; the time left
        is the time so far stretched to the whole job: elapsed / progress - elapsed.
        """
        if self.job_count == 0 or self.time_start is None:
            return 0.0, 0.0
        done = 0.01 + self.job_no / self.job_count
        if self.sampling_steps > 0:
            done += self.sampling_step / (self.job_count * self.sampling_steps)
        elapsed = time.time() - self.time_start
        return min(done, 1.0), elapsed / done - elapsed


class Jobs:
    """The queue and the progress of the job it lets through."""

    def __init__(self):
        self.queue = JobQueue()
        self.progress = Progress()
