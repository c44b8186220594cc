"""Plain, frozen records passed between the stages."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Union


@dataclass(frozen=True)
class Document:
    """A document read from a source, before chunking.

    Attributes:
        id: Stable document id; chunk ids derive from it.
        text: Body text (non-empty).
        title: Optional title, kept with every chunk.
        metadata: Extra fields, indexed under ``metadata.*`` and usable in filters.
        source: File the document came from.
        line: 1-based line (JSONL/CSV) or None for whole files.
    """

    id: str
    text: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    line: int | None = None


@dataclass(frozen=True)
class Rejection:
    """A record that was not indexed, and why."""

    source: str
    line: int | None
    reason: str
    doc_id: str | None = None

    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source


def passage_text(title: str, text: str) -> str:
    """What the embedder and the reranker read for a chunk: its title, then its text."""
    return f"{title}\n{text}" if title else text


@dataclass(frozen=True)
class Usage:
    """What an LLM reranker spent: requests, prompt and completion tokens, unreadable replies.

    Usages add up (``a + b``); the pipeline sums one per call, so concurrent searches never
    count each other's tokens.
    """

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    fallbacks: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk with both stages' scores.

    ``retrieval_score`` is BM25, cosine-kNN or RRF depending on the mode;
    ``rerank_score`` is the reranker's raw score (a logit for cross-encoders) unless
    normalized scores were asked for. Ranks are 1-based; ``rerank_rank`` is None
    when the hit was not reranked. ``final_score`` is what the results are ordered by
    when the two stages' orders are blended (None: the rerank score, else the retrieval
    score, orders them). ``passages`` holds the document's other matching chunks when
    results are collapsed to documents (best chunk first, this one excluded).
    """

    chunk_id: str
    doc_id: str
    chunk: int
    title: str
    text: str
    metadata: Mapping[str, Any]
    retrieval_score: float
    retrieval_rank: int
    rerank_score: float | None = None
    rerank_rank: int | None = None
    final_score: float | None = None
    passages: tuple["Hit", ...] = ()

    @property
    def passage(self) -> str:
        """The text a reranker reads for this hit: title, then text."""
        return passage_text(self.title, self.text)

    @property
    def score(self) -> float:
        """The score the hit is ordered by: final (blended) score, else rerank, else retrieval."""
        if self.final_score is not None:
            return self.final_score
        return self.retrieval_score if self.rerank_score is None else self.rerank_score

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "chunk": self.chunk,
            "title": self.title,
            "text": self.text,
            "metadata": dict(self.metadata),
            "retrieval_score": self.retrieval_score,
            "retrieval_rank": self.retrieval_rank,
            "rerank_score": self.rerank_score,
            "rerank_rank": self.rerank_rank,
            "final_score": self.final_score,
            "passages": [p.to_dict() for p in self.passages],
        }


@dataclass(frozen=True)
class Timings:
    """Milliseconds spent per stage of one search.

    ``retrieval_ms`` is wall time of the first stage, query embedding included;
    ``es_took_ms`` is the part Elasticsearch reports spending itself (``took``);
    ``rerank_ms`` is scoring only; ``model_load_ms`` is the models loaded during this search
    (the first one, unless :meth:`~es_rerank.Searcher.load_models` ran before; else 0).
    ``total_ms`` is the whole call: ``model_load_ms + retrieval_ms + rerank_ms`` plus the
    checks (a few milliseconds; a searcher's first search also detects the engine and reads
    the index's mapping).
    """

    embed_ms: float = 0.0
    retrieval_ms: float = 0.0
    es_took_ms: float = 0.0
    rerank_ms: float = 0.0
    total_ms: float = 0.0
    model_load_ms: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class SearchResult:
    """What :meth:`es_rerank.Searcher.search` returns.

    Attributes:
        query: The query text.
        hits: Up to ``final_k`` hits, best first.
        candidates: How many candidates retrieval returned (<= depth).
        mode: ``hybrid``, ``bm25`` or ``knn``.
        fusion: ``server`` or ``client`` for hybrid; None otherwise.
        reranked: Whether the reranker ordered the hits.
        reranker: Name of the reranker used, or None.
        timings: Per-stage milliseconds.
        rerank_error: Why reranking failed, when failures were allowed; else None.
        usage: LLM rerankers: requests, prompt/completion tokens and fallbacks of this search.
        settings: The pipeline settings used, each with its source (``argument``, ``environment``,
            ``settings``, ``pipeline``, ``default``), the index's pipeline and the model check.
    """

    query: str
    hits: tuple[Hit, ...]
    candidates: int
    mode: str
    fusion: str | None
    reranked: bool
    reranker: str | None
    timings: Timings
    rerank_error: str | None = None
    usage: Usage | None = None
    settings: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "mode": self.mode,
            "fusion": self.fusion,
            "reranked": self.reranked,
            "reranker": self.reranker,
            "rerank_error": self.rerank_error,
            "usage": self.usage.to_dict() if self.usage is not None else None,
            "candidates": self.candidates,
            "timings": self.timings.to_dict(),
            "hits": [h.to_dict() for h in self.hits],
            "settings": None if self.settings is None else dict(self.settings),
        }


# -- the first stage's retrievers (parsed from a request or built for a query; engines make the bodies) --

DEFAULT_RANK_CONSTANT = 60
DEFAULT_WINDOW = 10  # Elasticsearch's default rank_window_size


@dataclass(frozen=True)
class Standard:
    """A ``standard`` retriever: a query in the cluster's DSL, sent as it is.

    Attributes:
        query: The query (None: ``match_all``).
        filters: Filter clauses it runs under.
        min_score: Hits scoring below it are left out (None: keep all).
    """

    query: Mapping[str, Any] | None
    filters: tuple[Mapping[str, Any], ...] = ()
    min_score: float | None = None


@dataclass(frozen=True)
class Knn:
    """A ``knn`` retriever; ``text`` is embedded (:func:`es_rerank.retrieval.resolve_vectors`) when no ``vector``.

    Attributes:
        field: The vector field.
        k: Nearest neighbours to find.
        num_candidates: HNSW candidates per shard (None: the engine's default for ``k``).
        vector: The query vector, once known.
        text: The text to embed into ``vector``.
        similarity: Minimum similarity (Elasticsearch only).
        filters: Filter clauses applied during the search.
    """

    field: str
    k: int
    num_candidates: int | None = None
    vector: tuple[float, ...] | None = None
    text: str | None = None
    similarity: float | None = None
    filters: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Rrf:
    """An ``rrf`` retriever: reciprocal rank fusion of the first ``window`` hits of each child."""

    children: tuple["Standard | Knn | Rrf", ...]
    rank_constant: int = DEFAULT_RANK_CONSTANT
    window: int = DEFAULT_WINDOW
    # no rank_window_size of its own: it follows its parent's window (an index pipeline's depth)
    inherited: bool = field(default=False, compare=False)


Node = Union[Standard, Knn, Rrf]
"""A retriever tree: a leaf (``standard``, ``knn``) or an ``rrf`` over retrievers."""
