"""Load an evaluation collection in BEIR layout, with errors that say what is wrong."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

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
    """

    root: Path
    split: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    unknown_query_ids: tuple[str, ...] = field(default=())
    unknown_doc_ids: tuple[str, ...] = field(default=())

    @property
    def corpus_path(self) -> Path:
        return self.root / "corpus.jsonl"


def load_beir(root: str | Path, split: str = "test", *, check_corpus: bool = True) -> BeirData:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from ``root``.

    Args:
        root: Folder in BEIR layout.
        split: Which qrels file to use. Defaults to ``test``.
        check_corpus: Scan the corpus ids to count judged documents it lacks. Defaults to True.

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
    if check_corpus:
        ids = {str(obj["_id"]) for _, obj in _jsonl(corpus)}
        unknown_d = tuple(sorted({d for q in queries for d in qrels[q] if d not in ids}))
    if unknown_q:
        logger.warning("%d judged query ids are not in queries.jsonl; they are left out", len(unknown_q))
    if unknown_d:
        logger.warning("%d judged document ids are not in corpus.jsonl", len(unknown_d))
    return BeirData(root, split, queries, {q: qrels[q] for q in queries}, unknown_q, unknown_d)


def _jsonl(path: Path):
    """``(line number, object)`` for each non-blank line; an object needs an ``_id``.

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
            if not isinstance(obj, dict) or "_id" not in obj:
                raise InputError(f"{path}:{line_no}: expected a JSON object with an _id", path=str(path))
            yield line_no, obj
