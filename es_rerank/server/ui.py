"""The comparison page of ``es-rerank serve``: two rankings of one query, side by side.

``GET /_es_rerank/ui`` is a static page shipped in the package (``static/``: HTML, one
script, one style sheet; no build step, nothing fetched from elsewhere). It calls one
small JSON endpoint, ``POST /_es_rerank/ui/compare``, which runs the server's own two
stages: the hybrid first stage of :meth:`RerankService.retrieve` (BM25 + kNN, fused by RRF,
the query embedded with the index's embedder) and, for each side, the one rerank step
(:meth:`es_rerank.rerank_step.RerankStep.run`) with that side's reranker and blend. The
``_search`` API returns one ranking with one blend (``ES_RERANK_BLEND``); the page needs
two rankings of the same candidates, either blend, and each stage's time, so it has this
endpoint instead of a new search path.

Credentials: every request the endpoint sends to the cluster carries the caller's own
``Authorization`` header (the page sends what is typed into it, or the browser's own), so the
cluster decides, as for every other request; a refusal comes back as the cluster's answer
(without ``WWW-Authenticate``, so the browser shows the page's message, not a login box).
``GET /_es_rerank/ui/judged`` (the judged queries) answers only callers the cluster accepts, and
``GET /_es_rerank/ui/indices`` (names to pick from) lists what the cluster lets the caller list.
The page never calls the passthrough: a secured cluster's challenge would open the browser's
login box instead of showing the refusal.

With judgments loaded (``serve --qrels FILE``, or ``--data DIR --split S``), hits judged
relevant are marked and each side's nDCG@10 for that query is given
(:func:`es_rerank.evaluate.metrics.per_query`, the function ``eval`` uses).

``ES_RERANK_SERVE_UI=false`` turns the page and its endpoints off.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..engines.base import validate_index_name
from ..errors import ValidationError
from ..ranking import BLEND_METHODS
from ..types import Hit
from .errors import ApiError, bad_request
from .pipeline import RerankService, caller_headers, is_es_rerank
from .translate import RerankSearch

logger = logging.getLogger(__name__)

UI_PATH = "/_es_rerank/ui"
COMPARE_PATH = UI_PATH + "/compare"
JUDGED_PATH = UI_PATH + "/judged"
NO_RERANKER = "none"
PRIMARY_METRIC = "ndcg@10"
COMPARE_KEYS = ("index", "query", "qid", "depth", "final_k", "sides")
SIDE_KEYS = ("reranker", "blend", "blend_weight")
STATIC_FILES = {"": ("ui.html", "text/html; charset=utf-8"),
                "/ui.js": ("ui.js", "text/javascript; charset=utf-8"),
                "/ui.css": ("ui.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    # only the page's own files and its own endpoint: no inline script, no other origin
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def static_file(name: str) -> bytes:
    """One of the page's files, from the installed package."""
    return resources.files("es_rerank.server").joinpath("static", name).read_bytes()


# -- judgments ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Judgments:
    """Relevance judgments the page marks hits with, and the judged queries' texts when known.

    Attributes:
        qrels: ``query_id -> doc_id -> grade``.
        queries: ``query_id -> text`` (empty for a bare qrels file).
        source: Where they came from (shown on the page).
    """

    qrels: Mapping[str, Mapping[str, int]]
    queries: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    def query_id(self, qid: str | None, text: str) -> str | None:
        """The judged query a request is about: its ``qid`` when judged, else the query whose text it is."""
        if qid:
            return qid if qid in self.qrels else None
        wanted = " ".join(text.split())
        for q, t in self.queries.items():
            if " ".join(t.split()) == wanted:
                return q
        return None

    def ndcg(self, qid: str, hits: Sequence[Hit]) -> float:
        """nDCG@10 of one query's ranking (documents, best first), as ``eval`` computes it."""
        from ..evaluate.metrics import doc_scores, per_query

        return per_query({qid: dict(self.qrels[qid])}, {qid: doc_scores(hits)}, PRIMARY_METRIC)[qid]

    def warm_up(self) -> None:
        """Compile the metric once (ranx's first call takes seconds)."""
        qid = next(iter(self.qrels))
        self.ndcg(qid, [])


def load_judgments(*, qrels_file: str | Path | None = None, data_dir: str | Path | None = None,
                   split: str = "test") -> Judgments | None:
    """Judgments from a qrels file (TREC or BEIR tsv), or from a BEIR folder's split (with query texts).

    Returns:
        None when neither is given.

    Raises:
        InputError: A missing or malformed file.
        ValidationError: Both given.
    """
    if qrels_file is not None and data_dir is not None:
        raise ValidationError("give --qrels or --data, not both")
    if qrels_file is not None:
        from ..evaluate.trec import read_qrels

        return Judgments(read_qrels(qrels_file), {}, Path(qrels_file).name)  # the page shows no server path
    if data_dir is not None:
        from ..evaluate.data import load_beir

        data = load_beir(data_dir, split, check_corpus=False)
        return Judgments(data.qrels, data.queries, f"{Path(data_dir).name}/{split}")
    return None


# -- the request ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Side:
    """One ranking of the page: a reranker (``none``: the hybrid order) and how it is blended."""

    reranker: str
    blend: str = "none"
    blend_weight: float = 0.5

    def label(self) -> str:
        if self.reranker == NO_RERANKER:
            return "hybrid"
        text = f"{self.reranker}, blend {self.blend}"
        return text + (f" {self.blend_weight:g}" if self.blend == "linear" else "")


@dataclass(frozen=True)
class CompareRequest:
    """``POST /_es_rerank/ui/compare``: one query, two sides."""

    index: str
    query: str
    depth: int
    final_k: int
    sides: tuple[Side, Side]
    qid: str | None = None


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_request(f"[{name}] must be an integer from {lo} to {hi}, got {json.dumps(value)}")
    return value


def parse_compare(body: Any, *, rerankers: Sequence[str], max_window: int) -> CompareRequest:
    """The page's request, validated.

    Example:
        >>> r = parse_compare({"index": "docs", "query": "refund", "depth": 20, "final_k": 5,
        ...                    "sides": [{"reranker": "none"}, {"reranker": "cross-encoder"}]},
        ...                   rerankers=["cross-encoder"], max_window=1000)
        >>> [s.label() for s in r.sides]
        ['hybrid', 'cross-encoder, blend none']

    Raises:
        ApiError: 400 naming the field and the value.
    """
    if not isinstance(body, Mapping):
        raise bad_request("the request body must be a JSON object")
    unknown = [k for k in body if k not in COMPARE_KEYS]
    if unknown:
        raise bad_request(f"unknown field [{unknown[0]}]; known: {', '.join(COMPARE_KEYS)}")
    index = body.get("index")
    if not isinstance(index, str) or not index.strip():
        raise bad_request(f"[index] must be an index or alias name, got {json.dumps(index)}")
    try:
        validate_index_name(index.strip())
    except ValidationError as e:
        raise bad_request(f"[index] {e}") from None
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise bad_request(f"[query] must be a non-empty string, got {json.dumps(query)}")
    depth = _int(body.get("depth", 50), "depth", 1, max_window)
    final_k = _int(body.get("final_k", 10), "final_k", 1, depth)
    qid = body.get("qid")
    if qid is not None and (not isinstance(qid, str) or not qid.strip()):
        raise bad_request(f"[qid] must be a query id or absent, got {json.dumps(qid)}")
    raw = body.get("sides")
    if not isinstance(raw, list) or len(raw) != 2:
        raise bad_request(f"[sides] must be a list of two settings, got {json.dumps(raw)[:200]}")
    known = [NO_RERANKER, *rerankers]
    sides = []
    for i, side in enumerate(raw):
        where = f"sides[{i}]"
        if not isinstance(side, Mapping):
            raise bad_request(f"[{where}] must be an object")
        extra = [k for k in side if k not in SIDE_KEYS]
        if extra:
            raise bad_request(f"[{where}] unknown field [{extra[0]}]; known: {', '.join(SIDE_KEYS)}")
        reranker = side.get("reranker", NO_RERANKER)
        if reranker not in known:
            raise bad_request(f"[{where}.reranker] must be one of {', '.join(known)}, got {json.dumps(reranker)}")
        blend = side.get("blend", "none")
        if blend not in BLEND_METHODS:
            raise bad_request(f"[{where}.blend] must be one of {', '.join(BLEND_METHODS)}, got {json.dumps(blend)}")
        weight = side.get("blend_weight", 0.5)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise bad_request(f"[{where}.blend_weight] must be a number from 0 to 1, got {json.dumps(weight)}")
        sides.append(Side(reranker, blend, float(weight)))
    return CompareRequest(index.strip(), query.strip(), depth, final_k, (sides[0], sides[1]),
                          qid.strip() if isinstance(qid, str) else None)


# -- the work -----------------------------------------------------------------------------------

def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _hit_json(h: Hit, rank: int, other: Mapping[str, int], grades: Mapping[str, int] | None) -> dict[str, Any]:
    return {"doc_id": h.doc_id, "title": h.title, "text": h.text, "rank": rank, "other_rank": other.get(h.doc_id),
            "retrieval_score": _number(h.retrieval_score), "retrieval_rank": h.retrieval_rank,
            "rerank_score": _number(h.rerank_score), "rerank_rank": h.rerank_rank,
            "final_score": _number(h.final_score), "score": _number(h.score),
            "relevance": None if grades is None else grades.get(h.doc_id, 0)}


def compare(service: RerankService, request: CompareRequest, headers: Mapping[str, str], *,
            judgments: Judgments | None = None, deadline: float | None = None) -> dict[str, Any]:
    """Retrieve the hybrid candidates once and rank them for each side, with timings.

    Args:
        service: The server's retrieval and rerank service.
        request: The parsed request.
        headers: The caller's headers (only the credentials are sent on).
        judgments: Marks and nDCG@10 when the query is judged. Defaults to None.
        deadline: ``time.monotonic()`` by which the answer is due.

    Returns:
        The page's JSON: the candidates, the timings, and per side its top ``final_k``
        documents, each with both stages' scores and ranks and its rank on the other side.

    Raises:
        ApiError: 400 for an index es-rerank did not build; ClusterError, IndexMissingError,
            RerankerError and TimeoutError as a search raises them.
    """
    started = time.perf_counter()
    headers = caller_headers(headers)
    state = service.index_state(request.index, headers)
    if state is not None and not is_es_rerank(state):
        raise bad_request(f"[index] {request.index!r} was not built by es-rerank (no es_rerank marker in its "
                          "mapping's _meta): the page compares es-rerank indices")
    engine = service.engine
    embedder = service.embedder_for(state)
    t0 = time.perf_counter()
    vector = tuple(float(x) for x in embedder.embed_query(request.query))
    embed_ms = (time.perf_counter() - t0) * 1000.0
    depth = request.depth
    child = engine.hybrid_retriever(request.query, depth=depth, rank_constant=service.settings.rank_constant,
                                    vector=vector)
    spec = RerankSearch(child, "text", request.query, None, depth)
    t0 = time.perf_counter()
    first = service.retrieve(spec, request.index, headers, es_index=True, embedder=embedder)
    retrieval_ms = (time.perf_counter() - t0) * 1000.0
    qid = judgments.query_id(request.qid, request.query) if judgments is not None else None
    grades = judgments.qrels[qid] if judgments is not None and qid is not None else None
    ranked = []
    for side in request.sides:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("the request's time (ES_RERANK_SERVE_TIMEOUT) ran out before both sides were ranked")
        scorer = None if side.reranker == NO_RERANKER else service.scorer(side.reranker, deadline=deadline)
        ranked.append(service.rerank_step.run(request.query, first.hits, final_k=None, reranker=scorer,
                                              blend=side.blend, blend_weight=side.blend_weight,
                                              results="documents"))
    positions = [{h.doc_id: rank for rank, h in enumerate(r.hits, start=1)} for r in ranked]
    sides = []
    for i, (side, out) in enumerate(zip(request.sides, ranked)):
        other = positions[1 - i]
        sides.append({
            "label": side.label(), "reranker": side.reranker, "blend": side.blend,
            "blend_weight": side.blend_weight, "reranked": out.reranked, "error": out.error,
            "rerank_ms": out.rerank_ms, "documents": len(out.hits),
            "ndcg_at_10": judgments.ndcg(qid, out.hits) if grades is not None else None,
            "hits": [_hit_json(h, rank, other, grades) for rank, h in enumerate(out.hits[:request.final_k], start=1)],
        })
    return {
        "index": request.index, "query": request.query, "qid": qid, "judged": grades is not None,
        "judgments": None if judgments is None else judgments.source,
        "depth": depth, "final_k": request.final_k, "candidates": len(first.hits), "fusion": first.fusion,
        "timings": {"embed_ms": embed_ms, "retrieval_ms": retrieval_ms,
                    "rerank_ms": [s["rerank_ms"] for s in sides],
                    "total_ms": (time.perf_counter() - started) * 1000.0},
        "sides": sides,
    }


__all__ = ["UI_PATH", "COMPARE_PATH", "JUDGED_PATH", "Judgments", "load_judgments", "Side", "CompareRequest",
           "parse_compare", "compare", "static_file", "SECURITY_HEADERS", "STATIC_FILES"]
