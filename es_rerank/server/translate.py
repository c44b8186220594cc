"""Pure translation of Elasticsearch's request shapes into es-rerank's records (the answers are
built in :mod:`es_rerank.server.answers`).

No I/O here: the parsers turn a ``_search`` body whose retriever is a
``text_similarity_reranker`` (or an inference request) into frozen records and raise
:class:`~es_rerank.server.errors.ApiError` (400, naming the field) for anything malformed;
the child retriever becomes the retriever records of a retrieval plan (:mod:`es_rerank.types`;
:mod:`es_rerank.retrieval` runs the plan and the engines build its bodies, as for
:class:`~es_rerank.Searcher`); the builders here turn the results back into Elasticsearch's
response JSON. Everything is tested by exact equality.

Supported, as Elasticsearch documents them:

* ``text_similarity_reranker``: ``retriever``, ``field``, ``inference_text``,
  ``inference_id``, ``rank_window_size`` (default 10), ``min_score``, ``filter``;
* child retrievers: ``standard`` (``query``, ``filter``, ``min_score``), ``knn`` (``field``,
  ``k``, ``num_candidates``, ``query_vector`` or ``query_vector_builder.text_embedding.model_text``,
  ``similarity``, ``filter``) and ``rrf`` (``retrievers``, ``rank_constant`` (default 60),
  ``rank_window_size`` (default: the parent's window), ``filter``), nested freely;
* top level: ``size`` (default ``min(10, rank_window_size)``), ``from``, ``_source``, ``explain``.

Example:
    >>> body = {"retriever": {"text_similarity_reranker": {
    ...     "retriever": {"standard": {"query": {"match": {"text": "refund"}}}},
    ...     "field": "text", "inference_text": "refund", "rank_window_size": 20}}, "size": 3}
    >>> spec = parse_search(body)
    >>> spec.window, spec.size, spec.child
    (20, 3, Standard(query={'match': {'text': 'refund'}}, filters=(), min_score=None))
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..engines.base import MAX_NUM_CANDIDATES
from ..types import DEFAULT_RANK_CONSTANT, DEFAULT_WINDOW, Knn, Node, Rrf, Standard
from .errors import ApiError, bad_request

RERANKER = "text_similarity_reranker"
DEFAULT_SIZE = 10
DEFAULT_MAX_WINDOW = 1000
"""Largest ``rank_window_size`` (and inference ``input`` list) accepted: every candidate is
one cross-encoder pair, and 1,000 pairs already take seconds on a CPU."""

SEARCH_KEYS = ("retriever", "size", "from", "_source", "explain")
SEARCH_PARAMS = ("size", "from", "explain", "_source", "_source_includes", "_source_excludes",
                 "rest_total_hits_as_int", "pretty", "human", "error_trace", "typed_keys")
RERANKER_KEYS = ("retriever", "field", "inference_text", "inference_id", "rank_window_size", "min_score", "filter",
                 "_name")
STANDARD_KEYS = ("query", "filter", "min_score", "_name")
KNN_KEYS = ("field", "k", "num_candidates", "query_vector", "query_vector_builder", "similarity", "filter", "_name")
RRF_KEYS = ("retrievers", "rank_constant", "rank_window_size", "filter", "_name")
INFERENCE_KEYS = ("query", "input", "return_documents", "top_n", "task_settings")


# -- records ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceSpec:
    """What of ``_source`` the caller wants back.

    Attributes:
        enabled: False for ``"_source": false``.
        includes: Field patterns to keep (empty: all).
        excludes: Field patterns to drop.
    """

    enabled: bool = True
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RerankSearch:
    """A ``_search`` whose retriever is a ``text_similarity_reranker``.

    Attributes:
        child: The retriever whose results are reranked.
        field: The field whose text the reranker reads.
        query: ``inference_text``, stripped.
        inference_id: Which reranker (None: the configured default).
        window: ``rank_window_size``: candidates reranked.
        min_score: Hits scoring below it are dropped (None: keep all).
        size: Hits returned.
        start: ``from``: hits skipped.
        source: The caller's ``_source`` filter.
        explain: Add ``_explanation`` (retrieval rank and score) to each hit.
        total_as_int: ``rest_total_hits_as_int``: ``hits.total`` as a number.
        pretty: Indent the JSON answer.
        given: Which of ``inference_id``, ``rank_window_size`` and ``size`` the caller set (the
            others may come from the index's pipeline).
    """

    child: Node
    field: str
    query: str
    inference_id: str | None
    window: int
    min_score: float | None = None
    size: int = DEFAULT_SIZE
    start: int = 0
    source: SourceSpec = field(default_factory=SourceSpec)
    explain: bool = False
    total_as_int: bool = False
    pretty: bool = False
    given: frozenset[str] = frozenset({"inference_id", "rank_window_size", "size"})


@dataclass(frozen=True)
class InferenceRequest:
    """``POST /_inference/rerank/{id}``: score each input against the query."""

    query: str
    inputs: tuple[str, ...]
    return_documents: bool = False
    top_n: int | None = None


# -- small validators -----------------------------------------------------------------------

def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, Mapping) else type(value).__name__


def _parse_error(path: str, problem: str) -> ApiError:
    return bad_request(f"[{path}] {problem}", type="x_content_parse_exception")


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _parse_error(path, f"must be an object, got {_type_name(value)}")
    return value


def _only(obj: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        raise _parse_error(path, f"unknown field [{unknown[0]}]; es-rerank supports: {', '.join(allowed)}")


def _int(value: Any, path: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _parse_error(path, f"must be an integer, got {_type_name(value)} {json.dumps(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise bad_request(f"[{path}] must be {bounds}, got {value}")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _parse_error(path, f"must be a finite number, got {_type_name(value)} {json.dumps(value)}")
    return float(value)


def _text(value: Any, path: str, *, blank_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise _parse_error(path, f"must be a string, got {_type_name(value)}")
    if not blank_ok and not value.strip():
        raise bad_request(f"[{path}] must not be empty")
    return value


def _bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("true", "false", ""):
        return value != "false"
    raise _parse_error(path, f"must be true or false, got {json.dumps(value)}")


def _filters(value: Any, path: str) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    return tuple(dict(_obj(item, path)) for item in items)


# -- parsing --------------------------------------------------------------------------------

def is_rerank_search(body: Any) -> bool:
    """Whether a ``_search`` body's retriever is a ``text_similarity_reranker`` (ours to answer)."""
    return isinstance(body, Mapping) and isinstance(body.get("retriever"), Mapping) and RERANKER in body["retriever"]


def parse_source(value: Any, path: str = "_source") -> SourceSpec:
    """``_source`` as Elasticsearch accepts it: a boolean, a pattern, a list, or includes/excludes."""
    if value is None:
        return SourceSpec()
    if isinstance(value, bool):
        return SourceSpec(enabled=value)

    def patterns(v: Any, where: str) -> tuple[str, ...]:
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
            raise _parse_error(where, f"must be a string or an array of strings, got {_type_name(v)}")
        return tuple(items)

    if isinstance(value, (str, list)):
        return SourceSpec(includes=patterns(value, path))
    obj = _obj(value, path)
    _only(obj, ("includes", "include", "excludes", "exclude"), path)
    includes = obj.get("includes", obj.get("include", []))
    excludes = obj.get("excludes", obj.get("exclude", []))
    return SourceSpec(includes=patterns(includes, f"{path}.includes"), excludes=patterns(excludes, f"{path}.excludes"))


def _source_params(params: Mapping[str, str]) -> SourceSpec | None:
    if not any(k in params for k in ("_source", "_source_includes", "_source_excludes")):
        return None

    def split(raw: str) -> tuple[str, ...]:
        return tuple(p for p in raw.split(",") if p)

    raw = params.get("_source")
    enabled, includes = True, ()
    if raw in ("true", "false"):
        enabled = raw == "true"
    elif raw is not None:
        includes = split(raw)
    if "_source_includes" in params:
        includes = split(params["_source_includes"])
    return SourceSpec(enabled, includes, split(params.get("_source_excludes", "")))


def parse_retriever(value: Any, path: str, *, window: int, max_window: int,
                    inherited: tuple[Mapping[str, Any], ...] = ()) -> Node:
    """One retriever object (``{"standard": {...}}``, ``{"knn": ...}`` or ``{"rrf": ...}``).

    Args:
        value: The retriever object.
        path: Where it is in the body (for messages).
        window: Results the parent takes from it (an ``rrf``'s default window).
        max_window: Largest ``rank_window_size`` accepted.
        inherited: Filters of enclosing retrievers, applied to this one too.

    Raises:
        ApiError: 400 naming the field at fault.
    """
    obj = _obj(value, path)
    if len(obj) != 1:
        raise _parse_error(path, f"a retriever has exactly one type, got {sorted(obj) or 'none'}")
    (kind, spec), = obj.items()
    where = f"{path}.{kind}"
    if kind == "standard":
        spec = _obj(spec, where)
        _only(spec, STANDARD_KEYS, where)
        query = dict(_obj(spec["query"], f"{where}.query")) if spec.get("query") is not None else None
        min_score = _number(spec["min_score"], f"{where}.min_score") if "min_score" in spec else None
        return Standard(query, inherited + _filters(spec.get("filter"), f"{where}.filter"), min_score)
    if kind == "knn":
        spec = _obj(spec, where)
        _only(spec, KNN_KEYS, where)
        for required in ("field", "k", "num_candidates"):
            if required not in spec:
                raise bad_request(f"[{where}.{required}] is required")
        k = _int(spec["k"], f"{where}.k", minimum=1, maximum=MAX_NUM_CANDIDATES)
        num_candidates = _int(spec["num_candidates"], f"{where}.num_candidates", minimum=k,
                              maximum=MAX_NUM_CANDIDATES)
        has_vector, has_builder = spec.get("query_vector") is not None, spec.get("query_vector_builder") is not None
        if has_vector == has_builder:
            raise bad_request(f"[{where}] needs exactly one of [query_vector] or [query_vector_builder]")
        vector, text = None, None
        if has_vector:
            raw = spec["query_vector"]
            if not isinstance(raw, list) or not raw:
                raise _parse_error(f"{where}.query_vector", f"must be a non-empty array of numbers, got "
                                                            f"{_type_name(raw)}")
            vector = tuple(_number(x, f"{where}.query_vector[{i}]") for i, x in enumerate(raw))
        else:
            builder = _obj(spec["query_vector_builder"], f"{where}.query_vector_builder")
            _only(builder, ("text_embedding",), f"{where}.query_vector_builder")
            if "text_embedding" not in builder:
                raise bad_request(f"[{where}.query_vector_builder.text_embedding] is required")
            te_path = f"{where}.query_vector_builder.text_embedding"
            embedding = _obj(builder["text_embedding"], te_path)
            _only(embedding, ("model_text", "model_id"), te_path)
            if "model_text" not in embedding:
                raise bad_request(f"[{te_path}.model_text] is required")
            text = _text(embedding["model_text"], f"{te_path}.model_text").strip()
            if "model_id" in embedding:
                _text(embedding["model_id"], f"{te_path}.model_id")  # accepted; the index's embedder is used
        similarity = _number(spec["similarity"], f"{where}.similarity") if "similarity" in spec else None
        return Knn(_text(spec["field"], f"{where}.field"), k, num_candidates, vector, text, similarity,
                   inherited + _filters(spec.get("filter"), f"{where}.filter"))
    if kind == "rrf":
        spec = _obj(spec, where)
        _only(spec, RRF_KEYS, where)
        children = spec.get("retrievers")
        if not isinstance(children, list) or not children:
            raise bad_request(f"[{where}.retrievers] must be a non-empty array of retrievers")
        rank_constant = _int(spec.get("rank_constant", DEFAULT_RANK_CONSTANT), f"{where}.rank_constant", minimum=1)
        own = _int(spec.get("rank_window_size", window), f"{where}.rank_window_size", minimum=1, maximum=max_window)
        filters = inherited + _filters(spec.get("filter"), f"{where}.filter")
        return Rrf(tuple(parse_retriever(c, f"{where}.retrievers[{i}]", window=own, max_window=max_window,
                                         inherited=filters) for i, c in enumerate(children)),
                   rank_constant, own, "rank_window_size" not in spec)
    if kind == RERANKER:
        raise bad_request(f"[{where}] es-rerank reranks once: a {RERANKER} cannot sit inside another retriever")
    raise _parse_error(path, f"unknown retriever type [{kind}]; es-rerank supports standard, knn and rrf")


def parse_search(body: Any, params: Mapping[str, str] | None = None, *,
                 max_window: int = DEFAULT_MAX_WINDOW) -> RerankSearch:
    """A ``_search`` body (and its query-string parameters) with a ``text_similarity_reranker``.

    Args:
        body: The decoded JSON body.
        params: Query-string parameters (``size``, ``from``, ``_source`` ... as Elasticsearch
            takes them). Defaults to none.
        max_window: Largest ``rank_window_size``. Defaults to :data:`DEFAULT_MAX_WINDOW`.

    Raises:
        ApiError: 400 naming the field: a missing ``field`` or ``inference_text``, an unknown
            retriever type or field, a window below 1 or above ``max_window``, ``from + size``
            above the window, an unsupported top-level key or parameter.
    """
    params = dict(params or {})
    for name in params:
        if name not in SEARCH_PARAMS:
            raise bad_request(f"request [_search] contains unrecognized parameter: [{name}] "
                              f"(es-rerank supports {', '.join(SEARCH_PARAMS)} with {RERANKER})")
    top = _obj(body, "body")
    for key in top:
        if key not in SEARCH_KEYS:
            raise bad_request(f"[{key}] cannot be used with a {RERANKER} retriever in es-rerank "
                              f"(supported: {', '.join(SEARCH_KEYS)})")
    retriever = _obj(top["retriever"], "retriever")
    if len(retriever) != 1:
        raise _parse_error("retriever", f"a retriever has exactly one type, got {sorted(retriever)}")
    path = f"retriever.{RERANKER}"
    spec = _obj(retriever[RERANKER], path)
    _only(spec, RERANKER_KEYS, path)
    for required in ("retriever", "field", "inference_text"):
        if required not in spec:
            raise bad_request(f"[{path}.{required}] is required")
    window = _int(spec.get("rank_window_size", DEFAULT_WINDOW), f"{path}.rank_window_size", minimum=1,
                  maximum=max_window)
    field_name = _text(spec["field"], f"{path}.field")
    query = _text(spec["inference_text"], f"{path}.inference_text").strip()
    inference_id = _text(spec["inference_id"], f"{path}.inference_id") if spec.get("inference_id") is not None \
        else None
    min_score = _number(spec["min_score"], f"{path}.min_score") if spec.get("min_score") is not None else None
    child = parse_retriever(spec["retriever"], f"{path}.retriever", window=window, max_window=max_window,
                            inherited=_filters(spec.get("filter"), f"{path}.filter"))
    raw_size = top.get("size", params.get("size"))
    raw_from = top.get("from", params.get("from", 0))
    size = min(DEFAULT_SIZE, window) if raw_size is None else _int(_param_int(raw_size, "size"), "size", minimum=0)
    start = _int(_param_int(raw_from, "from"), "from", minimum=0)
    if start + size > window:
        raise bad_request(f"[size] from + size must be <= [{path}.rank_window_size] ({window}), got "
                          f"{start} + {size} = {start + size}: raise rank_window_size or lower size")
    source = parse_source(top["_source"]) if "_source" in top else (_source_params(params) or SourceSpec())
    explain = _bool(top.get("explain", params.get("explain", False)), "explain")
    given = frozenset(k for k, present in (("inference_id", inference_id is not None),
                                           ("rank_window_size", "rank_window_size" in spec),
                                           ("size", raw_size is not None)) if present)
    return RerankSearch(child=child, field=field_name, query=query, inference_id=inference_id, window=window,
                        min_score=min_score, size=size, start=start, source=source, explain=explain,
                        total_as_int=_bool(params.get("rest_total_hits_as_int", False), "rest_total_hits_as_int"),
                        pretty=_bool(params.get("pretty", False), "pretty"), given=given)


def with_window(spec: RerankSearch, window: int, size: int | None = None) -> RerankSearch:
    """``spec`` reranking ``window`` candidates (and returning ``size``, when given) where the caller
    set neither: ``rrf`` retrievers without their own ``rank_window_size`` follow the new window.

    Raises:
        ApiError: 400 when ``from + size`` would exceed the new window.
    """
    def rewindow(node: Node, parent: int) -> Node:
        if not isinstance(node, Rrf):
            return node
        own = parent if node.inherited else node.window
        return dataclasses.replace(node, window=own, children=tuple(rewindow(c, own) for c in node.children))

    if "size" not in spec.given:
        size = min(DEFAULT_SIZE, window) if size is None else min(size, window)
    else:
        size = spec.size
    if spec.start + size > window:
        raise bad_request(f"[size] from + size must be <= the depth in use ({window}: the index pipeline's, or "
                          f"ES_RERANK_DEPTH), got {spec.start} + {size}: set rank_window_size or lower size")
    return dataclasses.replace(spec, window=window, size=size, child=rewindow(spec.child, window))


def _param_int(value: Any, path: str) -> Any:
    """Query-string numbers arrive as text."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise _parse_error(path, f"must be an integer, got {value!r}") from None
    return value


def parse_inference(body: Any, *, max_inputs: int = DEFAULT_MAX_WINDOW) -> InferenceRequest:
    """Elasticsearch's rerank inference request: ``{"query": ..., "input": [...]}``.

    ``return_documents`` and ``top_n`` are read at the top level or under ``task_settings``.

    Raises:
        ApiError: 400 naming the field.
    """
    top = _obj(body, "body")
    _only(top, INFERENCE_KEYS, "body")
    for required in ("query", "input"):
        if required not in top:
            raise bad_request(f"[{required}] is required")
    query = _text(top["query"], "query").strip()
    raw = top["input"]
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise _parse_error("input", f"must be a string or a non-empty array of strings, got {_type_name(raw)}")
    if len(items) > max_inputs:
        raise bad_request(f"[input] holds {len(items)} documents; at most {max_inputs} per request")
    inputs = tuple(_text(x, f"input[{i}]", blank_ok=True) for i, x in enumerate(items))
    task = _obj(top.get("task_settings", {}), "task_settings")
    _only(task, ("return_documents", "top_n"), "task_settings")
    merged = {**task, **{k: top[k] for k in ("return_documents", "top_n") if k in top}}
    return_documents = _bool(merged.get("return_documents", False), "return_documents")
    top_n = _int(merged["top_n"], "top_n", minimum=1) if merged.get("top_n") is not None else None
    return InferenceRequest(query, inputs, return_documents, top_n)
