"""Pure builders of Elasticsearch request bodies. No I/O: unit-tested by exact equality.

The query text is always placed in a ``multi_match`` ``query`` value, never parsed as
Lucene syntax and never spliced into JSON by hand, so its content cannot change the
request's structure.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .errors import ValidationError

TEXT_FIELDS = ("text", "title")
VECTOR_FIELD = "embedding"
SOURCE_FIELDS = ("doc_id", "chunk", "title", "text", "metadata")
TOP_LEVEL_FIELDS = frozenset({"doc_id", "chunk", "title"})
MAX_NUM_CANDIDATES = 10_000


def num_candidates_for(k: int) -> int:
    """HNSW candidates per shard for a kNN search of ``k``: 2k, at least 100, at most 10,000."""
    return min(max(2 * k, 100), MAX_NUM_CANDIDATES)


def filter_clauses(filters: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Turn ``{"field": value}`` filters into Elasticsearch filter clauses.

    A scalar becomes ``term``; a list or tuple becomes ``terms`` (any of); a dict with
    ``gt``/``gte``/``lt``/``lte`` becomes ``range``. Field names other than
    ``doc_id``, ``chunk`` and ``title`` refer to metadata (``metadata.<name>``).

    Raises:
        ValidationError: A filter value is empty or of an unsupported kind.

    Example:
        >>> filter_clauses({"category": ["billing", "account"]})
        [{'terms': {'metadata.category': ['billing', 'account']}}]
    """
    clauses: list[dict[str, Any]] = []
    for name, value in (filters or {}).items():
        field = name if name in TOP_LEVEL_FIELDS or name.startswith("metadata.") else f"metadata.{name}"
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValidationError(f"filter {name!r} has an empty list of values")
            clauses.append({"terms": {field: list(value)}})
        elif isinstance(value, Mapping):
            bounds = {k: v for k, v in value.items() if k in ("gt", "gte", "lt", "lte")}
            if not bounds or len(bounds) != len(value):
                raise ValidationError(f"filter {name!r}: a range takes only gt/gte/lt/lte, got {sorted(value)}")
            clauses.append({"range": {field: bounds}})
        elif isinstance(value, (str, int, float, bool)):
            clauses.append({"term": {field: value}})
        else:
            raise ValidationError(f"filter {name!r} has an unsupported value of type {type(value).__name__}")
    return clauses


def bm25_query(query: str, filters: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The BM25 ``query`` clause: multi_match over text and title, under the filters."""
    bool_query: dict[str, Any] = {"must": [{"multi_match": {"query": query, "fields": list(TEXT_FIELDS)}}]}
    if filters:
        bool_query["filter"] = [dict(f) for f in filters]
    return {"bool": bool_query}


def knn_clause(vector: Sequence[float], *, k: int, filters: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The ``knn`` clause over the embedding field, under the same filters."""
    clause: dict[str, Any] = {
        "field": VECTOR_FIELD,
        "query_vector": [float(x) for x in vector],
        "k": k,
        "num_candidates": num_candidates_for(k),
    }
    if filters:
        clause["filter"] = [dict(f) for f in filters]
    return clause


def bm25_body(query: str, *, size: int, filters: Mapping[str, Any] | None = None,
              source: Sequence[str] = SOURCE_FIELDS) -> dict[str, Any]:
    """Search body for BM25 alone."""
    return {"size": size, "query": bm25_query(query, filter_clauses(filters)), "_source": list(source)}


def knn_body(vector: Sequence[float], *, size: int, filters: Mapping[str, Any] | None = None,
             source: Sequence[str] = SOURCE_FIELDS) -> dict[str, Any]:
    """Search body for approximate kNN alone."""
    return {"size": size, "knn": knn_clause(vector, k=size, filters=filter_clauses(filters)),
            "_source": list(source)}


def rrf_body(query: str, vector: Sequence[float], *, depth: int, rank_constant: int = 60,
             filters: Mapping[str, Any] | None = None, source: Sequence[str] = SOURCE_FIELDS) -> dict[str, Any]:
    """Search body for the server-side ``rrf`` retriever over BM25 and kNN.

    Both sub-retrievers take ``depth`` results (the rank window) under the same filters.
    """
    clauses = filter_clauses(filters)
    return {
        "size": depth,
        "retriever": {
            "rrf": {
                "retrievers": [
                    {"standard": {"query": bm25_query(query, clauses)}},
                    {"knn": knn_clause(vector, k=depth, filters=clauses)},
                ],
                "rank_constant": rank_constant,
                "rank_window_size": depth,
            }
        },
        "_source": list(source),
    }


def msearch_searches(index: str, bodies: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Header/body pairs for ``_msearch``: one round trip for several searches."""
    searches: list[dict[str, Any]] = []
    for body in bodies:
        searches.append({"index": index})
        searches.append(dict(body))
    return searches


def validate_query(query: str) -> str:
    """Return the query stripped; reject a non-string or blank query."""
    if not isinstance(query, str):
        raise ValidationError(f"query must be a string, got {type(query).__name__}")
    stripped = query.strip()
    if not stripped:
        raise ValidationError("query is empty: pass the text to search for")
    return stripped
