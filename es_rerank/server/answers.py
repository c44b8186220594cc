"""The other half of the translation: what the server's searches ask for, the hits they get back,
and Elasticsearch's response JSON built from es-rerank's results. Pure (no I/O), tested by exact
equality; the requests are parsed in :mod:`es_rerank.server.translate`.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Any, Iterator, Mapping, Sequence

from ..retrieval import source_fields
from ..types import Hit
from .translate import InferenceRequest, RerankSearch, SourceSpec


# -- what the searches ask for ----------------------------------------------------------------

def source_request(spec: SourceSpec, needed: Sequence[str]) -> Any:
    """The ``_source`` to ask the cluster for: the caller's includes plus the fields reranking needs.

    None means "leave ``_source`` out" (the whole document); the caller's own filter is
    applied afterwards by :func:`filter_source`.
    """
    if not spec.enabled:
        return list(needed) if needed else False
    if spec.includes:
        return source_fields(needed, spec.includes)
    return None


def _hit(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(path, p) for p in patterns)


def _could_hold(path: str, patterns: Sequence[str]) -> bool:
    """Whether some pattern may match a field below ``path``."""
    prefix = path + "."
    return any(p.startswith(prefix) or "*" in p for p in patterns)


def _filter(node: Mapping[str, Any], prefix: str, includes: Sequence[str], excludes: Sequence[str]) -> dict:
    out: dict[str, Any] = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if _hit(path, excludes):
            continue
        whole = not includes or _hit(path, includes)
        if isinstance(value, Mapping):
            if whole or _could_hold(path, includes):
                sub = _filter(value, path + ".", () if whole else includes, excludes)
                if sub or (whole and not value):
                    out[key] = sub
        elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
            if whole or _could_hold(path, includes):
                items = [_filter(v, path + ".", () if whole else includes, excludes) if isinstance(v, Mapping)
                         else v for v in value if isinstance(v, Mapping) or whole]
                items = [v for v in items if v != {} or whole]
                if items or whole:
                    out[key] = items
        elif whole:
            out[key] = value
    return out


def filter_source(source: Mapping[str, Any] | None, spec: SourceSpec) -> dict[str, Any] | None:
    """``source`` as the caller's ``_source`` filter shows it (None: no ``_source`` in the hit).

    Patterns follow Elasticsearch: a pattern matching an object keeps the whole object,
    ``*`` is a wildcard, excludes win over includes.

    Example:
        >>> filter_source({"a": 1, "b": {"c": 2, "d": 3}}, SourceSpec(includes=("b.*",), excludes=("b.d",)))
        {'b': {'c': 2}}
    """
    if not spec.enabled or source is None:
        return None
    if not spec.includes and not spec.excludes:
        return dict(source)
    return _filter(source, "", spec.includes, spec.excludes)


# -- hits -------------------------------------------------------------------------------------------

_MISSING = object()


def _lookup(node: Any, parts: Sequence[str]) -> Any:
    if not parts:
        return node
    if isinstance(node, list):
        found = [_lookup(item, parts) for item in node]
        found = [f for f in found if f is not _MISSING]
        return found if found else _MISSING
    if isinstance(node, Mapping):
        for i in range(len(parts), 0, -1):  # a literal dotted key, else an object path
            key = ".".join(parts[:i])
            if key in node:
                return _lookup(node[key], parts[i:])
    return _MISSING


def _flatten(value: Any) -> Iterator[str]:
    if isinstance(value, list):
        for v in value:
            yield from _flatten(v)
    elif isinstance(value, str):
        yield value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield str(value)


def field_text(source: Mapping[str, Any] | None, path: str) -> str:
    """The text a reranker reads from ``_source[path]`` (a dotted path).

    A string is read as it is; numbers as their text; an array joins its values with
    newlines. A hit without the field (or with only objects or booleans in it) reads as
    the empty string: it is still scored, and usually lands last.

    Example:
        >>> field_text({"body": {"text": ["one", "two"]}}, "body.text")
        'one\\ntwo'
        >>> field_text({"title": "x"}, "body")
        ''
    """
    value = _lookup(source or {}, path.split("."))
    if value is _MISSING:
        return ""
    return "\n".join(_flatten(value))


def hit_key(raw: Mapping[str, Any]) -> str:
    """A hit's identity across indices (index names cannot contain ``/``)."""
    return f"{raw['_index']}/{raw['_id']}"


def field_hits(resp: Mapping[str, Any], field_name: str) -> tuple[list[Hit], dict[str, Mapping[str, Any]]]:
    """Hits of any index for reranking on ``field_name``, and the raw hits by key.

    Each hit is its own document (``doc_id`` = its key), so collapsing changes nothing.
    """
    hits, raw = [], {}
    for rank, h in enumerate(resp["hits"]["hits"], start=1):
        key = hit_key(h)
        raw.setdefault(key, h)
        hits.append(Hit(chunk_id=key, doc_id=key, chunk=0, title="", text=field_text(h.get("_source"), field_name),
                        metadata={}, retrieval_score=float(h.get("_score") or 0.0), retrieval_rank=rank))
    return hits, raw


def combine_totals(responses: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """``hits.total`` of a retrieval made of one or more searches (several: at least the largest)."""
    totals = [r.get("hits", {}).get("total") for r in responses]
    totals = [t if isinstance(t, Mapping) else {"value": int(t), "relation": "eq"} for t in totals if t is not None]
    if not totals:
        return None
    if len(totals) == 1:
        return dict(totals[0])
    return {"value": max(int(t["value"]) for t in totals), "relation": "gte"}


# -- answers -----------------------------------------------------------------------------------------

def explanation(hit: Hit, *, reranked: bool, inference_id: str) -> dict[str, Any]:
    """``_explanation``: the rerank score, with the retrieval rank and score under it."""
    retrieval = {"value": hit.retrieval_score, "description": f"retrieval rank {hit.retrieval_rank}, retrieval score",
                 "details": []}
    if not reranked:
        return {"value": hit.score, "description": "not reranked (the reranker failed): retrieval order",
                "details": [retrieval]}
    described = f"text_similarity_reranker score from [{inference_id}], rerank rank {hit.rerank_rank}"
    if hit.final_score is not None and hit.final_score != hit.rerank_score:
        described += f" (blended; rerank score {hit.rerank_score})"
    return {"value": hit.score, "description": described, "details": [retrieval]}


def search_response(spec: RerankSearch, hits: Sequence[Hit], raw: Mapping[str, Mapping[str, Any]], *,
                    took_ms: float, total: Mapping[str, Any] | None, shards: Mapping[str, Any] | None,
                    timed_out: bool, reranked: bool, inference_id: str, error: str | None = None,
                    fusion: str | None = None, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Elasticsearch's ``_search`` response for reranked hits (already cut to ``from``/``size``).

    ``_score`` is the score the hits are ordered by: the rerank score (or the blend of
    both stages when ``ES_RERANK_BLEND`` asks for one; the retrieval score when the
    reranker failed and failures are allowed). A top-level ``es_rerank`` object says
    whether the hits were reranked, by which reranker, and why not.
    """
    out_hits = []
    for h in hits:
        r = raw[h.chunk_id]
        item: dict[str, Any] = {"_index": r["_index"], "_id": r["_id"], "_score": h.score}
        for key in ("_routing", "_ignored"):
            if key in r:
                item[key] = r[key]
        source = filter_source(r.get("_source"), spec.source)
        if source is not None:
            item["_source"] = source
        if spec.explain:
            item["_explanation"] = explanation(h, reranked=reranked, inference_id=inference_id)
        out_hits.append(item)
    total = dict(total) if total is not None else {"value": len(out_hits), "relation": "eq"}
    body = {
        "took": int(round(took_ms)),
        "timed_out": timed_out,
        "_shards": dict(shards) if shards is not None else {"total": 0, "successful": 0, "skipped": 0, "failed": 0},
        "hits": {
            "total": int(total["value"]) if spec.total_as_int else total,
            "max_score": max((h["_score"] for h in out_hits), default=None),
            "hits": out_hits,
        },
        "es_rerank": {"reranked": reranked, "inference_id": inference_id, "fusion": fusion},
    }
    if error is not None:
        body["es_rerank"]["error"] = error
    if provenance is not None:  # settings and where each came from, the index's pipeline, the model check
        body["es_rerank"].update(provenance)
    return body


def inference_response(request: InferenceRequest, scores: Sequence[float]) -> dict[str, Any]:
    """Elasticsearch's rerank answer: inputs by descending ``relevance_score`` (ties: input order).

    A non-finite score (a reranker's "could not score") is reported as null and sorts last.
    """
    clean = [float(s) if s is not None and math.isfinite(float(s)) else None for s in scores]
    order = sorted(range(len(clean)), key=lambda i: (clean[i] is None, -(clean[i] or 0.0), i))
    if request.top_n is not None:
        order = order[:request.top_n]
    items = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": clean[i]}
        if request.return_documents:
            item["text"] = request.inputs[i]
        items.append(item)
    return {"rerank": items}


BANNER_NODE_FIELDS = ("name", "version", "build_flavor", "build_type", "build_hash")


def root_banner(nodes: Mapping[str, Any], cluster_uuid: str | None = None) -> dict[str, Any]:
    """Elasticsearch's ``GET /`` answer, built from the node's own info (``GET /_nodes/_local``).

    For a cluster that does not serve ``GET /`` itself: Elasticsearch's Maven integ-test
    distribution leaves out the ``rest-root`` module that answers it (and answers 405).
    Only what the node reports is shown; ``es_rerank.banner`` says where it came from.

    Args:
        nodes: The ``_nodes/_local`` answer (``cluster_name`` and one node's fields).
        cluster_uuid: ``metadata.cluster_uuid`` of the cluster state, when the caller may read it.

    Example:
        >>> root_banner({"cluster_name": "c", "nodes": {"x": {"name": "n", "version": "9.2.8"}}})["version"]
        {'number': '9.2.8', 'build_snapshot': False}
    """
    node = next(iter((nodes.get("nodes") or {}).values()), {})
    number = node.get("version")
    version: dict[str, Any] = {"number": number}
    version.update({k: node[k] for k in ("build_flavor", "build_type", "build_hash") if k in node})
    version["build_snapshot"] = isinstance(number, str) and number.endswith("-SNAPSHOT")
    banner: dict[str, Any] = {"name": node.get("name"), "cluster_name": nodes.get("cluster_name")}
    if cluster_uuid:
        banner["cluster_uuid"] = cluster_uuid
    banner.update(version=version, tagline="You Know, for Search",
                  es_rerank={"banner": "built by es-rerank serve from GET /_nodes/_local: the cluster does not "
                                       "answer GET / itself"})
    return banner
