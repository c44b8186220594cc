"""From judgments (or documents alone) and the index to training groups and dev queries.

Every refusal happens here, before a model loads: too few judged queries, a dev split that
overlaps train, a held-out split that overlaps either, judged documents the index lacks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import TrainingRefusedError
from .data import (DevQuery, Group, SyntheticReport, check_disjoint, documents_in_order, fingerprint,
                   first_passages, hard_negatives, held_out_slice, sample_documents, synthetic_groups)
from .questions import query_maker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """Queries and judgments of one split (``name`` as in ``qrels/<name>.tsv``)."""

    name: str
    queries: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]]

    @classmethod
    def of(cls, data: Any) -> "Split":
        """From an :class:`es_rerank.evaluate.data.BeirData`."""
        return cls(data.split, dict(data.queries), {q: dict(d) for q, d in data.qrels.items()})


@dataclass(frozen=True)
class Prepared:
    """Training groups, dev queries and what the model card records about them.

    Attributes:
        groups: Training groups.
        dev: Dev queries (disjoint from the training queries and from the held-out split).
        positives: Passages of the dev queries' judged documents, by id.
        card: Split sizes, counts of what was dropped and why, and the data fingerprint.
    """

    groups: list[Group]
    dev: list[DevQuery]
    positives: dict[str, str] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)


def _retrieve(searcher: Any) -> Callable[[str, int], Sequence[Any]]:
    return lambda query, depth: searcher.retrieve(query, depth=depth).hits


def judged(searcher: Any, train: Split, *, dev: Split | None = None, holdout: Split | None = None, depth: int,
           skip_top: int, negatives: int, min_queries: int = 20, dev_fraction: float = 0.1, seed: int = 12,
           max_train_queries: int | None = None, on_query: Callable[[int, int], None] | None = None) -> Prepared:
    """Groups from the judged ``train`` split; dev from ``dev`` or a seeded held-out slice of train.

    Args:
        searcher: A :class:`es_rerank.client.Searcher` over the index holding the judged documents.
        train: The training split.
        dev: The split to stop early on; None holds out ``dev_fraction`` of train (reported).
        holdout: A split never to learn from (the test split): its queries may not appear in
            train or dev, and its judged documents are neither positives, negatives nor dev candidates.
        depth, skip_top, negatives: Hard-negative mining (see :func:`es_rerank.training.data.hard_negatives`).
        min_queries: Fewest training queries accepted. Defaults to 20.
        dev_fraction: Share of train held out when ``dev`` is None. Defaults to 0.1.
        seed: Seeds the held-out slice and the ``max_train_queries`` subset.
        max_train_queries: Use only this many training queries (a seeded subset), for a capped run.
        on_query: ``(done, total)`` after each query retrieved.

    Raises:
        TrainingRefusedError: Too few queries, overlapping splits, judged documents missing from the index.
    """
    train_ids = list(train.queries)
    if holdout is not None:
        check_disjoint(f"held-out split {holdout.name!r}", holdout.queries, f"train split {train.name!r}", train_ids)
    if dev is not None:
        check_disjoint(f"train split {train.name!r}", train_ids, f"dev split {dev.name!r}", dev.queries)
        if holdout is not None:
            check_disjoint(f"held-out split {holdout.name!r}", holdout.queries, f"dev split {dev.name!r}",
                           dev.queries)
        dev_ids, dev_split = list(dev.queries), dev
        dev_source = f"split {dev.name!r}"
    else:
        train_ids, dev_ids = held_out_slice(train_ids, fraction=dev_fraction, seed=seed)
        dev_split = train
        dev_source = f"held-out slice of {train.name!r} ({dev_fraction:g}, seed {seed})"
    if max_train_queries is not None and len(train_ids) > max_train_queries:
        import random

        keep = set(random.Random(seed).sample(train_ids, max_train_queries))
        train_ids = [q for q in train_ids if q in keep]
    if len(train_ids) < min_queries:
        raise TrainingRefusedError(
            f"train split {train.name!r} has {len(train_ids)} judged queries left for training; at least "
            f"{min_queries} are needed (--min-queries): too few judgments give a model that fits noise",
            reason="too-few-queries", values=(str(len(train_ids)),))
    exclude = frozenset(d for q in (holdout.qrels if holdout else {}) for d in holdout.qrels[q]) if holdout else \
        frozenset()
    wanted = {d for q in train_ids for d, g in train.qrels[q].items() if g > 0}
    wanted |= {d for q in dev_ids for d, g in dev_split.qrels[q].items() if g > 0}
    passages = first_passages(searcher.engine, searcher.settings.index, wanted)
    missing = sorted(wanted - set(passages))
    if missing:
        raise TrainingRefusedError(
            f"the qrels name {len(missing)} judged documents missing from index {searcher.settings.index!r} "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): index the collection's corpus first",
            reason="missing-documents", values=tuple(missing[:5]))
    retrieve = _retrieve(searcher)
    total, done = len(train_ids) + len(dev_ids), 0
    groups: list[Group] = []
    held_positives = no_negatives = 0
    for q in train_ids:
        relevant = [d for d, g in train.qrels[q].items() if g > 0]
        kept = [d for d in relevant if d not in exclude]
        held_positives += len(relevant) - len(kept)
        candidates = documents_in_order(retrieve(train.queries[q], depth))
        negs = hard_negatives(candidates, train.qrels[q], skip_top=skip_top, count=negatives, exclude=exclude)
        done += 1
        if on_query:
            on_query(done, total)
        if not negs:
            no_negatives += 1
            continue
        groups += [Group(q, train.queries[q], d, passages[d], tuple(h.doc_id for h in negs),
                         tuple(h.passage for h in negs)) for d in kept]
    dev_queries = []
    for q in dev_ids:
        candidates = [h for h in documents_in_order(retrieve(dev_split.queries[q], depth)) if h.doc_id not in exclude]
        dev_queries.append(DevQuery(q, dev_split.queries[q], tuple(h.doc_id for h in candidates),
                                    tuple(h.passage for h in candidates), dict(dev_split.qrels[q])))
        done += 1
        if on_query:
            on_query(done, total)
    card = {
        "source": "judgments",
        "train_split": train.name, "train_queries": len(train_ids), "groups": len(groups),
        "dev": dev_source, "dev_queries": len(dev_ids),
        "held_out_split": holdout.name if holdout else None,
        "held_out_queries": len(holdout.queries) if holdout else 0,
        "held_out_documents_excluded": len(exclude),
        "positives_dropped_held_out": held_positives,
        "queries_without_negatives": no_negatives,
        "index": searcher.settings.index,
        "fingerprint": fingerprint(sorted(train_ids), sorted(dev_ids), {q: train.qrels[q] for q in sorted(train_ids)},
                                   [(g.query_id, g.positive_id, g.negative_ids) for g in groups]),
    }
    dev_positives = {d: passages[d] for q in dev_ids for d, g in dev_split.qrels[q].items() if g > 0}
    return Prepared(groups, dev_queries, dev_positives, card)


def synthetic(searcher: Any, n: int, *, depth: int, skip_top: int, negatives: int, dev_fraction: float = 0.1,
              seed: int = 12, holdout: Split | None = None, questions: Any = None) -> tuple[Prepared, SyntheticReport]:
    """Groups from pseudo-queries of ``n`` documents of the index; dev is a held-out slice of them.

    The pseudo-queries are the documents' titles (or leading sentences), or with ``questions``
    (an :class:`es_rerank.training.questions.LLMQuestions`) what the LLM wrote for each.

    The dev slice's pseudo-queries judge only their own document, so its nDCG@10 measures
    whether the model brings the source document back up, not relevance judged by people.

    Raises:
        TrainingRefusedError: Fewer than two pseudo-queries survive.
    """
    exclude = frozenset(d for q in holdout.qrels for d in holdout.qrels[q]) if holdout else frozenset()
    docs = sample_documents(searcher.engine, searcher.settings.index, n, seed=seed, exclude=exclude)
    make_query = query_maker(docs, questions)
    groups, report = synthetic_groups(docs, _retrieve(searcher), depth=depth, skip_top=skip_top,
                                      negatives=negatives, exclude=exclude, make_query=make_query)
    if len(groups) < 2:
        raise TrainingRefusedError(f"only {len(groups)} of {len(docs)} pseudo-queries retrieved their own document: "
                                   "nothing to train on", reason="too-few-queries", values=(str(len(groups)),))
    ids = [g.query_id for g in groups]
    train_ids, dev_ids = held_out_slice(ids, fraction=dev_fraction, seed=seed)
    by_id = {g.query_id: g for g in groups}
    retrieve = _retrieve(searcher)
    dev = []
    for q in dev_ids:
        g = by_id[q]
        candidates = [h for h in documents_in_order(retrieve(g.query, depth)) if h.doc_id not in exclude]
        dev.append(DevQuery(q, g.query, tuple(h.doc_id for h in candidates), tuple(h.passage for h in candidates),
                            {g.positive_id: 1}))
    train_groups = [by_id[q] for q in train_ids]
    source = "synthetic (titles / leading sentences)" if questions is None else \
        f"synthetic (questions written by the LLM {questions.config.model!r})"
    card = {"source": source, **report.to_dict(), **({} if questions is None else questions.to_dict()),
            "train_queries": len(train_groups), "groups": len(train_groups),
            "dev": f"held-out slice of the pseudo-queries ({dev_fraction:g}, seed {seed})", "dev_queries": len(dev),
            "held_out_split": holdout.name if holdout else None, "held_out_documents_excluded": len(exclude),
            "index": searcher.settings.index,
            "fingerprint": fingerprint([(g.query_id, g.query, g.negative_ids) for g in groups])}
    return Prepared(train_groups, dev, {g.positive_id: g.positive for g in groups}, card), report
