"""One generation at a time on one loaded model, with a bounded queue in front of it.

A loaded model (llama.cpp context, onnxruntime-genai model) is not made for concurrent generations, and on an edge
machine one generation already uses every core. So requests run one after another on a single thread; at most
`queue` more may wait. The pieces of text go back to the asyncio side through a per-request queue as they are
made, so a slow reader never holds up the model: it only buffers its own (max_tokens-bounded) answer.

A request ends early, between two tokens, when its client went away (cancel), its time is up (TimedOut), or the
server is draining past its grace period (Draining).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from edgedistill.runtime import BundleError, Completion, ConstraintError, SamplingParams
from edgedistill.serve.errors import BadRequest, Busy, Draining, ServeError, TimedOut


_END = object()


class Job:
    """One request's generation: its pieces arrive on `queue`; `done` has the counts once it ends."""

    def __init__(self, prompt_ids: list[int], cfg: SamplingParams, deadline: float, timeout: float,
                 loop: asyncio.AbstractEventLoop):
        self.prompt_ids, self.cfg, self.deadline, self.timeout = prompt_ids, cfg, deadline, timeout
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.expired = False  # cancelled because its time ran out while the client waited
        self.done = Completion(prompt_tokens=len(prompt_ids))

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop has closed (the server stopped): nobody is listening
            self.cancelled.set()

    async def pieces(self):
        """The text pieces as they come; raises the ServeError the generation ended with. Leaving early (the
        client disconnected, the task was cancelled) stops the generation at its next token."""
        try:
            while True:
                left = self.deadline - time.monotonic()
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout=max(left, 0.001))
                except asyncio.TimeoutError:
                    self.expired = True
                    raise TimedOut(f"the request took longer than the server's timeout of {self.timeout:g} s "
                                   "(--timeout); ask for fewer tokens or try again when the server is less busy"
                                   ) from None
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancelled.set()

    async def text(self) -> str:
        return "".join([p async for p in self.pieces()])


class Worker:
    def __init__(self, model, queue: int, timeout: float):
        self.model, self.max_queue, self.timeout = model, queue, timeout
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgedistill-generate")
        self.lock = threading.Lock()
        self.pending = 0  # running + waiting
        self.durations: deque[float] = deque(maxlen=32)
        self.drain_deadline: float | None = None
        self.counts = {"completed": 0, "cancelled": 0, "rejected": 0, "timed_out": 0, "failed": 0}

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the recent mean generation time times the requests ahead."""
        mean = sum(self.durations) / len(self.durations) if self.durations else 1.0
        return int(min(60, max(1, math.ceil(mean * max(1, self.pending)))))

    def submit(self, prompt_ids: list[int], cfg: SamplingParams) -> Job:
        if self.drain_deadline is not None:
            raise Draining("the server is shutting down; send the request to another instance or retry later",
                           retry_after=5)
        with self.lock:
            if self.pending >= 1 + self.max_queue:
                self.counts["rejected"] += 1
                raise Busy(f"the server is busy: {self.pending} requests are running or waiting (1 + --queue "
                           f"{self.max_queue}); retry after the Retry-After seconds", retry_after=self.retry_after())
            self.pending += 1
        job = Job(prompt_ids, cfg, time.monotonic() + self.timeout, self.timeout, asyncio.get_running_loop())
        try:
            self.executor.submit(self._run, job)
        except RuntimeError:  # the executor was shut down
            with self.lock:
                self.pending -= 1
            raise Draining("the server is shutting down", retry_after=5) from None
        return job

    def _run(self, job: Job) -> None:
        start, outcome, last = time.monotonic(), "completed", _END
        try:
            outcome, last = self._generate(job)
        except ServeError as e:
            outcome, last = "failed", e
        except Exception as e:  # the runtime refused the request (e.g. an ONNX prompt over its context)
            outcome = "failed"
            refused = isinstance(e, (BundleError, ConstraintError))
            last = BadRequest(str(e)) if refused else ServeError(f"generation failed: {e}")
        finally:
            # the slot is free before the client hears the end: its next request never finds the queue full
            with self.lock:
                self.pending -= 1
                self.counts[outcome] += 1
                if outcome == "completed":
                    self.durations.append(time.monotonic() - start)
            if last is not None:
                job.put(last)

    def _generate(self, job: Job):
        """(outcome, the item that ends the job's queue or None)."""
        gone = lambda: ("timed_out" if job.expired else "cancelled", None)  # noqa: E731
        if job.cancelled.is_set():
            return gone()
        for piece in self.model.stream_ids(job.prompt_ids, job.cfg, job.done):
            job.put(piece)
            now = time.monotonic()
            if job.cancelled.is_set():
                return gone()
            if now > job.deadline:
                return "timed_out", TimedOut(f"the generation took longer than the server's timeout of "
                                             f"{job.timeout:g} s (--timeout); ask for fewer tokens")
            if self.drain_deadline is not None and now > self.drain_deadline:
                return "cancelled", Draining("the server shut down before this answer was complete (its shutdown "
                                             "grace period ran out); retry the request")
        return "completed", _END

    def drain(self, grace: float) -> None:
        """Refuse new requests; running ones may go on for `grace` seconds more."""
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + grace

    def close(self) -> None:
        self.drain(0)
        self.executor.shutdown(wait=True, cancel_futures=True)
