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


def _tune_rows(report: dict) -> list[tuple[str, float]]:
    """(run file stem, the mean results.json gives it) for hybrid, every cell that has a run file
    (the table's best settings) and, with folds, the held-out run."""
    rows = [("hybrid", report["result"]["baseline"]["mean"])]
    rows += [(cell["label"].replace(" ", "_"), cell["mean"]) for cell in report["result"]["cells"]]
    if report.get("kfold"):
        rows.append(("held-out", report["kfold"]["held_out_mean"]))
    return rows


@pytest.mark.parametrize("folder", EVALS, ids=[p.relative_to(RESULTS).as_posix() for p in EVALS])
def test_every_row_re_scores_with_ranx_to_the_committed_numbers(folder):
    from ranx import Qrels, Run, evaluate

    report = json.loads((folder / "results.json").read_text())
    qrels = Qrels.from_file(str(folder / "qrels.trec"), kind="trec")
    if "result" in report:  # tune: hybrid, the listed settings and the held-out run, on its metric
        checked = 0
        for stem, mean in _tune_rows(report):
            path = folder / f"{stem}.run"
            if not path.is_file():
                continue  # a cell below the table's best: tune writes no run for it
            run = Run.from_file(str(path), kind="trec")
            assert len(run.keys()) == report["queries"], stem
            got = evaluate(qrels, run, report["metric"], make_comparable=True)
            assert round(got, 4) == round(mean, 4), stem
            checked += 1
        assert checked == len(list(folder.glob("*.run"))) and checked >= 2, folder
        return
    k = report["final_k"]
    assert report["rows"], folder
    for row in report["rows"]:
        run = Run.from_file(str(folder / f"{row['setup']}.run"), kind="trec")
        assert len(run.keys()) == report["queries"], row["setup"]
        got = evaluate(qrels, run, ["ndcg@10", f"recall@{k}"], make_comparable=True)
        for metric in ("ndcg@10", f"recall@{k}"):
            assert round(got[metric], 4) == round(row["metrics"][metric], 4), (row["setup"], metric)


def test_the_readme_cross_validated_row_is_the_held_out_run():
    """The README's 5-fold row shows the held-out mean, with its interval, that held-out.run re-scores to."""
    folder = RESULTS / "scifact-test" / "tune-test-5fold"
    report = json.loads((folder / "results.json").read_text())
    comparison = report["kfold"]["comparison"]
    line = next(line for line in (ROOT / "README.md").read_text().splitlines() if "5-fold cross-validated" in line)
    assert f"| {report['kfold']['held_out_mean']:.3f} |" in line, line
    assert f"{comparison['mean_delta']:+.3f} [{comparison['ci_low']:+.3f}, {comparison['ci_high']:+.3f}]".replace("-", "−") in line


@pytest.mark.parametrize("folder, column", [("eval", 0), ("eval-opensearch", 1)],
                         ids=["elasticsearch", "opensearch"])
def test_the_readme_table_shows_the_committed_numbers(folder, column):
    """The README's SciFact rows (nDCG@10; first column Elasticsearch, second OpenSearch) are the
    committed evals', at 3 decimals."""
    report = json.loads((RESULTS / "scifact-test" / folder / "results.json").read_text())
    assert (RESULTS / "scifact-test" / folder) in EVALS  # so its runs are re-scored above
    readme = (ROOT / "README.md").read_text()
    labels = {"bm25": "| BM25 |", "knn": "| kNN (all-MiniLM-L6-v2) |", "hybrid": "| hybrid (RRF) |",
              "hybrid+cross-encoder": "| hybrid + cross-encoder |"}
    for row in report["rows"]:
        line = next(line for line in readme.splitlines() if line.startswith(labels[row["setup"]]))
        shown = re.findall(r"\d\.\d{3}", line)[column]
        assert shown == f"{row['metrics']['ndcg@10']:.3f}", (row["setup"], line)
