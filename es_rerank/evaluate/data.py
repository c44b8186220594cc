"""Load an evaluation collection in BEIR layout, with errors that say what is wrong.

Also the BEIR convention for collections whose queries are themselves documents
(:func:`own_document_rule`, :func:`drop_own_document`).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from ..types import Hit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BeirData:
    """A BEIR collection's queries and judgments for one split.

    Attributes:
        root: The collection folder.
        split: The qrels split (``test``, ``dev``, ``train``).
        queries: Query id -> text, only the queries judged in this split, in file order.
        qrels: Query id -> {document id -> relevance grade}.
        unknown_query_ids: Judged query ids missing from ``queries.jsonl`` (dropped).
        unknown_doc_ids: Judged document ids missing from ``corpus.jsonl`` (kept; counted).
        query_ids_in_corpus: Judged query ids that are also corpus ids (ArguAna-style
            collections, whose queries are themselves documents); empty when the corpus
            was not scanned.
    """

    root: Path
    split: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    unknown_query_ids: tuple[str, ...] = field(default=())
    unknown_doc_ids: tuple[str, ...] = field(default=())
    query_ids_in_corpus: tuple[str, ...] = field(default=())

    @property
    def corpus_path(self) -> Path:
        return self.root / "corpus.jsonl"


def load_beir(root: str | Path, split: str = "test", *, check_corpus: bool = True) -> BeirData:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from ``root``.

    Args:
        root: Folder in BEIR layout.
        split: Which qrels file to use. Defaults to ``test``.
        check_corpus: Scan the corpus ids to count judged documents it lacks and to find
            query ids that are also document ids. Defaults to True.

    Returns:
        The queries judged in the split and their judgments.

    Raises:
        InputError: A file is missing, a qrels line is malformed, or the split judges no
            known query.
    """
    root = Path(root)
    corpus, queries_path, qrels_path = root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{split}.tsv"
    for path in (corpus, queries_path, qrels_path):
        if not path.is_file():
            raise InputError(f"{path}: missing (BEIR layout needs corpus.jsonl, queries.jsonl, qrels/{split}.tsv)")
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8-sig", newline="", errors="strict") as fh:
        for line_no, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not row or (line_no == 1 and row[0] == "query-id"):
                continue
            if len(row) != 3:
                raise InputError(f"{qrels_path}:{line_no}: expected 3 tab-separated columns "
                                 f"(query-id, corpus-id, score), got {len(row)}")
            try:
                grade = int(row[2])
            except ValueError:
                raise InputError(f"{qrels_path}:{line_no}: score must be an integer, got {row[2]!r}") from None
            qrels.setdefault(row[0], {})[row[1]] = grade
    all_queries: dict[str, str] = {}
    for line_no, obj in _jsonl(queries_path):
        if not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise InputError(f"{queries_path}:{line_no}: expected an object with _id and a non-empty text",
                             path=str(queries_path))
        all_queries[str(obj["_id"])] = obj["text"]
    unknown_q = tuple(sorted(q for q in qrels if q not in all_queries))
    queries = {q: all_queries[q] for q in all_queries if q in qrels and any(g > 0 for g in qrels[q].values())}
    if not queries:
        raise InputError(f"{qrels_path}: no judged query of split {split!r} is in {queries_path.name}")
    unknown_d: tuple[str, ...] = ()
    in_corpus: tuple[str, ...] = ()
    if check_corpus:
        ids = {str(obj["_id"]) for _, obj in _jsonl(corpus)}
        unknown_d = tuple(sorted({d for q in queries for d in qrels[q] if d not in ids}))
        in_corpus = tuple(q for q in queries if q in ids)
    if unknown_q:
        logger.warning("%d judged query ids are not in queries.jsonl; they are left out", len(unknown_q))
    if unknown_d:
        logger.warning("%d judged document ids are not in corpus.jsonl", len(unknown_d))
    return BeirData(root, split, queries, {q: qrels[q] for q in queries}, unknown_q, unknown_d, in_corpus)


def _jsonl(path: Path):
    """``(line number, object)`` for each non-blank line; an object needs an ``_id`` (or ``id``, as
    ``es-rerank index`` reads it, so a JSONL file of documents serves as a corpus as it is).

    Raises:
        InputError: A line that is not UTF-8, not JSON, not an object, or lacks ``_id`` (file:line).
    """
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{line_no}: not valid UTF-8 (byte {e.start})", path=str(path)) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                raise InputError(f"{path}:{line_no}: invalid JSON ({getattr(e, 'msg', type(e).__name__)})",
                                 path=str(path)) from None
            if isinstance(obj, dict) and "_id" not in obj and "id" in obj:
                obj = {"_id": obj["id"], **obj}
            if not isinstance(obj, dict) or "_id" not in obj:
                raise InputError(f"{path}:{line_no}: expected a JSON object with an _id", path=str(path))
            yield line_no, obj


# More than this share of the judged query ids must be corpus ids for the collection to be
# read as one whose queries are documents; a few numeric ids colliding by chance are not.
OWN_DOCUMENT_SHARE = 0.5


@dataclass(frozen=True)
class OwnDocumentRule:
    """Whether each query's own document is dropped from its ranking before scoring.

    BEIR's convention for collections whose queries are themselves corpus documents
    (ArguAna, Quora, CQADupStack): a query's own document would rank first and is never
    the answer, so it is removed from the ranking before the metrics are computed.
    Without it, Recall@1 on such a collection is 0 for every setup.

    Attributes:
        exclude: Drop the own document.
        automatic: True when decided from the data (no option given).
        queries_in_corpus: Judged queries whose id is a corpus id.
        queries: Judged queries.
    """

    exclude: bool
    automatic: bool
    queries_in_corpus: int
    queries: int

    def note(self, found: int | None = None) -> str:
        """One sentence for the output ("" when no query id is a corpus id and nothing was asked).

        Args:
            found: Queries whose own document was among the candidates (and so was dropped).
        """
        n, m = self.queries_in_corpus, self.queries
        if self.exclude:
            why = (f"BEIR convention: {n} of {m} query ids are corpus ids, so queries are documents here; "
                   "--keep-self keeps them" if self.automatic else "--exclude-self")
            text = f"Each query's own document was dropped from its ranking before scoring ({why})."
            if found is not None:
                text += f" {found} of {m} queries had their own document among the candidates."
            return text
        if n == 0:
            return ""
        if self.automatic:
            return (f"{n} of {m} query ids are also corpus ids, too few to read the queries as documents; "
                    "their own documents were kept in the rankings (--exclude-self drops them).")
        return (f"Each query's own document was kept in its ranking (--keep-self), though {n} of {m} query ids "
                "are corpus ids.")

    def to_dict(self, found: int | None = None) -> dict[str, Any]:
        return {"exclude": self.exclude, "automatic": self.automatic, "queries_in_corpus": self.queries_in_corpus,
                "queries": self.queries, "found": found, "note": self.note(found)}


def own_document_rule(data: BeirData, exclude: bool | None = None) -> OwnDocumentRule:
    """Decide whether to drop each query's own document from its ranking.

    Args:
        data: The collection (loaded with ``check_corpus=True`` for the automatic rule).
        exclude: True or False to decide; None (default) decides from the data: on when
            more than half of the judged query ids are corpus ids.

    Example:
        >>> d = BeirData(Path("."), "test", {"a": "x", "b": "y"}, {"a": {"c": 1}, "b": {"c": 1}},
        ...              query_ids_in_corpus=("a", "b"))
        >>> own_document_rule(d).exclude, own_document_rule(d, False).exclude
        (True, False)
    """
    n, m = len(data.query_ids_in_corpus), len(data.queries)
    if exclude is None:
        return OwnDocumentRule(m > 0 and n / m > OWN_DOCUMENT_SHARE, True, n, m)
    return OwnDocumentRule(bool(exclude), False, n, m)


def drop_own_document(query_id: str, hits: Sequence[Hit]) -> tuple[list[Hit], bool]:
    """``hits`` without the chunks of the document whose id is ``query_id``, ranks renumbered.

    Returns:
        The remaining hits (retrieval ranks 1..n again, scores kept) and whether any was dropped.

    Example:
        >>> hits = [Hit(f"{d}#0", d, 0, "", "", {}, 1.0 / r, r) for r, d in enumerate(["q1", "d2", "d3"], 1)]
        >>> kept, dropped = drop_own_document("q1", hits)
        >>> [(h.doc_id, h.retrieval_rank) for h in kept], dropped
        ([('d2', 1), ('d3', 2)], True)
    """
    kept = [h for h in hits if h.doc_id != query_id]
    if len(kept) == len(hits):
        return list(hits), False
    return [h if h.retrieval_rank == rank else replace(h, retrieval_rank=rank)
            for rank, h in enumerate(kept, start=1)], True
