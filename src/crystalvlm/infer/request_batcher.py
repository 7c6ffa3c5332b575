"""Concurrent requests into shared batches: one worker thread feeding the engine.

HTTP handlers `submit` jobs and await them. The worker takes the first waiting job, waits up to
`wait_s` for more to arrive (up to the engine's batch size), groups them by decoding settings (a
batch shares one strategy) and runs each group through `engine.generate`. Streamed text and the
final result are handed back to the event loop of the handler that asked for them, thread-safely.
A job cancelled (`cancel`, when its client has gone) is skipped if it is still waiting, and stops
at its next token if it is being generated.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from crystalvlm.infer.decoding.config import DecodingConfig
from crystalvlm.infer.engine import GenerationEngine, GenerationRequest, GenerationResult

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the server accepts."""


@dataclass
class Job:
    request: GenerationRequest
    config: DecodingConfig
    loop: asyncio.AbstractEventLoop
    result: asyncio.Future
    pieces: asyncio.Queue | None = None  # streamed text pieces, then None, when the client streams
    submitted: float = field(default_factory=time.monotonic)

    def push_piece(self, piece: str) -> None:
        if self.pieces is not None:
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, piece)

    def resolve(self, result: GenerationResult | None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.result.done():
                return
            if error is not None:
                self.result.set_exception(error)
            else:
                self.result.set_result(result)

        self.loop.call_soon_threadsafe(settle)
        if self.pieces is not None:
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, None)  # after every piece: the end


class RequestBatcher:
    def __init__(self, engine: GenerationEngine, wait_s: float = 0.005, max_pending: int = 1024) -> None:
        self.engine = engine
        self.wait_s = wait_s
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self.batches_run = 0
        self.largest_batch = 0
        self.cancelled = 0  # jobs cancelled by their handler (the client went away)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="crystalvlm-batcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    @property
    def pending(self) -> int:
        return self._jobs.qsize()

    # ------------------------------------------------------------------ submitting
    def submit(self, request: GenerationRequest, config: DecodingConfig, stream: bool) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(request, config, loop, loop.create_future(), asyncio.Queue() if stream else None)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._jobs.maxsize} requests are already waiting") from None
        return job

    def cancel(self, job: Job) -> None:
        """Stop working on `job`: skipped if still queued, stopped at its next token if running
        (nothing once it has finished). Call from the event loop the job was submitted on."""
        if job.result.done():
            return
        if job.request.cancel is None:
            job.request.cancel = threading.Event()
        if not job.request.cancel.is_set():
            job.request.cancel.set()
            self.cancelled += 1

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            jobs = [first]
            deadline = time.monotonic() + self.wait_s
            while len(jobs) < self.engine.batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = self._jobs.get(timeout=remaining)
                except queue.Empty:
                    break
                if job is None:
                    self._run(jobs)
                    return
                jobs.append(job)
            self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        live = [job for job in jobs if not (job.request.cancel is not None and job.request.cancel.is_set())]
        for job in jobs:
            if job not in live:
                job.resolve(None, asyncio.CancelledError())
        groups: dict[str, list[Job]] = {}
        for job in live:
            groups.setdefault(job.config.describe(), []).append(job)
        for group in groups.values():
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(group))
            try:
                results = self.engine.generate(
                    [job.request for job in group], group[0].config, listeners=[job.push_piece for job in group]
                )
            except Exception as error:  # handed to each waiting handler, which answers with an error
                log.exception("generation failed for a batch of %d", len(group))
                for job in group:
                    job.resolve(None, error)
                continue
            for job, result in zip(group, results):
                job.resolve(result)
