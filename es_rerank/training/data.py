"""Training data from the user's own index: judged groups, hard negatives, pseudo-queries, splits.

Invariants kept here (the tests try to break them):

- A hard negative is never a document judged relevant (grade > 0) for its query, never one of
  the ``skip_top`` best-ranked candidates (likely unjudged positives), and never a document
  judged in the held-out split (``exclude``).
- A held-out (test) query never becomes a training or dev query, and a document judged for a
  held-out query is never a training positive, negative, or dev candidate.
- The dev queries that stop training early are disjoint from the training queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import TrainingRefusedError
from ..types import Hit, passage_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """One training example: a query, its positive passage and hard-negative passages.

    Attributes:
        query_id: The query's id (``synthetic:<doc id>`` for a pseudo-query).
        query: Its text.
        positive_id: The positive document's id.
        positive: The positive passage (title, then text).
        negative_ids: The hard negatives' document ids, best-ranked first.
        negatives: Their passages.
    """

    query_id: str
    query: str
    positive_id: str
    positive: str
    negative_ids: tuple[str, ...]
    negatives: tuple[str, ...]


@dataclass(frozen=True)
class DevQuery:
    """A dev query with its hybrid candidates (what the reranker would reorder) and judgments.

    Attributes:
        query_id: The query's id.
        query: Its text.
        candidate_ids: Document ids in hybrid order.
        candidates: Their passages, same order.
        relevant: Judged documents, id -> grade (grade > 0 is relevant).
    """

    query_id: str
    query: str
    candidate_ids: tuple[str, ...]
    candidates: tuple[str, ...]
    relevant: Mapping[str, int] = field(default_factory=dict)


def documents_in_order(hits: Sequence[Hit]) -> list[Hit]:
    """The first (best-ranked) chunk of each document, in retrieval order.

    Example:
        >>> hits = [Hit(f"{d}#{c}", d, c, "", "", {}, 1.0, r) for r, (d, c) in enumerate([("a", 1), ("b", 0), ("a", 0)], 1)]
        >>> [(h.doc_id, h.chunk) for h in documents_in_order(hits)]
        [('a', 1), ('b', 0)]
    """
    seen: set[str] = set()
    out = []
    for h in hits:
        if h.doc_id not in seen:
            seen.add(h.doc_id)
            out.append(h)
    return out


def hard_negatives(candidates: Sequence[Hit], judged: Mapping[str, int], *, skip_top: int, count: int,
                   exclude: frozenset[str] | set[str] = frozenset()) -> list[Hit]:
    """Up to ``count`` documents from ``candidates`` that are not judged relevant.

    Args:
        candidates: One hit per document, in retrieval order (see :func:`documents_in_order`).
        judged: This query's judgments, doc id -> grade; grade > 0 is never a negative.
        skip_top: Leave out the documents at retrieval ranks 1..skip_top (unjudged positives
            hide there most often).
        count: How many to return at most.
        exclude: Document ids never to use (judged in the held-out split).

    Example:
        >>> hits = [Hit(d, d, 0, "", "", {}, 1.0, r) for r, d in enumerate("abcdef", 1)]
        >>> [h.doc_id for h in hard_negatives(hits, {"d": 1, "e": 0}, skip_top=2, count=3, exclude={"f"})]
        ['c', 'e']
    """
    if skip_top < 0 or count < 0:
        raise ValueError(f"skip_top and count must be >= 0, got {skip_top} and {count}")
    out = []
    for position, h in enumerate(candidates, start=1):
        if len(out) >= count:
            break
        if position <= skip_top or judged.get(h.doc_id, 0) > 0 or h.doc_id in exclude:
            continue
        out.append(h)
    return out


def first_passages(engine: Any, index: str, doc_ids: Iterable[str], *, page: int = 500) -> dict[str, str]:
    """Each document's first chunk as the reranker reads it (title, then text), by id.

    Documents absent from the index are absent from the answer.
    """
    ids = sorted(set(doc_ids))
    out: dict[str, str] = {}
    for start in range(0, len(ids), page):
        batch = ids[start:start + page]
        body = {"size": len(batch), "_source": ["doc_id", "title", "text", "chunk"],
                "query": {"bool": {"filter": [{"terms": {"doc_id": batch}}, {"term": {"chunk": 0}}]}}}
        for h in engine.hits(engine.search(index, body)):
            out[h.doc_id] = passage_text(h.title, h.text)
    return out


def fingerprint(*parts: Any) -> str:
    """SHA-256 (first 16 hex) of the JSON of ``parts``: what the model card records of the data."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, ensure_ascii=False).encode() + b"\0")
    return h.hexdigest()[:16]


def check_disjoint(a_name: str, a: Iterable[str], b_name: str, b: Iterable[str]) -> None:
    """Refuse when two query sets share an id.

    Raises:
        TrainingRefusedError: ``split-overlap``, naming up to five shared ids.
    """
    shared = sorted(set(a) & set(b))
    if shared:
        raise TrainingRefusedError(
            f"{b_name} shares {len(shared)} queries with {a_name} ({', '.join(shared[:5])}"
            f"{', ...' if len(shared) > 5 else ''}): a model must not be stopped or judged on what it trained on",
            reason="split-overlap", values=tuple(shared[:5]))


def held_out_slice(query_ids: Sequence[str], *, fraction: float, seed: int, minimum: int = 1) -> tuple[list[str],
                                                                                                       list[str]]:
    """Split ``query_ids`` into (train, dev) by a seeded shuffle; dev gets ``fraction`` (at least ``minimum``).

    Example:
        >>> train, dev = held_out_slice([f"q{i}" for i in range(10)], fraction=0.2, seed=1)
        >>> len(train), len(dev), set(train) & set(dev)
        (8, 2, set())
    """
    ids = list(query_ids)
    random.Random(seed).shuffle(ids)
    n_dev = max(minimum, round(len(ids) * fraction))
    dev = set(ids[:n_dev])
    return [q for q in query_ids if q not in dev], [q for q in query_ids if q in dev]


# -- pseudo-queries --------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def pseudo_query(title: str, text: str, *, max_words: int = 24) -> str:
    """A query a document answers, from its title, else its leading sentence (at most ``max_words``).

    Example:
        >>> pseudo_query("", "Aspirin lowers fever. It also thins blood.")
        'Aspirin lowers fever.'
        >>> pseudo_query("Refunds for double charges", "If you were charged twice ...")
        'Refunds for double charges'
    """
    source = title.strip() if len(title.split()) >= 3 else _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    words = source.split()
    return " ".join(words[:max_words])


def sample_documents(engine: Any, index: str, n: int, *, seed: int, exclude: frozenset[str] | set[str] = frozenset(),
                     ) -> list[Hit]:
    """``n`` documents' first chunks drawn at random (seeded, repeatable) from ``index``, skipping ``exclude``."""
    body = {"size": n + len(exclude), "_source": ["doc_id", "title", "text", "chunk"],
            "query": {"function_score": {"query": {"bool": {"filter": [{"term": {"chunk": 0}}]}},
                                         "random_score": {"seed": seed, "field": "_seq_no"}, "boost_mode": "replace"}}}
    hits = [h for h in engine.hits(engine.search(index, body)) if h.doc_id not in exclude]
    return hits[:n]


@dataclass(frozen=True)
class SyntheticReport:
    """What ``--synthetic N`` made: groups kept and documents dropped, with why.

    Attributes:
        sampled: Documents drawn from the index.
        kept: Pseudo-queries kept (their document was among its own hybrid candidates).
        dropped_empty: Documents whose pseudo-query came out shorter than two words (no title or
            text to make one from, or an LLM reply with no question in it).
        dropped_not_retrieved: Pseudo-queries whose document was not among the ``depth`` candidates.
        dropped_no_negatives: Pseudo-queries with no hard negative left after the rules.
    """

    sampled: int
    kept: int
    dropped_empty: int
    dropped_not_retrieved: int
    dropped_no_negatives: int

    def to_dict(self) -> dict[str, int]:
        return {"sampled": self.sampled, "kept": self.kept, "dropped_empty": self.dropped_empty,
                "dropped_not_retrieved": self.dropped_not_retrieved,
                "dropped_no_negatives": self.dropped_no_negatives}


Retrieve = Callable[[str, int], Sequence[Hit]]


def title_query(doc: Hit) -> str:
    """The default pseudo-query of a document: :func:`pseudo_query` of its title and text."""
    return pseudo_query(doc.title, doc.text)


def synthetic_groups(docs: Sequence[Hit], retrieve: Retrieve, *, depth: int, skip_top: int, negatives: int,
                     exclude: frozenset[str] | set[str] = frozenset(), make_query: Callable[[Hit], str] = title_query,
                     ) -> tuple[list[Group], SyntheticReport]:
    """Pseudo-query groups: each document is the positive of the query made from it.

    A pseudo-query "retrieves nothing sensible" when its own document is not among its
    ``depth`` hybrid candidates; such documents are dropped and counted, as are documents too
    empty to make a query from.

    Args:
        docs: First chunks of the sampled documents.
        retrieve: ``(query, depth) -> hits`` (the first stage).
        depth, skip_top, negatives: As for :func:`hard_negatives`.
        exclude: Document ids never to use as negatives.
        make_query: A document's pseudo-query (default: :func:`title_query`); fewer than two
            words counts as too short.
    """
    groups: list[Group] = []
    empty = not_found = no_negatives = 0
    for doc in docs:
        query = make_query(doc)
        if len(query.split()) < 2:
            empty += 1
            continue
        candidates = documents_in_order(retrieve(query, depth))
        if doc.doc_id not in {h.doc_id for h in candidates}:
            not_found += 1
            continue
        negs = hard_negatives(candidates, {doc.doc_id: 1}, skip_top=skip_top, count=negatives, exclude=exclude)
        if not negs:
            no_negatives += 1
            continue
        groups.append(Group(f"synthetic:{doc.doc_id}", query, doc.doc_id, passage_text(doc.title, doc.text),
                            tuple(h.doc_id for h in negs), tuple(h.passage for h in negs)))
    report = SyntheticReport(len(docs), len(groups), empty, not_found, no_negatives)
    logger.info("synthetic: %s", report)
    return groups, report


def write_groups(path: Path, groups: Sequence[Group]) -> None:
    """The training groups as JSONL (ids only), for the record."""
    with open(path, "w", encoding="utf-8") as fh:
        for g in groups:
            fh.write(json.dumps({"query_id": g.query_id, "query": g.query, "positive": g.positive_id,
                                 "negatives": list(g.negative_ids)}, ensure_ascii=False) + "\n")
