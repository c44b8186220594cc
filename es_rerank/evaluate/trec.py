"""TREC run and qrels files: the per-query rankings behind an evaluation, for anyone's tools.

``eval``, ``sweep`` and ``tune`` write one run file per row of their table (``<row>.run``)
and the judgments they scored against (``qrels.trec``), so that trec_eval, ranx or
pytrec_eval can re-score them and get the printed numbers.

A run file has the six standard columns, one line per (query, document), each query's
documents best first::

    qid Q0 docid rank score tag

Ranks are 1..n in the order of the scores (the run's own order); scores are written with
``repr`` (round-trip exact). A run whose query has two documents of equal score is refused:
tools break such ties differently (trec_eval by document id, descending), so a tie would
make the numbers depend on the tool. The runs es-rerank builds (:func:`es_rerank.evaluate.metrics.doc_scores`)
never tie.

A qrels file has four columns: ``qid 0 docid relevance``.

Example:
    >>> run_lines({"q1": {"d2": 2.0, "d1": 1.0}}, tag="hybrid")
    ['q1 Q0 d2 1 2.0 hybrid', 'q1 Q0 d1 2 1.0 hybrid']
    >>> qrels_lines({"q1": {"d1": 1}})
    ['q1 0 d1 1']
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Mapping

from ..errors import InputError, ValidationError

logger = logging.getLogger(__name__)

QRELS_FILE = "qrels.trec"
RUN_SUFFIX = ".run"

_SPACE = re.compile(r"\s")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+@=-]+")


def _token(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or _SPACE.search(value):
        raise ValidationError(f"{what} must be a non-empty string without whitespace for a TREC file, got {value!r}")
    return value


def run_name(row: str) -> str:
    """A row label as a file stem and TREC tag: runs of other characters become ``_``.

    Example:
        >>> run_name("cross-encoder depth=30 blend=linear alpha=0.3"), run_name("hybrid+cross-encoder")
        ('cross-encoder_depth=30_blend=linear_alpha=0.3', 'hybrid+cross-encoder')
    """
    name = _UNSAFE.sub("_", row).strip("_")
    if not name or name.startswith("."):
        raise ValidationError(f"row label {row!r} gives no usable run file name")
    return name


def ranked(docs: Mapping[str, float], qid: str = "?") -> list[tuple[str, float]]:
    """One query's ``(docid, score)`` pairs, best first.

    Raises:
        ValidationError: A score that is not a finite number, or two documents with the same score.
    """
    items = []
    for doc, score in docs.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValidationError(f"run[{qid!r}][{doc!r}] must be a finite number, got {score!r}")
        items.append((_token(doc, f"document id of query {qid!r}"), float(score)))
    items.sort(key=lambda item: (-item[1], item[0]))
    for (a, sa), (b, sb) in zip(items, items[1:]):
        if sa == sb:
            raise ValidationError(f"run[{qid!r}] ties {a!r} and {b!r} at score {sa!r}: tools order ties "
                                  "differently, so the file would not re-score to the same numbers")
    return items


def run_lines(run: Mapping[str, Mapping[str, float]], *, tag: str) -> list[str]:
    """The lines of a TREC run file (queries in ``run`` order, documents best first).

    Args:
        run: ``query_id -> doc_id -> score``.
        tag: The run's name (last column); no whitespace.

    Raises:
        ValidationError: An id or tag with whitespace, a non-finite score, or a tie.
    """
    _token(tag, "run tag")
    lines = []
    for qid, docs in run.items():
        _token(qid, "query id")
        for rank, (doc, score) in enumerate(ranked(docs, qid), start=1):
            lines.append(f"{qid} Q0 {doc} {rank} {score!r} {tag}")
    return lines


def qrels_lines(qrels: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The lines of a TREC qrels file: ``qid 0 docid relevance``, in ``qrels`` order.

    Raises:
        ValidationError: An id with whitespace or a relevance that is not an integer.
    """
    lines = []
    for qid, docs in qrels.items():
        _token(qid, "query id")
        for doc, grade in docs.items():
            if isinstance(grade, bool) or not isinstance(grade, int):
                raise ValidationError(f"qrels[{qid!r}][{doc!r}] must be an integer grade, got {grade!r}")
            lines.append(f"{qid} 0 {_token(doc, f'document id of query {qid!r}')} {grade}")
    return lines


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Judgments from a TREC qrels file (``qid 0 docid relevance``, whitespace-separated) or a BEIR
    ``qrels/<split>.tsv`` (``query-id<TAB>corpus-id<TAB>score``, header line optional).

    Raises:
        InputError: The file is missing, a line has another number of columns or a grade that is
            not an integer (file:line named), or it judges nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: qrels file missing", path=str(path))
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            cols = line.split()
            if not cols or (line_no == 1 and cols[:2] == ["query-id", "corpus-id"]):
                continue
            if len(cols) == 4:
                qid, _, doc, grade = cols
            elif len(cols) == 3:
                qid, doc, grade = cols
            else:
                raise InputError(f"{path}:{line_no}: expected 4 columns (qid 0 docid relevance) or 3 "
                                 f"(query-id corpus-id score), got {len(cols)}", path=str(path))
            try:
                qrels.setdefault(qid, {})[doc] = int(grade)
            except ValueError:
                raise InputError(f"{path}:{line_no}: relevance must be an integer, got {grade!r}",
                                 path=str(path)) from None
    if not qrels:
        raise InputError(f"{path}: no judgments in the file", path=str(path))
    return qrels


def write_runs(out: Path, runs: Mapping[str, Mapping[str, Mapping[str, float]]],
               qrels: Mapping[str, Mapping[str, int]]) -> list[Path]:
    """Write ``<row>.run`` for every row of ``runs`` and ``qrels.trec`` into ``out``.

    Args:
        out: The results folder (created if missing).
        runs: ``row label -> run``; the label names the file and the tag (:func:`run_name`).
        qrels: The judgments the rows were scored against.

    Returns:
        The files written: the runs in ``runs`` order, then the qrels.

    Raises:
        ValidationError: Two rows whose labels give the same file name, or a bad run (see :func:`run_lines`).
    """
    names: dict[str, str] = {}
    for row in runs:
        name = run_name(row)
        if name in names:
            raise ValidationError(f"rows {names[name]!r} and {row!r} would both be written to {name}{RUN_SUFFIX}")
        names[name] = row
    texts = {name: "\n".join(run_lines(runs[row], tag=name)) + "\n" for name, row in names.items()}
    qrels_text = "\n".join(qrels_lines(qrels)) + "\n"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():  # every file is checked before the first is written
        path = out / f"{name}{RUN_SUFFIX}"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    path = out / QRELS_FILE
    path.write_text(qrels_text, encoding="utf-8")
    return [*paths, path]


def rescoring_note(files: list[str]) -> str:
    """The Markdown paragraph results.md carries on how to re-score the run files."""
    example = files[0] if files else "hybrid.run"
    return "\n".join([
        "## Run files",
        "",
        f"Every row's ranking is in a TREC run file next to this one ({', '.join(f'`{f}`' for f in files)}), "
        f"with the judgments used in `{QRELS_FILE}`. Columns: `qid Q0 docid rank score tag`; ranks follow "
        "the scores, which never tie. Re-score with ranx:",
        "",
        "```python",
        "from ranx import Qrels, Run, evaluate",
        f"qrels = Qrels.from_file(\"{QRELS_FILE}\", kind=\"trec\")",
        f"print(evaluate(qrels, Run.from_file(\"{example}\", kind=\"trec\"), \"ndcg@10\", make_comparable=True))",
        "```",
        "",
        f"or with trec_eval (`-c` counts a judged query with no results as 0, as the table does): "
        f"`trec_eval -c -m ndcg_cut.10 {QRELS_FILE} {example}`.",
        "",
    ])


__all__ = ["run_lines", "qrels_lines", "read_qrels", "write_runs", "run_name", "ranked", "rescoring_note", "QRELS_FILE",
           "RUN_SUFFIX"]
