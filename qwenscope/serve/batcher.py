"""Dynamic batching: rows that arrive within a short window of each other are generated as one batch.

    batcher = Batcher(model, tokenizer, threading.Lock(), max_batch=16, max_queue=64, window=0.01)
    batcher.submit([Job(row, on_token=None, on_done=print)])     # from any thread; QueueFull past max_queue
    batcher.close()

One worker thread takes the oldest waiting row, waits until ``window`` seconds after that row arrived (or until
``max_batch`` rows wait), and generates up to ``max_batch`` rows in one ``generate_rows`` call, each with its own
steering and sampling. Rows that come while a batch runs wait for the next one (so under load the window costs
nothing: the oldest row has waited longer already). Each row's ``on_done`` gets its result as soon as that row stops,
not when the batch ends; ``on_token`` (optional) each of its tokens. A row whose cancel event is set before its batch
starts is dropped; an exception in a batch goes to every row of it that had not finished, and the worker carries on.
The worker holds ``lock`` while a batch runs, so other model work (``Server.exclusive``) never sees its hooks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from qwenscope.errors import QwenscopeError
from qwenscope.serve.rows import Row, RowResult, generate_rows

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """A row to generate and where its tokens and result go (called from the worker thread)."""

    row: Row
    on_token: Callable[[int], None] | None
    on_done: Callable[[RowResult | BaseException], None]
    arrived: float = field(default_factory=time.monotonic)


class QueueFull(QwenscopeError):
    """More rows wait than the queue holds."""


class Batcher:
    """The worker thread that batches rows; see the module doc."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        lock: threading.Lock,
        max_batch: int = 16,
        max_queue: int = 64,
        window: float = 0.01,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or window < 0:
            raise QwenscopeError(
                f"need max_batch >= 1, max_queue >= 1, window >= 0; got {max_batch}, {max_queue}, {window}"
            )
        self.model, self.tokenizer, self.lock = model, tokenizer, lock
        self.max_batch, self.max_queue, self.window = max_batch, max_queue, window
        self.batch_sizes: Counter[int] = Counter()
        """How many batches of each size ran."""
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="qwenscope-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Rows waiting for a batch (not counting the running one)."""
        return len(self._jobs)

    def submit(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` together, or none of them: ``QueueFull`` when they do not fit."""
        with self._cond:
            if self._closed:
                raise QwenscopeError("the server is shutting down; retry against a running one")
            if len(self._jobs) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self._jobs)} rows are waiting and the queue holds {self.max_queue}; retry later")
            self._jobs.extend(jobs)
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after its running batch; rows still waiting get an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._jobs[0].arrived + self.window
            while len(self._jobs) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return [self._jobs.popleft() for _ in range(min(self.max_batch, len(self._jobs)))]

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = []
            for job in batch:
                if job.row.cancel.is_set():
                    job.on_done(RowResult("", 0, "cancelled"))
                else:
                    live.append(job)
            if live:
                self._run(live)
        with self._cond:
            left, self._jobs = list(self._jobs), deque()
        for job in left:
            job.on_done(QwenscopeError("the server shut down before this request ran; retry against a running one"))

    def _run(self, jobs: list[Job]) -> None:
        done = [False] * len(jobs)

        def on_token(i: int, token: int) -> None:
            callback = jobs[i].on_token
            if callback is not None:
                callback(token)

        def on_finish(i: int, result: RowResult) -> None:
            done[i] = True
            jobs[i].on_done(result)

        streaming = any(j.on_token is not None for j in jobs)
        self.batch_sizes[len(jobs)] += 1
        try:
            with self.lock:
                generate_rows(
                    self.model, self.tokenizer, [j.row for j in jobs], on_token if streaming else None, on_finish
                )
        except Exception as e:  # handed to the rows' requests; the worker lives on
            logger.exception("a batch of %d rows failed", len(jobs))
            for i, job in enumerate(jobs):
                if not done[i]:
                    job.on_done(e)
