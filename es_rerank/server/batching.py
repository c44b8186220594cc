"""Micro-batching: the (query, candidate) pairs of concurrent requests scored in one model call.

A cross-encoder reads each pair independently, so the pairs of several requests can share
a forward pass. :class:`PairBatcher` keeps one worker thread: the first pair list to arrive
waits up to ``wait_ms`` for others (or until ``max_pairs`` are queued, or until every request
in progress has queued its pairs: a lone request never waits), then one ``score_pairs`` call
scores them all and each request gets its share back. While the model runs, new requests
queue up and form the next batch without waiting, so under load batches grow by themselves.
Batches respect deadlines: with the model's measured time per pair, a batch never grows so
large that a request in it misses its deadline, and a request that cannot be scored in the
time it has left is dropped unscored rather than computed for nobody.

:class:`BatchedReranker` is the per-request face of a batcher: a
:class:`~es_rerank.rerankers.BaseReranker` that the one rerank step,
:meth:`es_rerank.rerank_step.RerankStep.run`, calls like any other reranker.

Example:
    >>> from es_rerank.rerankers.base import BaseReranker
    >>> class Length(BaseReranker):
    ...     name = "length"
    ...     def score(self, query, texts):
    ...         return [float(len(t)) for t in texts]
    >>> with PairBatcher(Length(), wait_ms=1) as batcher:
    ...     BatchedReranker(batcher).score("q", ["a", "abc"])
    [1.0, 3.0]
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import ConfigError, RerankerError
from ..rerankers.base import BaseReranker

logger = logging.getLogger(__name__)

DEFAULT_MAX_PAIRS = 512


@dataclass
class _Job:
    pairs: list[tuple[str, str]]
    deadline: float | None
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.monotonic)


class PairBatcher:
    """Scores pairs from many threads in shared ``score_pairs`` calls on one worker thread.

    Args:
        reranker: The reranker whose ``score_pairs`` does the work (a cross-encoder, or a
            :class:`~es_rerank.rerankers.CachedReranker` around one).
        wait_ms: How long the first pairs wait for company when the worker is idle.
        max_pairs: Pairs per model call at most (a request larger than this is scored alone).
            Defaults to 512.
        on_batch: Called after each model call with ``(pairs, seconds)`` (metrics).
        in_flight: How many requests are in progress (the server's admitted requests): once
            that many have queued pairs, nobody else is coming and the batch starts without
            waiting. Defaults to None (always wait up to ``wait_ms``).

    Raises:
        ConfigError: ``wait_ms`` < 0 or ``max_pairs`` < 1.
    """

    def __init__(self, reranker: BaseReranker, *, wait_ms: float, max_pairs: int = DEFAULT_MAX_PAIRS,
                 on_batch: Callable[[int, float], None] | None = None, in_flight: Callable[[], int] | None = None):
        if wait_ms < 0:
            raise ConfigError(f"batch wait must be >= 0 ms, got {wait_ms}")
        if max_pairs < 1:
            raise ConfigError(f"max_pairs must be >= 1, got {max_pairs}")
        self.reranker = reranker
        self.wait = wait_ms / 1000.0
        self.max_pairs = max_pairs
        self.on_batch = on_batch
        self.in_flight = in_flight
        self.batches = 0
        self.pairs_scored = 0
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pair_seconds: float | None = None  # moving average of the model's time per pair

    def __enter__(self) -> "PairBatcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def queued(self) -> int:
        """Requests waiting for the next batch."""
        with self._cond:
            return len(self._jobs)

    def submit(self, pairs: Sequence[tuple[str, str]], *, deadline: float | None = None) -> Future:
        """Queue ``pairs``; the future holds their scores, in order.

        Args:
            pairs: (query, text) pairs of one request.
            deadline: ``time.monotonic()`` after which the pairs are no longer worth scoring
                (the request has given up); they then fail with ``TimeoutError``.

        Raises:
            RerankerError: The batcher is closed.
        """
        job = _Job(list(pairs), deadline)
        if not job.pairs:
            job.future.set_result([])
            return job.future
        with self._cond:
            if self._closed:
                raise RerankerError("the pair batcher is closed", reranker=self.reranker.name)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="es-rerank-batcher", daemon=True)
                self._thread.start()
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        """Stop the worker after the batch in progress; queued pairs fail."""
        with self._cond:
            self._closed = True
            pending = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(RerankerError("the server is shutting down", reranker=self.reranker.name))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _take(self) -> tuple[list[_Job], list[_Job]] | None:
        """The next batch and the hopeless jobs (None once closed): waits for the first job,
        then for company."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            until = self._jobs[0].queued + self.wait
            while not self._closed and sum(len(j.pairs) for j in self._jobs) < self.max_pairs:
                left = until - time.monotonic()
                if left <= 0 or (self.in_flight is not None and len(self._jobs) >= self.in_flight()):
                    break
                self._cond.wait(left)
            if self._closed:
                return None
            return self._select(time.monotonic())

    def _select(self, now: float) -> tuple[list[_Job], list[_Job]]:
        """Queued jobs for the next model call, oldest first, and the jobs that cannot make it.

        Once the time per pair is known, a batch stops growing where one more request would
        make a request in it miss its deadline, and a request that could not finish in time
        even alone is dropped unscored (the compute goes to requests that can still be
        answered). Called with the lock held.
        """
        per_pair = self._pair_seconds
        batch: list[_Job] = []
        hopeless: list[_Job] = []
        count, budget = 0, math.inf
        while self._jobs:
            job = self._jobs[0]
            size = count + len(job.pairs)
            if batch and size > self.max_pairs:
                break
            left = math.inf if job.deadline is None else job.deadline - now
            if per_pair is not None:
                if len(job.pairs) * per_pair > left:
                    hopeless.append(self._jobs.popleft())
                    continue
                if batch and size * per_pair > min(budget, left):
                    break
            batch.append(self._jobs.popleft())
            count, budget = size, min(budget, left)
        return batch, hopeless

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            batch, hopeless = taken
            for job in hopeless:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(TimeoutError("the request's remaining time is too short to score its "
                                                          "pairs; dropped unscored"))
            now = time.monotonic()
            live = []
            for job in batch:
                if not job.future.set_running_or_notify_cancel():
                    continue
                if job.deadline is not None and now > job.deadline:
                    job.future.set_exception(TimeoutError("the request's time ran out before its pairs were scored"))
                    continue
                live.append(job)
            if not live:
                continue
            pairs = [p for job in live for p in job.pairs]
            started = time.perf_counter()
            try:
                scores = self.reranker.score_pairs(pairs)
                if len(scores) != len(pairs):
                    raise RerankerError(f"reranker {self.reranker.name} returned {len(scores)} scores for "
                                        f"{len(pairs)} pairs", reranker=self.reranker.name)
            except BaseException as e:  # noqa: BLE001 - every waiting request gets the failure
                for job in live:
                    job.future.set_exception(e)
                if not isinstance(e, Exception):
                    raise
                continue
            seconds = time.perf_counter() - started
            rate = seconds / len(pairs)
            self._pair_seconds = rate if self._pair_seconds is None else 0.7 * self._pair_seconds + 0.3 * rate
            self.batches += 1
            self.pairs_scored += len(pairs)
            start = 0
            for job in live:
                job.future.set_result([float(s) for s in scores[start:start + len(job.pairs)]])
                start += len(job.pairs)
            if self.on_batch is not None:
                self.on_batch(len(pairs), seconds)


class BatchedReranker(BaseReranker):
    """A reranker whose scoring goes through a :class:`PairBatcher` (one per request).

    Args:
        batcher: The shared batcher.
        deadline: ``time.monotonic()`` after which this request's pairs are dropped unscored.
    """

    def __init__(self, batcher: PairBatcher, *, deadline: float | None = None):
        self.batcher = batcher
        self.deadline = deadline
        self.name = batcher.reranker.name

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        future = self.batcher.submit([(query, t) for t in texts], deadline=self.deadline)
        timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        try:
            return future.result(timeout=timeout)
        except (FutureTimeout, TimeoutError):  # distinct classes before Python 3.11
            future.cancel()
            raise TimeoutError(f"reranker {self.name} did not score in time (ES_RERANK_SERVE_TIMEOUT)") from None
