"""The public client: hybrid retrieval from the cluster, then reranking.

Example:
    >>> from es_rerank import Searcher
    >>> with Searcher.from_env(index="help-centre") as searcher:           # doctest: +SKIP
    ...     result = searcher.search("close my account", depth=50, final_k=3)
    >>> [(h.doc_id, h.rerank_score, h.retrieval_rank) for h in result.hits]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .config import SEARCH_MODES, Settings
from .embedding import Embedder, build_embedder
from .engines import Engine, FieldInfo, open_engine
from .engines.base import SOURCE_FIELDS
from .errors import ClusterError, ConfigError, IndexMissingError, RerankerError, ValidationError
from .pipelines import NO_RERANKING, Pipeline, Resolved, check_model, of_state
from .pipelines import resolve as resolve_pipeline
from .rerank_step import Reranked, RerankStep
from .rerankers import BaseReranker, Reranker, as_reranker, build_reranker
from .retrieval import FUSIONS, resolve, run, source_fields, text_plan  # noqa: F401 - FUSIONS re-exported
from .runtime import timed_load
from .types import Hit, SearchResult, Timings

logger = logging.getLogger(__name__)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def validate_query(query: Any) -> str:
    """The query stripped; a non-string or blank query is an error."""
    if not isinstance(query, str):
        raise ValidationError(f"query must be a string, got {type(query).__name__}", field="query")
    stripped = query.strip()
    if not stripped:
        raise ValidationError("query is empty: pass the text to search for", field="query")
    return stripped


def validate_sizes(depth: int, final_k: int | None) -> None:
    """``1 <= final_k <= depth``; messages say what to change."""
    if not isinstance(depth, int) or depth < 1:
        raise ValidationError(f"depth must be >= 1, got {depth}", field="depth")
    if final_k is None:
        return
    if not isinstance(final_k, int) or final_k < 1:
        raise ValidationError(f"final_k must be >= 1, got {final_k}", field="final_k")
    if depth < final_k:
        raise ValidationError(f"final_k must be <= depth, got {final_k} > {depth}: raise depth or lower final_k",
                              field="final_k")


@dataclass(frozen=True)
class Retrieval:
    """The first stage's answer: candidates in retrieval order.

    Attributes:
        hits: Up to ``depth`` chunks, ranks from 1.
        timings: ``embed_ms``, ``retrieval_ms`` (wall, embedding included) and ``es_took_ms``.
        mode: ``hybrid``, ``bm25`` or ``knn``.
        fusion: ``server`` or ``client`` for hybrid, else None.
    """

    hits: tuple[Hit, ...]
    timings: Timings
    mode: str
    fusion: str | None


class Searcher:
    """Two-stage search over one es-rerank index (on Elasticsearch or OpenSearch).

    Retrieval fetches ``depth`` candidates (BM25, kNN, or both fused with RRF); the
    reranker scores each (query, candidate) pair; the best ``final_k`` come back with both
    stages' scores and ranks. Safe to share between threads: the engine's client is
    thread-safe, models load once under a lock, and per-search figures (timings, LLM
    usage) are kept per call. Close it (or use ``with``) to release the client and threads.

    Args:
        settings: Connection and pipeline settings. Defaults to ``Settings.from_env()``.
        engine: An :class:`~es_rerank.engines.Engine`. Defaults to one for ``settings``.
        es: An existing ``elasticsearch``/``opensearchpy`` client to wrap in an engine.
        embedder: Query embedder. Defaults to the one in ``settings``.
        reranker: Any object with ``name`` and ``score(query, texts)``. Defaults to
            ``settings.reranker`` (built on first use).

    The index's pipeline (:mod:`es_rerank.pipelines`, written by ``es-rerank tune --apply`` or
    ``es-rerank pipeline set``) supplies reranker, model, backend, depth, final_k and blend for
    settings left at their defaults (``settings.use_pipeline``); arguments of :meth:`search` and
    settings given explicitly win. ``SearchResult.settings`` says where each came from.

    Example:
        >>> with Searcher(Settings(index="help-centre")) as s:                 # doctest: +SKIP
        ...     s.search("refund for a double charge", final_k=3).hits[0].title
    """

    def __init__(self, settings: Settings | None = None, *, engine: Engine | None = None, es: Any = None,
                 embedder: Embedder | None = None, reranker: Reranker | None = None):
        self.settings = settings if settings is not None else Settings.from_env()
        self._own_engine = engine is None
        self._engine = engine
        self._es = es
        self.embedder = embedder if embedder is not None else build_embedder(self.settings)
        self._reranker: BaseReranker | None = as_reranker(reranker) if reranker is not None else None
        self._own_reranker = reranker is None
        self._step = RerankStep(self.settings)
        self._max_window: int | None = None
        self._fields: FieldInfo | None = None
        self._index_checked = False
        self._pipeline: tuple[Pipeline | None] | None = None
        self._built: dict[tuple[str, str, str], BaseReranker] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_env(cls, **overrides: Any) -> "Searcher":
        """A searcher configured from the environment, with keyword overrides."""
        return cls(Settings.from_env(**overrides))

    def __repr__(self) -> str:
        engine = self._engine.name if self._engine is not None else self.settings.engine
        return f"Searcher(index={self.settings.index!r}, url={self.settings.safe_url!r}, engine={engine!r})"

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the client (when this searcher made it), the timeout threads and its reranker."""
        self._step.close()
        if self._own_reranker and self._reranker is not None:
            self._reranker.close()
        with self._lock:
            built, self._built = list(self._built.values()), {}
        for r in built:
            r.close()
        if self._own_engine and self._engine is not None:
            self._engine.close()

    @property
    def engine(self) -> Engine:
        """The search engine (detected from the cluster on first use unless given or configured)."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = open_engine(self.settings, client=self._es)
        return self._engine

    @property
    def es(self) -> Any:
        """The engine's client (kept for code written against earlier versions)."""
        return self.engine.client

    @property
    def reranker(self) -> BaseReranker | None:
        """The reranker searches use by default: the one given, else the one the settings and the
        index's pipeline name (built on first use); None for no reranking."""
        if not self._own_reranker:
            return self._reranker
        return self._reranker_for(self.plan())

    def _reranker_for(self, plan: Resolved) -> BaseReranker | None:
        """The reranker of a resolved plan, built once per (kind, model, backend)."""
        kind = plan.values["reranker"]
        if kind == NO_RERANKING:
            return None
        key = (kind, plan.values["reranker_model"], plan.values["reranker_backend"])
        with self._lock:
            if key not in self._built:
                self._built[key] = build_reranker(kind, plan.settings(self.settings))
            return self._built[key]

    @property
    def pipeline(self) -> Pipeline | None:
        """The index's pipeline (read once), or None: none recorded, ``use_pipeline`` off, or unreadable."""
        if self._pipeline is None:
            found = None
            if self.settings.use_pipeline:
                try:
                    found = of_state(self.engine.state(self.settings.index))
                except IndexMissingError:
                    found = None  # check_index says so
                except ClusterError as e:
                    if e.status != 403:
                        raise
                    logger.info("may not read the metadata of %s: its pipeline is not used", self.settings.index)
            self._pipeline = (found,)
        return self._pipeline[0]

    def plan(self, **call: Any) -> Resolved:
        """The pipeline settings a search runs with, each with its source (see :func:`es_rerank.pipelines.resolve`).

        Args:
            **call: Values given for this search (``depth``, ``final_k``, ``blend``, ``blend_weight``,
                ``reranker``, ``reranker_model``, ``reranker_backend``); None means not given.

        Raises:
            ModelError: The pipeline's model folder changed and ``pipeline_model_check`` is ``refuse``.
        """
        resolved = resolve_pipeline(self.settings, self.pipeline, call)
        if not self._own_reranker and call.get("reranker") is None:
            given = self._reranker.name if self._reranker is not None else NO_RERANKING
            resolved = Resolved({**resolved.values, "reranker": given, "reranker_model": None},
                                {**resolved.sources, "reranker": "argument", "reranker_model": "argument"},
                                resolved.pipeline)
            return resolved
        return check_model(resolved, self.settings.pipeline_model_check)

    def load_models(self, *, rerank: bool = True) -> dict[str, float]:
        """Load the embedder (and the reranker) now; returns the seconds each took.

        The first search's timings then measure the search, not the model loading.
        """
        out = {"embedder_s": timed_load(self.embedder)}
        if rerank and self.reranker is not None:
            out["reranker_s"] = timed_load(self.reranker)
        return out

    # -- validation -------------------------------------------------------------------------

    def max_result_window(self) -> int:
        """The index's ``index.max_result_window`` (read once)."""
        if self._max_window is None:
            self._max_window = self.engine.max_result_window(self.settings.index)
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
        mappings = self.engine.get_mapping(index)
        for mapping in mappings.values():
            self.engine.check_mapping(index, mapping, dims=self.embedder.dimensions)
        self._fields = self.engine.field_info(next(iter(mappings.values())))
        self._index_checked = True

    def _filter_clauses(self, filters: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        if not filters:
            return []
        self.check_index()
        return self.engine.filter_clauses(filters, self._fields)

    def _check_depth(self, depth: int) -> None:
        window = self.max_result_window()
        if depth > window:
            raise ValidationError(f"depth {depth} exceeds the index's max_result_window ({window}): lower depth",
                                  field="depth")

    # -- retrieval -----------------------------------------------------------------------------

    def retrieve(self, query: str, *, depth: int, mode: str = "hybrid", filters: Mapping[str, Any] | None = None,
                 fusion: str | None = None) -> Retrieval:
        """First stage only: up to ``depth`` candidates in retrieval order.

        Builds the plan of :func:`es_rerank.retrieval.text_plan` and runs it: the same code
        path as the server's reranking ``_search``.

        Args:
            query: The user's question (plain text; never parsed as query syntax).
            depth: Candidates to fetch.
            mode: ``hybrid`` (default), ``bm25`` or ``knn``.
            filters: Metadata filters, applied to every retriever (see
                :meth:`es_rerank.engines.Engine.filter_clauses`).
            fusion: ``auto``, ``server`` or ``client``. Defaults to ``settings.fusion``.

        Raises:
            ValidationError: Blank query, unknown mode, depth < 1, unknown filter field.
            ConfigError: ``fusion="server"`` where the cluster cannot fuse.
            IndexMissingError, ClusterError: From the cluster.
        """
        query = validate_query(query)
        if mode not in SEARCH_MODES:
            raise ValidationError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}", field="mode")
        validate_sizes(depth, None)
        plan = text_plan(query, index=self.settings.index, mode=mode, depth=depth,
                         rank_constant=self.settings.rank_constant, clauses=self._filter_clauses(filters),
                         source=source_fields(SOURCE_FIELDS),
                         fusion=self.settings.fusion if fusion is None else fusion)
        t0 = time.perf_counter()
        plan = resolve(plan, self.embedder)
        t1 = time.perf_counter()
        got = run(self.engine, plan, window=depth)
        t2 = time.perf_counter()
        return Retrieval(tuple(got.hits), Timings(embed_ms=_ms(t1 - t0), retrieval_ms=_ms(t2 - t0),
                                                  es_took_ms=got.took_ms), mode, got.fusion)

    # -- reranking ------------------------------------------------------------------------------

    def rerank(self, query: str, hits: Sequence[Hit], *, final_k: int | None = None,
               reranker: Reranker | None | bool = True, blend: str | None = None, blend_weight: float | None = None,
               results: str | None = None) -> Reranked:
        """The second stage, shared by :meth:`search`, evaluation and the HTTP server
        (:meth:`es_rerank.rerank_step.RerankStep.run`).

        Scores every hit against ``query``, orders them (ties keep retrieval order), blends
        the two stages' orders if asked, collapses chunks to documents, and keeps ``final_k``.

        Args:
            query: The query text.
            hits: Candidates in retrieval order.
            final_k: Results to keep (documents, or chunks with ``results="chunks"``); None keeps all.
            reranker: A reranker; True (default) uses this searcher's; False or None skips
                scoring (retrieval order).
            blend: ``none``, ``rrf`` or ``linear``. Defaults to ``settings.blend``.
            blend_weight: The reranker's weight in a ``linear`` blend. Defaults to ``settings.blend_weight``.
            results: ``documents`` or ``chunks``. Defaults to ``settings.results``.

        Raises:
            RerankerError: The reranker failed and ``settings.allow_reranker_failures`` is off.
        """
        if reranker is True:
            self._step.options(blend, blend_weight, results)  # bad options fail before a reranker is built
            reranker = self.reranker
        return self._step.run(query, hits, reranker=reranker or None, final_k=final_k, blend=blend,
                              blend_weight=blend_weight, results=results)

    # -- the two stages --------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        depth: int | None = None,
        final_k: int | None = None,
        filters: Mapping[str, Any] | None = None,
        mode: str = "hybrid",
        fusion: str | None = None,
        rerank: bool | None = None,
        blend: str | None = None,
        blend_weight: float | None = None,
        results: str | None = None,
        reranker: Reranker | None = None,
    ) -> SearchResult:
        """Retrieve ``depth`` candidates, rerank them, return the best ``final_k``.

        Args:
            query: The user's question (plain text; never parsed as query syntax).
            depth: Candidates to retrieve and rerank. Defaults to the index's pipeline, else
                ``settings.depth`` (50).
            final_k: Results to return. Defaults to the pipeline's, else ``settings.final_k`` (5).
            filters: Exact-match, any-of and range filters on ``title``, ``doc_id`` or
                metadata fields, applied to both retrievers. Defaults to none.
            mode: ``hybrid`` (default), ``bm25`` or ``knn``.
            fusion: ``auto``, ``server`` or ``client``. Defaults to ``settings.fusion``.
            rerank: False returns the retrieval order (no model runs); True reranks even where the
                pipeline says not to (with the configured reranker). Defaults to the pipeline, else
                the settings.
            blend: ``none`` (rerank order), ``rrf`` or ``linear``. Defaults to the pipeline's, else
                ``settings.blend``.
            blend_weight: Reranker weight of a ``linear`` blend. Defaults likewise.
            results: ``documents`` (one per document; default) or ``chunks``.
            reranker: A reranker for this search only. Defaults to the searcher's (given, or named
                by the settings and the pipeline).

        Returns:
            A :class:`SearchResult` whose hits carry retrieval and rerank scores and ranks.

        Raises:
            ValidationError: Empty query, ``final_k`` < 1, ``final_k`` > ``depth``, ``depth``
                beyond the index's ``max_result_window``, an unknown filter field.
            IndexMissingError: The index does not exist.
            ClusterError: The cluster is unreachable or too slow.
            ModelError: The pipeline's model folder changed and ``pipeline_model_check`` is ``refuse``.
            RerankerError: The reranker failed to load, to score, or in time, and
                ``settings.allow_reranker_failures`` is off (when on, the retrieval order
                comes back with ``reranked=False`` and ``rerank_error`` saying why).
        """
        started = time.perf_counter()
        query = validate_query(query)
        kind = None
        if rerank is False:
            kind = NO_RERANKING
        elif reranker is not None or rerank is True:
            kind = "cross-encoder" if self.settings.reranker == NO_RERANKING else self.settings.reranker
        plan = self.plan(depth=depth, final_k=final_k, blend=blend, blend_weight=blend_weight, reranker=kind)
        if reranker is not None:
            plan = Resolved({**plan.values, "reranker": as_reranker(reranker).name, "reranker_model": None},
                            {**plan.sources, "reranker": "argument", "reranker_model": "argument"}, plan.pipeline)
            chosen: BaseReranker | None = as_reranker(reranker)
        elif rerank is False:
            chosen = None
        elif not self._own_reranker:
            chosen = self._reranker
        else:
            chosen = self._reranker_for(plan)
        depth, final_k = plan.values["depth"], plan.values["final_k"]
        blend, blend_weight = plan.values["blend"], plan.values["blend_weight"]
        validate_sizes(depth, final_k)
        embedder_load_ms = _ms(timed_load(self.embedder))  # else the first search's embed_ms would hold it
        self.check_index()
        self._check_depth(depth)
        first = self.retrieve(query, depth=depth, mode=mode, filters=filters, fusion=fusion)
        second = self.rerank(query, first.hits, final_k=final_k, reranker=chosen, blend=blend,
                             blend_weight=blend_weight, results=results)
        t = first.timings
        return SearchResult(
            query=query,
            hits=second.hits,
            candidates=len(first.hits),
            mode=mode,
            fusion=first.fusion,
            reranked=second.reranked,
            reranker=second.reranker,
            timings=Timings(embed_ms=t.embed_ms, retrieval_ms=t.retrieval_ms, es_took_ms=t.es_took_ms,
                            rerank_ms=second.rerank_ms, total_ms=_ms(time.perf_counter() - started),
                            model_load_ms=embedder_load_ms + second.load_ms),
            rerank_error=second.error,
            usage=second.usage,
            settings=plan.to_dict(),
        )
