"""Explanation jobs: a bounded queue, one worker thread that runs them off the event loop, their states and
progress, cancel between chunks and methods, and the finished ones kept in a bounded LRU."""
from __future__ import annotations

import queue
import re
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from ..errors import one_line

JOB_ID = re.compile(r"[0-9a-f]{32}")
FINISHED = ("done", "cancelled", "error")


class Busy(Exception):
    """The queue is full."""


class Cancelled(Exception):
    """Raised inside a job's work at its next progress report once it was cancelled."""


@dataclass
class Job:
    """One request's work: ``work(job)`` runs on the worker thread, appends to ``results`` and reports progress
    with :meth:`advance`."""
    work: Callable[["Job"], None]
    total: int
    command: str
    model: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "queued"
    done: int = 0
    error: str | None = None
    target: dict | None = None
    warnings: list = field(default_factory=list)    # one line each, for the page to show beside the maps
    results: list = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def advance(self, count: int = 1) -> None:
        """``count`` more rows explained; stops the work here when the job was cancelled."""
        self.done += count
        self.check()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()

    def finish(self, state: str, error: str | None = None) -> None:
        self.state, self.error = state, error
        self.finished.set()


class Jobs:
    """A queue of at most ``queue_size`` waiting jobs, one worker thread, and the last ``keep`` jobs by id."""

    def __init__(self, queue_size: int = 8, keep: int = 64):
        self.waiting: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self.known: OrderedDict[str, Job] = OrderedDict()
        self.keep = keep
        self.lock = threading.Lock()
        self.worker = threading.Thread(target=self._run, name="vitx-serve-worker", daemon=True)
        self.worker.start()

    def submit(self, job: Job) -> Job:
        """Queue ``job``, or raise :class:`Busy` when the queue is full."""
        try:
            self.waiting.put_nowait(job)
        except queue.Full:
            raise Busy(f"busy: {self.waiting.maxsize} explanation jobs are waiting; try again shortly") from None
        with self.lock:
            self.known[job.id] = job
            while len(self.known) > self.keep:   # the oldest finished job goes first; running ones stay
                oldest = next((key for key, old in self.known.items() if old.state in FINISHED), None)
                if oldest is None:
                    break
                del self.known[oldest]
        return job

    def get(self, job_id: str) -> Job | None:
        """The job of that id, or None (an id that is not one of ours, whatever it holds, finds nothing)."""
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            return None
        with self.lock:
            job = self.known.get(job_id)
            if job is not None:
                self.known.move_to_end(job_id)
            return job

    def cancel(self, job: Job) -> None:
        """A queued job is cancelled at once; a running one at its next chunk or method."""
        job.cancelled.set()
        if job.state == "queued":
            job.finish("cancelled")

    def _run(self) -> None:
        while True:
            job = self.waiting.get()
            if job.cancelled.is_set():
                job.finish("cancelled")
                continue
            job.state = "running"
            try:
                job.work(job)
                job.finish("cancelled" if job.cancelled.is_set() else "done")
            except Cancelled:
                job.finish("cancelled")
            except Exception as err:   # noqa: BLE001  the worker outlives any job; the job says what went wrong
                job.finish("error", one_line(err))
