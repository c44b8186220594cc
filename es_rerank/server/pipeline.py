"""The server's two stages for one request, run in a worker thread (blocking code, no event loop).

:class:`RerankService` runs a parsed ``text_similarity_reranker`` search: it reads whether
the index is es-rerank's (with the caller's credentials), embeds ``query_vector_builder``
texts with the index's embedder, runs the child retriever as a retrieval plan
(:mod:`es_rerank.retrieval`, the code :class:`~es_rerank.Searcher` runs: server-side fusion
where the cluster has it, else client-side RRF),
and reranks the window with :class:`es_rerank.rerank_step.RerankStep`, the one rerank step
(the one :meth:`es_rerank.client.Searcher.rerank` runs).
It also answers rerank inference requests.

Credentials: the service's settings carry none (:func:`without_credentials`). Every
request to the cluster carries the caller's own ``Authorization`` (and run-as) header, so
the cluster decides what each caller may read; es-rerank adds nothing of its own.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
import time
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

from ..config import EMBEDDING_BACKENDS, Settings
from ..embedding import Embedder, ModelEmbedder, build_embedder
from ..engines import Engine, IndexState, open_engine
from ..engines.base import SOURCE_FIELDS, validate_index_name
from ..errors import ClusterError, IndexMissingError, ModelError, ValidationError
from ..pipelines import NO_RERANKING, Resolved, check_model, of_state
from ..pipelines import resolve as resolve_pipeline
from ..rerankers import KINDS, BaseReranker, Reranker, Scored, as_reranker, build_reranker
from ..rerank_step import RerankStep
from ..retrieval import Plan, Retrieved, resolve, run
from ..runtime import timed_load
from .batching import BatchedReranker, PairBatcher
from .errors import ApiError, bad_request
from .metrics import Metrics
from .answers import combine_totals, field_hits, inference_response, search_response, source_request
from .translate import InferenceRequest, RerankSearch, with_window

logger = logging.getLogger(__name__)

FORWARDED_HEADERS = ("authorization", "es-security-runas-user", "x-opaque-id")
"""Caller headers the server's own requests to the cluster carry (nothing else, nothing added)."""

BATCHED = ("cross-encoder",)  # rerankers whose pairs are independent, so requests can share a batch
STATE_TTL = 10.0
"""Seconds an index's es-rerank marker, read for one caller, is remembered for that caller. It only
decides which text is reranked and which embedder embeds ``model_text``; every search still goes
to the cluster with the caller's credentials."""
STATE_CACHE_SIZE = 1024


def without_credentials(settings: Settings) -> Settings:
    """``settings`` with every credential removed (API key, user, password, ``user:pass@`` in the URL).

    The request timeout is capped at ``serve_timeout``: no cluster call outlives its request.
    """
    url = settings.url
    match = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*://)(.*)", url, re.S)
    if match is not None and "@" in match.group(2):
        url = match.group(1) + match.group(2)[match.group(2).rfind("@") + 1:]
    return settings.replace(url=url, api_key=None, username=None, password=None,
                            request_timeout=min(settings.request_timeout, settings.serve_timeout))


def caller_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers that the server's own cluster requests carry (lower-case names)."""
    return {k: headers[k] for k in FORWARDED_HEADERS if k in headers}


def is_es_rerank(state: IndexState | None) -> bool:
    """Whether every index behind ``state`` is es-rerank's (chunks with doc_id/chunk/title/text)."""
    return state is not None and bool(state.indices) and all(state.marker(i) is not None for i in state.indices)


class _Counted(BaseReranker):
    """Counts the pairs a request scores (metrics), delegating everything else."""

    def __init__(self, inner: BaseReranker, on_pairs: Callable[[int], None]):
        self.inner = inner
        self.name = inner.name
        self.on_pairs = on_pairs

    def score_with_usage(self, query: str, texts: Sequence[str]) -> Scored:
        scored = self.inner.score_with_usage(query, texts)
        self.on_pairs(len(texts))
        return scored


class RerankService:
    """Retrieval and reranking for the server's requests; thread-safe.

    Args:
        settings: Server settings; credentials are removed (:func:`without_credentials`).
        engine: An :class:`~es_rerank.engines.Engine` whose client holds no credentials.
            Defaults to one opened (and engine-detected) on first use.
        embedder: The default query embedder. Defaults to ``settings``'s.
        rerankers: Inference id -> reranker, replacing the built-in ones of those ids
            (``cross-encoder``, ``llm``, ``listwise``, built from settings on first use).
        metrics: Where to count. Defaults to a fresh :class:`~es_rerank.server.metrics.Metrics`.
        batch_wait_ms: Micro-batching wait for the cross-encoder; 0 turns batching off.
            Defaults to ``settings.serve_batch_wait_ms``.
        in_flight: How many requests are in progress (a batch starts without waiting once
            all of them have queued their pairs). Defaults to None (always wait).
    """

    def __init__(self, settings: Settings, *, engine: Engine | None = None, embedder: Embedder | None = None,
                 rerankers: Mapping[str, Reranker] | None = None, metrics: Metrics | None = None,
                 batch_wait_ms: float | None = None, in_flight: Callable[[], int] | None = None):
        self.settings = without_credentials(settings)
        self.in_flight = in_flight
        self.metrics = metrics if metrics is not None else Metrics()
        self.batch_wait_ms = settings.serve_batch_wait_ms if batch_wait_ms is None else batch_wait_ms
        self.embedder = embedder if embedder is not None else build_embedder(self.settings)
        self._engine = engine
        self._own_engine = engine is None
        self._given = {k: as_reranker(v) for k, v in (rerankers or {}).items()}
        self._rerankers: dict[str, BaseReranker] = dict(self._given)
        self._batchers: dict[str, PairBatcher] = {}
        self._embedders: dict[tuple[str, str], Embedder] = {}
        self._states: dict[tuple[str, str], tuple[float, IndexState | None]] = {}
        self.rerank_step = RerankStep(self.settings)
        self._lock = threading.RLock()

    # -- parts, built on first use ------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine (detected on first use; the cluster may be down when the server starts)."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = open_engine(self.settings)
        return self._engine

    @property
    def engine_name(self) -> str | None:
        """``elasticsearch`` or ``opensearch`` once the engine is open (or was given), else None."""
        return None if self._engine is None else self._engine.name

    @property
    def inference_ids(self) -> tuple[str, ...]:
        """The reranker ids requests may name."""
        return tuple(dict.fromkeys([*KINDS, *self._given]))

    @property
    def default_inference_id(self) -> str | None:
        """The reranker used when a request names none (``ES_RERANK_RERANKER``; None for ``none``)."""
        return None if self.settings.reranker == "none" else self.settings.reranker

    def knows(self, inference_id: str | None) -> bool:
        """Whether ``inference_id`` is one of ours (None: the default)."""
        return inference_id is None or inference_id in self.inference_ids

    def resolve_id(self, inference_id: str | None) -> str:
        """The reranker id a request uses.

        Raises:
            ApiError: 400 when none is named and the configured default is ``none``.
        """
        if inference_id is not None:
            return inference_id
        default = self.default_inference_id
        if default is None:
            raise bad_request(f"[inference_id] is required: no default reranker is configured "
                              f"(ES_RERANK_RERANKER=none); name one of {', '.join(self.inference_ids)}")
        return default

    def reranker(self, inference_id: str) -> BaseReranker:
        """The reranker of ``inference_id`` (built from settings on first use)."""
        with self._lock:
            if inference_id not in self._rerankers:
                self._rerankers[inference_id] = build_reranker(inference_id, self.settings)
            return self._rerankers[inference_id]

    def _batcher(self, inference_id: str) -> PairBatcher:
        with self._lock:
            if inference_id not in self._batchers:
                self._batchers[inference_id] = PairBatcher(
                    self.reranker(inference_id), wait_ms=self.batch_wait_ms,
                    on_batch=lambda pairs, seconds: self.metrics.batch_pairs.observe(pairs), in_flight=self.in_flight)
            return self._batchers[inference_id]

    def scorer(self, inference_id: str, *, deadline: float | None = None) -> BaseReranker:
        """The reranker one request scores with: the shared batcher for the cross-encoder when
        batching is on, else the reranker itself (LLM rerankers: one call per request)."""
        if inference_id.split("@", 1)[0] in BATCHED and self.batch_wait_ms > 0:
            inner: BaseReranker = BatchedReranker(self._batcher(inference_id), deadline=deadline)
        else:
            inner = self.reranker(inference_id)
        return _Counted(inner, lambda n: self.metrics.pairs.labels(inference_id).inc(n))

    def embedder_for(self, state: IndexState | None) -> Embedder:
        """The embedder an index was built with (its es-rerank marker), else the default one."""
        marks = [state.marker(i) for i in state.indices] if is_es_rerank(state) else []
        named = {(m.get("embedder"), m.get("embedding_backend")) for m in marks if not m.get("legacy")}
        if len(named) != 1:
            return self.embedder
        model, backend = named.pop()
        default_model = getattr(self.embedder, "model_name", self.settings.embedding_model)
        if not isinstance(model, str) or model in ("?", default_model):
            return self.embedder
        backend = backend if backend in EMBEDDING_BACKENDS else self.settings.embedding_backend
        with self._lock:
            if (model, backend) not in self._embedders:
                logger.info("index embedded with %s (%s): loading that embedder", model, backend)
                self._embedders[(model, backend)] = ModelEmbedder(
                    model, backend=backend, device=self.settings.device, batch_size=self.settings.embed_batch_size)
            return self._embedders[(model, backend)]

    def warm_up(self) -> dict[str, float]:
        """Load the default embedder and reranker now; returns the seconds each took."""
        out = {"embedder_s": timed_load(self.embedder)}
        if self.default_inference_id is not None:
            out["reranker_s"] = timed_load(self.reranker(self.default_inference_id))
        return out

    def close(self) -> None:
        """Stop the batchers, release the rerankers this service built, and its engine."""
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
            built = [r for k, r in self._rerankers.items() if k not in self._given]
            self._rerankers = dict(self._given)
        for batcher in batchers:
            batcher.close()
        for reranker in built:
            reranker.close()
        self.rerank_step.close()
        if self._own_engine and self._engine is not None:
            self._engine.close()

    # -- the first stage ----------------------------------------------------------------------------

    def index_state(self, index: str | None, headers: Mapping[str, str]) -> IndexState | None:
        """What ``index`` is, read with the caller's credentials; None when unknown.

        Unknown: no index (``/_search``), an expression (wildcards, lists), or a caller
        without the right to read index metadata (403): the index is then read as any index.
        An answer is remembered for :data:`STATE_TTL` seconds per index and caller.

        Raises:
            IndexMissingError: The index does not exist.
            ClusterError: The cluster refused the caller (401) or could not be reached.
        """
        if index is None:
            return None
        try:
            validate_index_name(index)
        except ValidationError:
            return None
        who = hashlib.sha256("\x00".join(headers.get(k, "") for k in FORWARDED_HEADERS[:2]).encode()).hexdigest()
        key, now = (index, who), time.monotonic()
        with self._lock:
            cached = self._states.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        state = self._read_state(index, headers)
        with self._lock:
            if len(self._states) >= STATE_CACHE_SIZE:
                self._states.clear()
            self._states[key] = (now + STATE_TTL, state)
        return state

    def _read_state(self, index: str, headers: Mapping[str, str]) -> IndexState | None:
        try:
            state = self.engine.state(index, headers=headers)
        except ClusterError as e:
            if e.status == 403:
                logger.info("caller may not read the metadata of %r: reranking it as any index", index)
                return None
            raise
        if state.kind == "missing":
            raise IndexMissingError(index)
        return state

    def retrieve(self, spec: RerankSearch, index: str | None, headers: Mapping[str, str], *,
                 es_index: bool, embedder: Embedder) -> Retrieved:
        """Run the child retriever for ``spec.window`` candidates: the request's retrieval plan,
        resolved and run by :mod:`es_rerank.retrieval`, the same code as :meth:`Searcher.retrieve`."""
        source = source_request(spec.source, SOURCE_FIELDS if es_index else (spec.field,))
        target = quote(index, safe=",*") if index is not None else "_all"
        plan = resolve(Plan(spec.child, target, source, self.settings.fusion), embedder)
        read = None if es_index else functools.partial(field_hits, field_name=spec.field)
        return run(self.engine, plan, window=spec.window, headers=headers, read=read)

    # -- the index's pipeline -------------------------------------------------------------------------------

    def plan(self, spec: RerankSearch, state: IndexState | None) -> tuple[RerankSearch, Resolved, str | None]:
        """What a request leaves out, from the index's pipeline: ``(spec, plan, scorer key)``.

        The request's own ``inference_id``, ``rank_window_size`` and ``size`` win; then the
        server's settings given explicitly (an ``ES_RERANK_*`` variable, or a value other than the
        default); then the pipeline (:mod:`es_rerank.pipelines`). So ``ES_RERANK_RERANKER=none``
        on the server turns the pipeline's reranking off: such a request is answered in retrieval
        order, and its ``es_rerank`` block says ``reranker: none`` from ``environment``. An index
        without a pipeline answers as before: the request's window and size (Elasticsearch's
        defaults), and a 400 when no reranker is named and none is configured. The key names the
        reranker to score with (None: not reranking).

        Raises:
            ApiError: 500 when the pipeline's model folder changed and ``pipeline_model_check`` is
                ``refuse``; 400 when ``from + size`` exceeds the pipeline's depth.
        """
        pipeline = of_state(state) if self.settings.use_pipeline and is_es_rerank(state) else None
        given = spec.given
        call = {"reranker": spec.inference_id if "inference_id" in given else None,
                "depth": spec.window if "rank_window_size" in given else None,
                "final_k": spec.size if "size" in given else None}
        if call["reranker"] is None and self.settings.reranker == NO_RERANKING and pipeline is None:
            self.resolve_id(None)  # raises the usual 400: no reranker named, none configured
        plan = resolve_pipeline(self.settings, pipeline, call)
        try:
            plan = check_model(plan, self.settings.pipeline_model_check)
        except ModelError as e:
            raise ApiError(500, "es_rerank_pipeline_model_exception", str(e)) from None
        values, sources = dict(plan.values), dict(plan.sources)
        # with a pipeline, what the request leaves out comes from the plan (given settings, then the
        # pipeline); without one, from the request's own sizes, as Elasticsearch does
        planned = {n for n in ("depth", "final_k") if plan.pipeline is not None and sources[n] != "default"
                   and sources[n] != "argument"}
        if planned:
            window = min(values["depth"], self.settings.serve_max_window) if "depth" in planned else spec.window
            spec = with_window(spec, window, values["final_k"] if "final_k" in planned else None)
        # what serve does with the request's sizes: the window is the depth, the page size final_k
        for name, value, key in (("depth", spec.window, "rank_window_size"), ("final_k", spec.size, "size")):
            if name not in planned:
                values[name], sources[name] = value, "argument" if key in given else "default"
        plan = Resolved(values, sources, plan.pipeline, plan.model_check, plan.warning)
        kind = values["reranker"]
        if kind == NO_RERANKING:
            return spec, plan, None
        if sources["reranker"] == "argument" or (values["reranker_model"], values["reranker_backend"]) == \
                (self.settings.reranker_model, self.settings.reranker_backend) or kind not in KINDS:
            return spec, plan, kind
        key = f"{kind}@{values['reranker_model']}@{values['reranker_backend']}"
        with self._lock:
            if key not in self._rerankers:
                logger.info("the index's pipeline names %s (%s): loading that reranker", values["reranker_model"],
                            values["reranker_backend"])
                self._rerankers[key] = build_reranker(kind, plan.settings(self.settings))
        return spec, plan, key

    # -- requests ---------------------------------------------------------------------------------------

    def search(self, spec: RerankSearch, index: str | None, headers: Mapping[str, str], *,
               deadline: float | None = None) -> dict[str, Any]:
        """Answer a reranking ``_search``: retrieve the window, rerank it, page it.

        Args:
            spec: The parsed request.
            index: The index (or expression) of the path; None for ``/_search``.
            headers: The caller's headers (only :data:`FORWARDED_HEADERS` are sent on).
            deadline: ``time.monotonic()`` by which the answer is due; no reranking starts later.

        Returns:
            Elasticsearch's response JSON.

        Raises:
            ApiError, ClusterError, IndexMissingError, RerankerError, TimeoutError.
        """
        started = time.perf_counter()
        headers = caller_headers(headers)
        state = self.index_state(index, headers)
        spec, plan, key = self.plan(spec, state)
        inference_id = plan.values["reranker"]
        es_index = spec.field == "text" and is_es_rerank(state)
        t0 = time.perf_counter()
        first = self.retrieve(spec, index, headers, es_index=es_index, embedder=self.embedder_for(state))
        self.metrics.retrieval_seconds.observe(time.perf_counter() - t0)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("retrieval used up the request's time (ES_RERANK_SERVE_TIMEOUT); nothing was reranked")
        second = self.rerank_step.run(spec.query, first.hits, final_k=None,
                                      reranker=None if key is None else self.scorer(key, deadline=deadline),
                                      results="documents" if es_index else "chunks", blend=plan.values["blend"],
                                      blend_weight=plan.values["blend_weight"])
        self.metrics.rerank_seconds.observe(second.rerank_ms / 1000.0)
        if second.error is not None:
            self.metrics.fallbacks.inc()
        hits = list(second.hits)
        if spec.min_score is not None and second.reranked:
            hits = [h for h in hits if h.score >= spec.min_score and not (h.rerank_rank is not None
                                                                          and h.rerank_score is None)]
        page = hits[spec.start:spec.start + spec.size]
        responses = first.responses
        return search_response(
            spec, page, first.raw, took_ms=(time.perf_counter() - started) * 1000.0,
            total=combine_totals(responses), shards=responses[0].get("_shards") if responses else None,
            timed_out=any(bool(r.get("timed_out")) for r in responses), reranked=second.reranked,
            inference_id=inference_id, error=second.error, fusion=first.fusion,
            # where each setting came from, for indices with a pipeline (others answer as before)
            provenance=plan.to_dict() if plan.pipeline is not None else None)

    def infer(self, inference_id: str, request: InferenceRequest, *, deadline: float | None = None) -> dict[str, Any]:
        """Answer ``POST /_inference/rerank/{inference_id}``: every input scored against the query."""
        t0 = time.perf_counter()
        scored = self.scorer(inference_id, deadline=deadline).score_with_usage(request.query, list(request.inputs))
        self.metrics.rerank_seconds.observe(time.perf_counter() - t0)
        return inference_response(request, scored.scores)


__all__ = ["RerankService", "Retrieved", "without_credentials", "caller_headers", "is_es_rerank",
           "FORWARDED_HEADERS"]
