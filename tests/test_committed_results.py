"""The committed evaluation results re-score from their own run files, by someone else's tool.

Every folder under results/ that holds a ``qrels.trec`` is an evaluation written by ``eval``: each
row of its ``results.json`` has a TREC run file beside it, and ranx, reading only those two TREC
files, must give the row's nDCG@10 and recall@final_k to 4 decimals (the README's table prints 3).
Pure file reading: no cluster, no model.
"""

from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT

RESULTS = ROOT / "results"
EVALS = sorted(p.parent for p in RESULTS.rglob("qrels.trec"))


def test_the_committed_scifact_eval_carries_its_run_files():
    """The SciFact table's source is auditable (so this file's checks below never pass vacuously)."""
    assert RESULTS / "scifact-test" / "eval" in EVALS


@pytest.mark.parametrize("folder", EVALS, ids=[p.relative_to(RESULTS).as_posix() for p in EVALS])
def test_every_row_re_scores_with_ranx_to_the_committed_numbers(folder):
    from ranx import Qrels, Run, evaluate

    report = json.loads((folder / "results.json").read_text())
    qrels = Qrels.from_file(str(folder / "qrels.trec"), kind="trec")
    k = report["final_k"]
    assert report["rows"], folder
    for row in report["rows"]:
        run = Run.from_file(str(folder / f"{row['setup']}.run"), kind="trec")
        assert len(run.keys()) == report["queries"], row["setup"]
        got = evaluate(qrels, run, ["ndcg@10", f"recall@{k}"], make_comparable=True)
        for metric in ("ndcg@10", f"recall@{k}"):
            assert round(got[metric], 4) == round(row["metrics"][metric], 4), (row["setup"], metric)


def test_the_readme_table_shows_the_committed_elasticsearch_numbers():
    """The README's SciFact rows (nDCG@10, Elasticsearch column) are the committed eval's, at 3 decimals."""
    report = json.loads((RESULTS / "scifact-test" / "eval" / "results.json").read_text())
    readme = (ROOT / "README.md").read_text()
    labels = {"bm25": "| BM25 |", "knn": "| kNN (all-MiniLM-L6-v2) |", "hybrid": "| hybrid (RRF) |",
              "hybrid+cross-encoder": "| hybrid + cross-encoder |"}
    for row in report["rows"]:
        line = next(line for line in readme.splitlines() if line.startswith(labels[row["setup"]]))
        shown = re.findall(r"\d\.\d{3}", line)[0]
        assert shown == f"{row['metrics']['ndcg@10']:.3f}", (row["setup"], line)
