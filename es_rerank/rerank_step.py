"""The rerank step: score one query's candidates, order and blend them, collapse, cut.

One path, called by :meth:`es_rerank.client.Searcher.rerank` (and so by searches and
evaluation) and by the HTTP server, which needs no :class:`~es_rerank.client.Searcher` for it.
The ordering and blending itself is pure (:func:`es_rerank.ranking.order_and_blend`); the
models that score are the rerankers (:mod:`es_rerank.rerankers`).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Sequence

from .config import Settings
from .errors import RerankerError, ValidationError
from .ranking import check_blend, collapse, fallback_count, order_and_blend
from .rerankers import BaseReranker, Reranker, as_reranker
from .rerankers.base import Scored
from .runtime import timed_load
from .types import Hit, Usage

logger = logging.getLogger(__name__)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


@dataclass(frozen=True)
class Reranked:
    """The second stage's answer: ordered (and collapsed, and cut) results and what it cost.

    Attributes:
        hits: Results, best first.
        reranked: Whether the reranker ordered them (False: retrieval order).
        reranker: The reranker's name, or None.
        error: Why reranking failed when failures were allowed, else None.
        usage: LLM usage of this call, or None.
        rerank_ms: Milliseconds spent scoring.
        fallbacks: Candidates whose score was unusable (non-finite) and sorted last.
        load_ms: Milliseconds spent loading the reranker first (0 when it was loaded already).
    """

    hits: tuple[Hit, ...]
    reranked: bool
    reranker: str | None
    error: str | None = None
    usage: Usage | None = None
    rerank_ms: float = 0.0
    fallbacks: int = 0
    load_ms: float = 0.0


class RerankStep:
    """The rerank step under one set of settings; thread-safe. Close it to stop its timeout threads.

    Args:
        settings: Blend, results, rank constant, rerank timeout and whether reranker failures
            fall back to retrieval order (``allow_reranker_failures``).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the threads that enforce the rerank timeout (a scoring still running is discarded)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def options(self, blend: str | None, blend_weight: float | None,
                results: str | None) -> tuple[str, float, str]:
        """``blend``, ``blend_weight`` and ``results``, the settings' where None, checked.

        Raises:
            ConfigError: Bad blend settings.
            ValidationError: ``results`` is neither ``documents`` nor ``chunks``.
        """
        blend = self.settings.blend if blend is None else blend
        blend_weight = self.settings.blend_weight if blend_weight is None else blend_weight
        results = self.settings.results if results is None else results
        check_blend(blend, blend_weight, self.settings.rank_constant)
        if results not in ("documents", "chunks"):
            raise ValidationError(f"results must be documents or chunks, got {results!r}", field="results")
        return blend, blend_weight, results

    def run(self, query: str, hits: Sequence[Hit], *, reranker: Reranker | None, final_k: int | None = None,
            blend: str | None = None, blend_weight: float | None = None, results: str | None = None) -> Reranked:
        """Score every hit against ``query``, order them (ties keep retrieval order), blend the two
        stages' orders if asked, collapse chunks to documents, and keep ``final_k``.

        Args:
            query: The query text.
            hits: Candidates in retrieval order.
            reranker: The reranker; None skips scoring (retrieval order).
            final_k: Results to keep (documents, or chunks with ``results="chunks"``); None keeps all.
            blend: ``none``, ``rrf`` or ``linear``. Defaults to ``settings.blend``.
            blend_weight: The reranker's weight in a ``linear`` blend. Defaults to ``settings.blend_weight``.
            results: ``documents`` or ``chunks``. Defaults to ``settings.results``.

        Raises:
            RerankerError: The reranker failed and ``settings.allow_reranker_failures`` is off.
        """
        blend, blend_weight, results = self.options(blend, blend_weight, results)
        chosen = as_reranker(reranker) if reranker else None
        ordered: list[Hit] = list(hits)
        reranked, error, usage, fallbacks, rerank_ms, load_s = False, None, None, 0, 0.0, 0.0
        if chosen is not None and ordered:
            t0 = time.perf_counter()
            try:
                scored, load_s = self._score(chosen, query, [h.passage for h in ordered])
                ordered = order_and_blend(ordered, scored.scores, method=blend, alpha=blend_weight,
                                          rank_constant=self.settings.rank_constant)
                fallbacks = fallback_count(ordered)
                usage = scored.usage
                reranked = True
            except Exception as e:  # any backend failure: a model, a network, a bug
                if not self.settings.allow_reranker_failures:
                    if isinstance(e, RerankerError):
                        raise
                    raise RerankerError(f"reranker {chosen.name} failed: {e}", reranker=chosen.name) from e
                error = self.settings.redact(f"{type(e).__name__}: {e}")
                logger.warning("reranker failed, returning the retrieval order: %s", error)
                ordered = list(hits)
            rerank_ms = _ms(time.perf_counter() - t0 - load_s)  # scoring only: a first call's loading is apart
            if fallbacks:
                usage = (usage or Usage()) + Usage(fallbacks=fallbacks)
        if results == "documents":
            ordered = collapse(ordered, limit=final_k)
        elif final_k is not None:
            ordered = ordered[:final_k]
        return Reranked(tuple(ordered), reranked, chosen.name if chosen is not None else None, error, usage,
                        rerank_ms, fallbacks, _ms(load_s))

    def _score(self, reranker: BaseReranker, query: str, texts: list[str]) -> tuple[Scored, float]:
        """The scores and the seconds spent loading the reranker first (within the rerank timeout)."""
        def load_and_score() -> tuple[Scored, float]:
            load_s = timed_load(reranker)
            return reranker.score_with_usage(query, texts), load_s

        timeout = self.settings.rerank_timeout
        if timeout is None:
            return load_and_score()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="es-rerank")
            pool = self._pool
        future = pool.submit(load_and_score)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            # the worker cannot be interrupted; its result is discarded when it ends
            raise RerankerError(f"reranker {reranker.name} took longer than {timeout:g}s (ES_RERANK_RERANK_TIMEOUT)",
                                reranker=reranker.name) from None
