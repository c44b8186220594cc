"""The public client: hybrid retrieval from Elasticsearch, then reranking.

Example:
    >>> from es_rerank import Searcher
    >>> searcher = Searcher.from_env(index="help-centre")          # doctest: +SKIP
    >>> result = searcher.search("close my account", depth=50, final_k=3)  # doctest: +SKIP
    >>> [(h.doc_id, h.rerank_score, h.retrieval_rank) for h in result.hits]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Mapping, Sequence

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, Elasticsearch, NotFoundError

from . import queries
from .config import SEARCH_MODES, Settings, connect
from .embedding import Embedder, build_embedder
from .errors import ClusterError, ConfigError, IndexMissingError, RerankerError, ValidationError
from .fusion import reciprocal_rank_fusion
from .indexing import embedding_text
from .rerankers import Reranker, build_reranker
from .schema import check_mapping
from .types import Hit, SearchResult, Timings

logger = logging.getLogger(__name__)

DEFAULT_MAX_RESULT_WINDOW = 10_000


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _hits_from_response(resp: Mapping[str, Any]) -> list[Hit]:
    hits = []
    for rank, h in enumerate(resp["hits"]["hits"], start=1):
        src = h.get("_source", {})
        hits.append(Hit(
            chunk_id=h["_id"],
            doc_id=str(src.get("doc_id", h["_id"])),
            chunk=int(src.get("chunk", 0)),
            title=src.get("title", ""),
            text=src.get("text", ""),
            metadata=src.get("metadata") or {},
            retrieval_score=float(h.get("_score") or 0.0),
            retrieval_rank=rank,
        ))
    return hits


def fuse_hits(bm25: Sequence[Hit], knn: Sequence[Hit], *, rank_constant: int, window: int) -> list[Hit]:
    """Client-side RRF over two hit lists; each fused hit carries its RRF score and rank."""
    by_id: dict[str, Hit] = {}
    for h in list(knn) + list(bm25):
        by_id.setdefault(h.chunk_id, h)
    fused = reciprocal_rank_fusion(
        [[h.chunk_id for h in bm25], [h.chunk_id for h in knn]], rank_constant=rank_constant, window=window
    )
    out = []
    for rank, (cid, score) in enumerate(fused[:window], start=1):
        base = by_id[cid]
        out.append(Hit(base.chunk_id, base.doc_id, base.chunk, base.title, base.text, base.metadata,
                       retrieval_score=score, retrieval_rank=rank))
    return out


def rerank_hits(hits: Sequence[Hit], scores: Sequence[float], final_k: int) -> list[Hit]:
    """Order hits by reranker score (ties keep retrieval order) and keep the top ``final_k``."""
    if len(scores) != len(hits):
        raise RerankerError(f"reranker returned {len(scores)} scores for {len(hits)} candidates")
    order = sorted(range(len(hits)), key=lambda i: (-scores[i], hits[i].retrieval_rank))
    out = []
    for rank, i in enumerate(order[:final_k], start=1):
        h = hits[i]
        out.append(Hit(h.chunk_id, h.doc_id, h.chunk, h.title, h.text, h.metadata,
                       h.retrieval_score, h.retrieval_rank, rerank_score=float(scores[i]), rerank_rank=rank))
    return out


class Searcher:
    """Two-stage search over one es-rerank index.

    Retrieval fetches ``depth`` candidates (BM25, kNN, or both fused with RRF); the
    reranker scores each (query, candidate) pair and the best ``final_k`` are returned
    with both stages' scores and ranks. Safe to share between threads: the
    Elasticsearch client is thread-safe and model loading is guarded by a lock.

    Args:
        settings: Connection and pipeline settings. Defaults to ``Settings.from_env()``.
        es: An existing Elasticsearch client. Defaults to one built from ``settings``.
        embedder: Query embedder. Defaults to the sentence-transformers model in ``settings``.
        reranker: Reranker. Defaults to the cross-encoder in ``settings``.

    Example:
        >>> searcher = Searcher(Settings(index="help-centre"))   # doctest: +SKIP
        >>> searcher.search("refund for a double charge", final_k=3).hits[0].title  # doctest: +SKIP
    """

    def __init__(self, settings: Settings | None = None, *, es: Elasticsearch | None = None,
                 embedder: Embedder | None = None, reranker: Reranker | None = None):
        self.settings = settings if settings is not None else Settings.from_env()
        self.es = es if es is not None else connect(self.settings)
        self.embedder = embedder if embedder is not None else build_embedder(self.settings)
        self._reranker = reranker
        self._pool: ThreadPoolExecutor | None = None
        self._server_rrf: bool | None = None
        self._max_window: int | None = None
        self._index_checked = False
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, **overrides: Any) -> "Searcher":
        """A searcher configured from the environment, with keyword overrides."""
        return cls(Settings.from_env(**overrides))

    def __repr__(self) -> str:
        return f"Searcher(index={self.settings.index!r}, url={self.settings.safe_url!r})"

    @property
    def reranker(self) -> Reranker | None:
        """The reranker (built from ``settings.reranker`` on first use); None when that is ``none``."""
        if self._reranker is None and self.settings.reranker != "none":
            with self._lock:
                if self._reranker is None:
                    self._reranker = build_reranker(self.settings.reranker, self.settings)
        return self._reranker

    def _score(self, reranker: Reranker, query: str, hits: Sequence[Hit]) -> list[float]:
        texts = [embedding_text(h.title, h.text) for h in hits]
        timeout = self.settings.rerank_timeout
        if timeout is None:
            return reranker.score(query, texts)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="es-rerank")
        future = self._pool.submit(reranker.score, query, texts)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            # the worker cannot be interrupted; its result is discarded when it ends
            raise RerankerError(f"reranker {reranker.name} took longer than {timeout:g}s "
                                "(ES_RERANK_RERANK_TIMEOUT)") from None

    def load_models(self, *, rerank: bool = True) -> None:
        """Load the embedder (and the reranker) now, so that the first search's timings
        measure the search, not the model loading."""
        _ = self.embedder.dimensions
        if rerank and self.reranker is not None and hasattr(self.reranker, "load"):
            self.reranker.load()

    # -- validation -------------------------------------------------------------

    def max_result_window(self) -> int:
        """The index's ``index.max_result_window`` (read once)."""
        if self._max_window is None:
            index = self.settings.index
            try:
                resp = self._call(self.es.indices.get_settings, index=index, name="index.max_result_window",
                                  include_defaults=True)
            except NotFoundError:
                raise IndexMissingError(f"index {index!r} does not exist: create it with `es-rerank index PATH`") from None
            (entry,) = resp.body.values()
            raw = (entry.get("settings", {}).get("index", {}).get("max_result_window")
                   or entry.get("defaults", {}).get("index", {}).get("max_result_window")
                   or DEFAULT_MAX_RESULT_WINDOW)
            self._max_window = int(raw)
        return self._max_window

    def check_index(self) -> None:
        """Check once that the index fits the embedder (fields and vector dims).

        Raises:
            IndexMissingError: The index does not exist.
            MappingMismatchError: A field or the dims differ (the message names both dims).
        """
        if self._index_checked:
            return
        index = self.settings.index
        try:
            resp = self._call(self.es.indices.get_mapping, index=index)
        except NotFoundError:
            raise IndexMissingError(f"index {index!r} does not exist: create it with `es-rerank index PATH`") from None
        for entry in resp.body.values():
            check_mapping(index, entry["mappings"], dims=self.embedder.dimensions)
        self._index_checked = True

    def _validate(self, query: str, depth: int, final_k: int, mode: str) -> str:
        query = queries.validate_query(query)
        if mode not in SEARCH_MODES:
            raise ValidationError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
        if final_k < 1:
            raise ValidationError(f"final_k must be >= 1, got {final_k}")
        if depth < final_k:
            raise ValidationError(f"final_k must be <= depth, got {final_k} > {depth}: raise depth or lower final_k")
        self.check_index()
        window = self.max_result_window()
        if depth > window:
            raise ValidationError(f"depth {depth} exceeds the index's max_result_window ({window}): lower depth")
        return query

    # -- transport --------------------------------------------------------------

    def _call(self, fn, **kwargs):
        try:
            return fn(**kwargs)
        except ConnectionTimeout as e:
            raise ClusterError(f"Elasticsearch at {self.settings.safe_url} did not answer within "
                               f"{self.settings.request_timeout:g}s (ES_REQUEST_TIMEOUT)") from e
        except TransportConnectionError as e:
            raise ClusterError(f"cannot reach Elasticsearch at {self.settings.safe_url}: is it running? "
                               "(`es-rerank cluster start` or set ES_URL)") from e

    def _search(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        try:
            return self._call(self.es.search, index=self.settings.index, **body)
        except NotFoundError as e:
            raise IndexMissingError(f"index {self.settings.index!r} does not exist: "
                                    "create it with `es-rerank index PATH`") from e

    def _msearch(self, bodies: Sequence[Mapping[str, Any]]) -> tuple[int, list[Mapping[str, Any]]]:
        """Run the searches in one round trip; returns the server's ``took`` (ms) and the responses."""
        resp = self._call(self.es.msearch, searches=queries.msearch_searches(self.settings.index, bodies))
        out = []
        for r in resp["responses"]:
            if "error" in r:
                err = r["error"]
                if isinstance(err, dict) and err.get("type") == "index_not_found_exception":
                    raise IndexMissingError(f"index {self.settings.index!r} does not exist: "
                                            "create it with `es-rerank index PATH`")
                raise ClusterError(f"search failed: {err}")
            out.append(r)
        return int(resp.get("took", 0)), out

    # -- retrieval --------------------------------------------------------------

    def server_rrf_available(self) -> bool:
        """Whether the cluster runs the ``rrf`` retriever (detected once, then remembered)."""
        if self._server_rrf is None:
            # cosine similarity rejects a zero vector: probe with a unit vector
            body = queries.rrf_body("probe", [1.0] + [0.0] * (self.embedder.dimensions - 1), depth=1)
            try:
                self._search(body)
                self._server_rrf = True
            except ApiError as e:
                # unknown retriever (no rank-rrf module) or a license that lacks it
                logger.info("server-side RRF unavailable (%s); fusing in Python", e.message)
                self._server_rrf = False
        return self._server_rrf

    def retrieve(self, query: str, *, depth: int, mode: str = "hybrid",
                 filters: Mapping[str, Any] | None = None, fusion: str | None = None) -> tuple[list[Hit], Timings, str | None]:
        """First stage only: up to ``depth`` candidates in retrieval order.

        Returns:
            ``(hits, timings, fusion_used)`` with ``fusion_used`` None unless hybrid.
        """
        fusion = self.settings.fusion if fusion is None else fusion
        if fusion not in ("auto", "server", "client"):
            raise ConfigError(f"fusion must be auto, server or client, got {fusion!r}")
        t0 = time.perf_counter()
        vector = self.embedder.embed_query(query) if mode in ("hybrid", "knn") else None
        t1 = time.perf_counter()
        used = None
        if mode in ("bm25", "knn"):
            body = (queries.bm25_body(query, size=depth, filters=filters) if mode == "bm25"
                    else queries.knn_body(vector, size=depth, filters=filters))
            resp = self._search(body)
            took = resp.get("took", 0)
            hits = _hits_from_response(resp)
        else:
            use_server = fusion == "server" or (fusion == "auto" and self.server_rrf_available())
            if use_server:
                body = queries.rrf_body(query, vector, depth=depth, rank_constant=self.settings.rank_constant,
                                        filters=filters)
                resp = self._search(body)
                took = resp.get("took", 0)
                hits = _hits_from_response(resp)
                used = "server"
            else:
                took, (bm25_resp, knn_resp) = self._msearch([
                    queries.bm25_body(query, size=depth, filters=filters),
                    queries.knn_body(vector, size=depth, filters=filters),
                ])
                hits = fuse_hits(_hits_from_response(bm25_resp), _hits_from_response(knn_resp),
                                 rank_constant=self.settings.rank_constant, window=depth)
                used = "client"
        t2 = time.perf_counter()
        return hits, Timings(embed_ms=_ms(t1 - t0), retrieval_ms=_ms(t2 - t0), es_took_ms=float(took)), used

    # -- the two stages ---------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        depth: int | None = None,
        final_k: int | None = None,
        filters: Mapping[str, Any] | None = None,
        mode: str = "hybrid",
        fusion: str | None = None,
        rerank: bool = True,
    ) -> SearchResult:
        """Retrieve ``depth`` candidates, rerank them, return the best ``final_k``.

        Args:
            query: The user's question (plain text; never parsed as query syntax).
            depth: Candidates to retrieve and rerank. Defaults to ``settings.depth`` (50).
            final_k: Hits to return. Defaults to ``settings.final_k`` (5).
            filters: Metadata filters, applied to both BM25 and kNN (see
                :func:`es_rerank.queries.filter_clauses`). Defaults to none.
            mode: ``hybrid`` (default), ``bm25`` or ``knn``.
            fusion: ``auto``, ``server`` or ``client``. Defaults to ``settings.fusion``.
            rerank: False returns the retrieval order (no model runs). Defaults to True.

        Returns:
            A :class:`SearchResult` whose hits carry retrieval and rerank scores and ranks.

        Raises:
            ValidationError: Empty query, ``final_k`` < 1, ``final_k`` > ``depth``, or
                ``depth`` beyond the index's ``max_result_window``.
            IndexMissingError: The index does not exist.
            ClusterError: Elasticsearch is unreachable or too slow.
            RerankerError: The reranker failed to load, to score, or in time, and
                ``settings.allow_reranker_failures`` is off (when on, the retrieval order
                comes back with ``reranked=False`` and ``rerank_error`` saying why).
        """
        depth = self.settings.depth if depth is None else depth
        final_k = self.settings.final_k if final_k is None else final_k
        started = time.perf_counter()
        query = self._validate(query, depth, final_k, mode)
        candidates, timings, used = self.retrieve(query, depth=depth, mode=mode, filters=filters, fusion=fusion)
        rerank_ms = 0.0
        reranker = self.reranker if rerank else None
        reranked, error, usage = False, None, None
        hits = candidates[:final_k]
        if reranker is not None and candidates:
            before = reranker.usage() if hasattr(reranker, "usage") else None
            t0 = time.perf_counter()
            try:
                scores = self._score(reranker, query, candidates)
                hits = rerank_hits(candidates, scores, final_k)
                reranked = True
            except Exception as e:  # any backend failure: a model, a network, a bug
                if not self.settings.allow_reranker_failures:
                    if isinstance(e, RerankerError):
                        raise
                    raise RerankerError(f"reranker {reranker.name} failed: {e}") from e
                error = f"{type(e).__name__}: {e}"
                logger.warning("reranker failed, returning the retrieval order: %s", error)
            rerank_ms = _ms(time.perf_counter() - t0)
            if before is not None:
                after = reranker.usage()
                usage = {k: after[k] - before.get(k, 0) for k in after}
        total_ms = _ms(time.perf_counter() - started)
        return SearchResult(
            query=query,
            hits=tuple(hits),
            candidates=len(candidates),
            mode=mode,
            fusion=used,
            reranked=reranked,
            reranker=reranker.name if reranker is not None else None,
            timings=Timings(embed_ms=timings.embed_ms, retrieval_ms=timings.retrieval_ms,
                            es_took_ms=timings.es_took_ms, rerank_ms=rerank_ms, total_ms=total_ms),
            rerank_error=error,
            usage=usage,
        )
