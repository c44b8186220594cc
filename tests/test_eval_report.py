"""Eval, sweep and tune reports on constructed numbers: paired statistics, advice, plot data, files.

Pure: no cluster and no model. The end-to-end runs are in test_eval_es.py.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from es_rerank.errors import ValidationError
from es_rerank.evaluate.data import BeirData, drop_own_document, own_document_rule
from es_rerank.evaluate.metrics import percentiles
from es_rerank.evaluate.report import (
    eval_html,
    eval_markdown,
    eval_table,
    sweep_figure,
    sweep_html,
    sweep_series,
    sweep_table,
    tune_html,
    tune_markdown,
    tune_table,
    write_eval,
    write_sweep,
    write_tune,
)
from es_rerank.evaluate.evaluation import EvalReport, Row, gap_analysis
from es_rerank.evaluate.runner import FEW_QUERIES, QueryDetails
from es_rerank.evaluate.sweep import SweepPoint, SweepReport, sweep_advice
from es_rerank.evaluate.tuning import TuneDetails, TuneReport, tune_depths
from es_rerank.evaluate.stats import paired_comparison
from es_rerank.evaluate.tune import NO_HELP, cross_validate, evaluate_grid, select
from es_rerank.types import Hit


def _hit(doc, rank, chunk=0):
    return Hit(f"{doc}#{chunk}", doc, chunk, f"Title {doc}", "", {}, 1 / (60 + rank), rank)


def _values(n, mean, spread, seed):
    rng = np.random.default_rng(seed)
    return {f"q{i:03d}": float(np.clip(mean + spread * rng.standard_normal(), 0, 1)) for i in range(n)}


def _compare(base, delta, noise, seed, metric="ndcg@10"):
    rng = np.random.default_rng(seed)
    new = {q: float(np.clip(v + delta + noise * rng.standard_normal(), 0, 1)) for q, v in base.items()}
    return paired_comparison(base, new, metric=metric, resamples=2000)


# -- own document ---------------------------------------------------------------------------------

def _data(n_queries, in_corpus):
    qids = [f"q{i}" for i in range(n_queries)]
    return BeirData(Path("."), "test", {q: q for q in qids}, {q: {"d": 1} for q in qids},
                    query_ids_in_corpus=tuple(qids[:in_corpus]))


def test_own_document_rule_follows_the_data_unless_told():
    assert own_document_rule(_data(10, 10)).exclude is True          # ArguAna-style: every query is a document
    assert own_document_rule(_data(10, 6)).exclude is True
    assert own_document_rule(_data(10, 5)).exclude is False          # half is not most
    assert own_document_rule(_data(300, 2)).exclude is False         # numeric ids colliding by chance
    assert own_document_rule(_data(10, 0), True).exclude is True     # --exclude-self
    assert own_document_rule(_data(10, 10), False).exclude is False  # --keep-self
    rule = own_document_rule(_data(10, 10))
    assert rule.automatic and "BEIR convention: 10 of 10 query ids are corpus ids" in rule.note(7)
    assert "7 of 10 queries had their own document among the candidates" in rule.note(7)
    assert "--exclude-self drops them" in own_document_rule(_data(300, 2)).note()
    assert own_document_rule(_data(10, 0)).note() == ""
    assert own_document_rule(_data(10, 10), False).to_dict()["note"].startswith("Each query's own document was kept")


def test_drop_own_document_removes_every_chunk_and_renumbers():
    hits = [_hit("q1", 1, 0), _hit("a", 2), _hit("q1", 3, 1), _hit("b", 4)]
    kept, dropped = drop_own_document("q1", hits)
    assert dropped and [(h.doc_id, h.retrieval_rank) for h in kept] == [("a", 1), ("b", 2)]
    assert [h.retrieval_score for h in kept] == [hits[1].retrieval_score, hits[3].retrieval_score]
    same, dropped = drop_own_document("zz", hits)
    assert not dropped and same == hits and same is not hits


# -- eval ---------------------------------------------------------------------------------------

def _eval_report(depth=20, final_k=5, n=40):
    base = _values(n, 0.6, 0.2, 1)
    qids = list(base)
    rows = []
    for setup, delta in (("bm25", -0.05), ("knn", -0.02), ("hybrid", None), ("hybrid+cross-encoder", 0.08)):
        comparisons = {}
        if delta is not None:
            comparisons = {f"recall@{final_k}": _compare(base, delta, 0.05, 2, f"recall@{final_k}"),
                           "ndcg@10": _compare(base, delta, 0.05, 3)}
        ks = sorted(k for k in {1, 3, 5, 10, final_k, depth} if k <= depth)
        m = {f"recall@{k}": 0.5 + 0.01 * k for k in ks}
        m[f"recall@{final_k}"] = 0.6 + (delta or 0.0)
        m[f"recall@{depth}"] = 0.9
        m.update({f"hit_rate@{final_k}": 0.7, f"hit_rate@{depth}": 0.95, "ndcg@10": 0.6 + (delta or 0.0),
                  "mrr@10": 0.55})
        rows.append(Row(setup=setup, metrics=m, retrieval_ms=percentiles([10.0, 12.0]),
                        rerank_ms=percentiles([100.0, 140.0]) if setup.startswith("hybrid+") else percentiles([]),
                        comparisons=comparisons))
    hits = {q: tuple(_hit(f"{q}-d{r}", r) for r in range(1, 11)) for q in qids}
    details = QueryDetails({q: f"text of {q}" for q in qids}, {q: {f"{q}-d3": 1} for q in qids},
                           {"hybrid": base, "hybrid+cross-encoder": {q: min(1.0, v + 0.1) for q, v in base.items()}},
                           {"hybrid": hits, "hybrid+cross-encoder": {q: h[::-1] for q, h in hits.items()}})
    report = EvalReport(data="/data/scifact", split="test", queries=n, depth=depth, final_k=final_k, blend="rrf",
                        blend_weight=0.5, rows=tuple(rows), gap={}, own_document=own_document_rule(_data(n, n)).to_dict(3),
                        environment={"cpu": "test", "reranker_model": "/m/ce"}, wall_seconds=12.0, details=details)
    from dataclasses import replace

    return replace(report, gap=gap_analysis(report))


def test_eval_table_and_gap_carry_the_paired_statistics():
    report = _eval_report()
    table = eval_table(report)
    c = report.row("hybrid+cross-encoder").comparisons["ndcg@10"]
    r = report.row("hybrid+cross-encoder").comparisons["recall@5"]
    assert "ΔnDCG@10 vs hybrid [95% CI]" in table and "W/T/L Recall@5" in table
    assert f"{c.mean_delta:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}]" in table
    assert f"{c.wins}/{c.ties}/{c.losses}" in table
    hybrid_line = next(line for line in table.splitlines() if line.startswith("hybrid "))
    assert hybrid_line.count("—") >= 4  # hybrid is not compared with itself
    summary = report.gap["summary"]
    assert f"{r.mean_delta:+.3f}, 95% CI {r.ci_low:+.3f} to {r.ci_high:+.3f}; {r.wins} wins, {r.ties} ties, " \
           f"{r.losses} losses: better" in summary
    assert "nDCG@10 from" in summary and "over 40 queries" in summary
    assert report.gap["rerankers"]["hybrid+cross-encoder"]["ndcg_verdict"] == "better"
    md = eval_markdown(report)
    assert "| hybrid+cross-encoder |" in md and "paired bootstrap" in md
    assert "Each query's own document was dropped" in md
    assert "blend rrf" in md and "reranker model ce" in md


def test_eval_at_depth_below_ten():
    report = _eval_report(depth=5, final_k=3)
    table = eval_table(report)
    assert "Recall@5" in table and "Recall@10" not in table
    assert "the hybrid top 5 for" in report.gap["summary"]


def test_eval_files_and_json(tmp_path):
    report = _eval_report()
    paths = write_eval(report, tmp_path)
    assert [p.name for p in paths] == ["results.json", "results.md", "report.html"]
    data = json.loads((tmp_path / "results.json").read_text())
    row = next(r for r in data["rows"] if r["setup"] == "hybrid+cross-encoder")
    comp = row["comparisons"]["ndcg@10"]
    assert set(comp) >= {"mean_delta", "ci_low", "ci_high", "wins", "ties", "losses", "deltas", "seed", "better"}
    assert len(comp["deltas"]) == 40 and comp["seed"] == 0
    assert next(r for r in data["rows"] if r["setup"] == "hybrid")["comparisons"] == {}
    assert data["own_document"]["exclude"] is True and data["own_document"]["found"] == 3
    assert "details" not in data and data["blend"] == "rrf"
    html = (tmp_path / "report.html").read_text()
    assert html.count('<li class="q"') == 40 and "Per query: hybrid vs hybrid+cross-encoder" in html
    assert "data:image/png;base64," in html


# -- sweep --------------------------------------------------------------------------------------

def _point(depth, base, delta, noise, seed, final_k=5):
    c = _compare(base, delta, noise, seed)
    rc = _compare(base, delta / 2, noise, seed + 100, f"recall@{final_k}")
    return SweepPoint(depth=depth,
                      retrieval={"ndcg@10": c.baseline_mean, f"recall@{final_k}": rc.baseline_mean, "mrr@10": 0.5},
                      reranked={"ndcg@10": c.setup_mean, f"recall@{final_k}": rc.setup_mean, "mrr@10": 0.5},
                      retrieval_ms=percentiles([5.0]), rerank_ms=percentiles([100.0 * depth / 10, 120.0 * depth / 10]),
                      comparison=c, recall_comparison=rc)


def _sweep(points, n, *, tolerance=0.01):
    advice = sweep_advice(points, final_k=5, tolerance=tolerance)
    return SweepReport(data="/data/scifact", split="test", queries=n, final_k=5, reranker="cross-encoder",
                       model="/models/minilm-l6-scifact-ce", blend="none", blend_weight=0.5, tolerance=tolerance,
                       points=tuple(points), advice=advice, own_document=own_document_rule(_data(n, 0)).to_dict(0),
                       environment={"cpu": "t"}, wall_seconds=3.0)


def test_sweep_recommends_only_where_reranking_beats_none():
    base = _values(200, 0.6, 0.2, 5)
    points = [_point(10, base, -0.05, 0.03, 1), _point(20, base, 0.06, 0.03, 2), _point(50, base, 0.065, 0.03, 3)]
    advice = sweep_advice(points, final_k=5, tolerance=0.05)
    assert advice.helps and advice.depth == 20 and advice.worse_depths == (10,)
    assert advice.sentence.startswith("Recommended depth: 20: reranking beats no reranking there")
    assert "At depth 10 reranking is worse than none." in advice.sentence
    assert "rough" not in advice.sentence


def test_sweep_says_when_no_depth_beats_none():
    base = _values(400, 0.6, 0.2, 6)
    points = [_point(10, base, -0.04, 0.02, 1), _point(20, base, -0.05, 0.02, 2)]
    advice = sweep_advice(points, final_k=5, tolerance=0.01)
    assert advice.depth is None and not advice.helps and advice.worse_depths == (10, 20)
    assert advice.sentence.startswith("No depth beats not reranking")
    assert "Reranking is worse than none at depth 10, 20" in advice.sentence
    assert "is ruled out at every depth" in advice.sentence and "Keep hybrid (--reranker none)." in advice.sentence
    assert not advice.too_few_queries


def test_sweep_says_when_the_queries_are_too_few_to_tell():
    base = _values(12, 0.6, 0.2, 7)
    points = [_point(10, base, 0.02, 0.15, 1), _point(20, base, 0.0, 0.15, 2)]
    advice = sweep_advice(points, final_k=5, tolerance=0.01)
    assert all(not p.comparison.excludes_zero for p in points)
    assert advice.depth is None and advice.too_few_queries
    assert "12 queries are too few to tell" in advice.sentence
    assert f"With only 12 queries" in advice.sentence and 12 < FEW_QUERIES
    with pytest.raises(ValidationError, match="at least one depth"):
        sweep_advice([], final_k=5, tolerance=0.01)


def test_sweep_table_and_plot_carry_both_ndcg_series():
    base = _values(60, 0.6, 0.2, 8)
    report = _sweep([_point(10, base, 0.03, 0.05, 1), _point(20, base, 0.05, 0.05, 2),
                     _point(50, base, 0.04, 0.05, 3)], 60)
    table = sweep_table(report)
    header = table.splitlines()[0]
    assert "nDCG@10 hybrid" in header and "nDCG@10 reranked" in header and "ΔnDCG@10 [95% CI]" in header
    for p in report.points:
        line = next(x for x in table.splitlines() if x.startswith(f"{p.depth} "))
        assert f"{p.retrieval['ndcg@10']:.3f}" in line and f"{p.reranked['ndcg@10']:.3f}" in line
        assert f"{p.comparison.ci_low:+.3f}" in line

    series = sweep_series(report)
    assert series["ndcg_hybrid"] == [p.retrieval["ndcg@10"] for p in report.points]
    assert series["ndcg_reranked"] == [p.reranked["ndcg@10"] for p in report.points]
    fig = sweep_figure(report)
    try:
        lines = {line.get_label(): list(line.get_ydata()) for ax in fig.axes for line in ax.get_lines()}
        assert lines["nDCG@10 hybrid (no rerank)"] == pytest.approx(series["ndcg_hybrid"])
        assert lines["nDCG@10 hybrid + cross-encoder"] == pytest.approx(series["ndcg_reranked"])
        assert lines["Recall@5 hybrid (no rerank)"] == pytest.approx(series["recall_hybrid"])
        assert lines["Recall@5 hybrid + cross-encoder"] == pytest.approx(series["recall_reranked"])
        recall_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "Recall@5")
        ndcg_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "nDCG@10")
        assert recall_ax.get_ylim()[0] == 0.0 and ndcg_ax.get_ylim()[0] == 0.0  # honest axes
        # the recall difference is written on the plot
        texts = [t.get_text() for t in recall_ax.texts]
        p = report.points[0]
        assert f"{p.reranked['recall@5'] - p.retrieval['recall@5']:+.3f}" in texts
        # the interval of the difference is drawn (error bars) around the mean difference
        delta_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "Δ nDCG@10")
        assert [c for c in delta_ax.collections if c.get_segments()], "no error bars"
        segments = next(c for c in delta_ax.collections if c.get_segments()).get_segments()
        assert [tuple(np.round(s[:, 1], 9)) for s in segments] == \
            [tuple(np.round((lo, hi), 9)) for lo, hi in zip(series["delta_ndcg_low"], series["delta_ndcg_high"])]
        title = fig._suptitle.get_text()
        assert "minilm-l6-scifact-ce" in title and "60 queries" in title
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_sweep_files(tmp_path):
    base = _values(30, 0.6, 0.2, 9)
    report = _sweep([_point(5, base, 0.0, 0.05, 1), _point(10, base, 0.01, 0.05, 2)], 30)
    paths = write_sweep(report, tmp_path)
    assert [p.name for p in paths] == ["results.json", "results.md", "sweep.png", "report.html"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["recommended_depth"] is None and data["advice"]["sentence"] == report.advice.sentence
    assert data["model"] == "/models/minilm-l6-scifact-ce"
    assert set(data["points"][0]) >= {"comparison", "recall_comparison", "retrieval", "reranked"}
    md = (tmp_path / "results.md").read_text()
    assert "nDCG@10 hybrid" in md and report.advice.sentence in md
    html = (tmp_path / "report.html").read_text()
    assert "depth 10" in html and "data:image/png;base64," in html


# -- tune ---------------------------------------------------------------------------------------

def _tune_report(folds=None):
    cands, scores, qrels = {}, {"cross-encoder": {}}, {}
    for q in range(20):
        qid = f"q{q:02d}"
        docs = [f"{qid}-d{r}" for r in range(1, 31)]
        cands[qid] = tuple(_hit(d, r) for r, d in enumerate(docs, start=1))
        s = [0.0] * 30
        s[5] = 5.0
        scores["cross-encoder"][qid] = tuple(s)
        qrels[qid] = {docs[5]: 1}
    g = evaluate_grid(cands, scores, qrels, depths=(10, 20, 30))
    result = select(g, resamples=1000)
    kfold = cross_validate(g, k=folds, resamples=1000) if folds else None
    rec = kfold.recommendation if kfold else result.recommendation
    latency = {"setting": result.best.setting.label(), "depth": 10, "queries": 5, **percentiles([50.0, 60.0]),
               "estimated_ms_p50": 20.0}
    deep = {"queries": 20, "max_depth": 30, "pairs": 600, "seconds": 12.5,
            "rerank_ms": {"cross-encoder": percentiles([600.0])}}
    return TuneReport(data="/data/x", split="dev", queries=20, metric="ndcg@10", folds=folds, depths=(10, 20, 30),
                      dropped_depths=(), max_depth=30, rerankers=("cross-encoder",), alphas=(0.1, 0.5), result=result,
                      kfold=kfold, recommendation=rec, latency=latency, deep_pass=deep,
                      timings={"retrieval_s": 1.0, "deep_pass_s": 12.5, "grid_s": 0.8, "latency_s": 0.3},
                      own_document=own_document_rule(_data(20, 0)).to_dict(0), environment={"cpu": "t"},
                      wall_seconds=15.0,
                      details=TuneDetails(texts={q: f"text {q}" for q in cands}, qrels=qrels, grid=g, candidates=cands,
                                          scores=scores, rank_constant=60))


@pytest.mark.parametrize("folds", [None, 4])
def test_tune_outputs(tmp_path, folds):
    report = _tune_report(folds)
    assert report.recommendation.helps and report.chosen.label() == "cross-encoder depth=10 blend=none"
    table = tune_table(report)
    assert table.splitlines()[2].startswith("hybrid (no rerank)")
    assert "cross-encoder depth=10 blend=none" in table.splitlines()[3]
    paths = write_tune(report, tmp_path)
    top = sorted(report.result.cells, key=lambda c: -c.mean)[:10]
    held_out = ["held-out.run"] if folds else []
    assert [p.name for p in paths] == ["results.json", "results.md", "report.html", "hybrid.run",
                                       *(c.setting.label().replace(" ", "_") + ".run" for c in top), *held_out,
                                       "qrels.trec"]
    # every row of the table re-scores from its run file to the mean it shows, and with folds the
    # held-out run to the held-out mean (each query ranked by the setting its fold chose without it)
    from ranx import Qrels, Run, evaluate

    qrels = Qrels.from_file(str(tmp_path / "qrels.trec"), kind="trec")
    means = [report.result.baseline.mean, *(c.mean for c in top)]
    if folds:
        means.append(report.kfold.held_out_mean)
        assert len({f.chosen for f in report.kfold.folds}) >= 1
    for mean, path in zip(means, paths[3:-1], strict=True):
        assert evaluate(qrels, Run.from_file(str(path), kind="trec"), "ndcg@10", make_comparable=True) == \
            pytest.approx(mean, abs=1e-12), path.name
    md = (tmp_path / "results.md").read_text()
    assert "export ES_RERANK_RERANKER=cross-encoder" in md and "export ES_RERANK_DEPTH=10" in md
    assert "One deep rerank pass scored 600 (query, candidate) pairs" in md and "in 12.5 s" in md
    assert "took 0.8 s" in md and "measured 55 ms p50 / 60 ms p95 per query over 5 queries" in md
    assert ("## Folds" in md) == (folds is not None)
    assert ("held out by the folds" in md) == (folds is not None)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["timings"]["deep_pass_s"] == 12.5 and data["recommendation"]["helps"] is True
    assert (data["kfold"] is None) == (folds is None)
    html = (tmp_path / "report.html").read_text()
    assert html.count('<li class="q"') == 20 and "Per query: hybrid vs cross-encoder depth=10 blend=none" in html


def test_tune_says_keep_hybrid_when_nothing_helps(tmp_path):
    from dataclasses import replace

    report = _tune_report()
    g = report.details.grid
    # a reranker that scores every candidate the same changes nothing
    flat = {"cross-encoder": {q: tuple([1.0] * 30) for q in g.qids}}
    g2 = evaluate_grid(report.details.candidates, flat, report.details.qrels, depths=(10, 20, 30))
    result = select(g2, resamples=1000)
    report = replace(report, result=result, recommendation=result.recommendation,
                     details=replace(report.details, grid=g2, scores=flat))
    assert not report.recommendation.helps and report.recommendation.sentence == NO_HELP
    md = tune_markdown(report)
    assert f"**Advice: {NO_HELP}.**" in md and "export ES_RERANK_RERANKER=none" in md
    assert "Advice: reranking does not help on this data; keep hybrid." in tune_html(report)


def test_tune_depths_follow_the_metric():
    assert tune_depths((10, 20, 30, 50, 100), "ndcg@10") == ((10, 20, 30, 50, 100), ())
    assert tune_depths((100, 10, 50), "recall@50") == ((50, 100), (10,))
    with pytest.raises(ValidationError, match="no depth of \\[5, 8\\] is >= 10, the cut-off of ndcg@10"):
        tune_depths((5, 8), "ndcg@10")
    with pytest.raises(ValidationError, match="depths must not repeat"):
        tune_depths((10, 10), "ndcg@10")
    with pytest.raises(ValidationError, match="tune metric must be ndcg@K or recall@K"):
        tune_depths((10,), "mrr@10")


def test_html_reports_escape_and_sort_sections():
    report = _eval_report(n=5)
    html = eval_html(report)
    assert html.count('<section class="per-query">') == 1
    assert len(re.findall(r"<script[\s>]", html)) == 1
    sweep = sweep_html(_sweep([_point(10, _values(5, 0.5, 0.1, 1), 0.0, 0.1, 1)], 5))
    assert "hybrid at the same depth" in sweep


# -- TREC run files ----------------------------------------------------------------------------

def test_trec_run_and_qrels_lines():
    from es_rerank.evaluate.metrics import doc_scores
    from es_rerank.evaluate.trec import qrels_lines, run_lines

    run = {"q1": doc_scores(["d2", "d1", "d2", "d3"]), "q2": {"x": 0.25, "y": 0.5}}
    assert run_lines(run, tag="hybrid+cross-encoder") == [
        "q1 Q0 d2 1 3.0 hybrid+cross-encoder", "q1 Q0 d1 2 2.0 hybrid+cross-encoder",
        "q1 Q0 d3 3 1.0 hybrid+cross-encoder",
        "q2 Q0 y 1 0.5 hybrid+cross-encoder", "q2 Q0 x 2 0.25 hybrid+cross-encoder"]
    # scores are written round-trip exact, so a tool reads back the very order
    assert run_lines({"q": {"a": 0.1 + 0.2, "b": 0.3}}, tag="t") == ["q Q0 a 1 0.30000000000000004 t",
                                                                     "q Q0 b 2 0.3 t"]
    assert qrels_lines({"q1": {"d1": 2, "d9": 0}}) == ["q1 0 d1 2", "q1 0 d9 0"]


@pytest.mark.parametrize("run, message", [
    ({"q1": {"a": 1.0, "b": 1.0}}, "run\\['q1'\\] ties 'a' and 'b' at score 1.0"),
    ({"q1": {"a b": 1.0}}, "document id of query 'q1' must be a non-empty string without whitespace for a TREC file"),
    ({"q 1": {"a": 1.0}}, "query id must be a non-empty string without whitespace for a TREC file, got 'q 1'"),
    ({"q1": {"a": float("nan")}}, "run\\['q1'\\]\\['a'\\] must be a finite number, got nan"),
])
def test_trec_run_refuses_what_would_not_re_score_the_same(run, message):
    from es_rerank.evaluate.trec import run_lines

    with pytest.raises(ValidationError, match=message):
        run_lines(run, tag="t")


def test_trec_run_names_are_file_names_and_tags():
    from es_rerank.evaluate.trec import run_name, write_runs

    assert run_name("cross-encoder depth=30 blend=linear alpha=0.3") == "cross-encoder_depth=30_blend=linear_alpha=0.3"
    assert run_name("reranked@20") == "reranked@20"
    with pytest.raises(ValidationError, match="rows 'a b' and 'a/b' would both be written to a_b.run"):
        write_runs(Path("/nonexistent-never-written"), {"a b": {}, "a/b": {}}, {})
    with pytest.raises(ValidationError, match="row label '../x' gives no usable run file name"):
        run_name("../x")


def test_eval_writes_a_run_file_per_row_that_ranx_re_scores(tmp_path):
    from dataclasses import replace

    from ranx import Qrels, Run, evaluate

    from es_rerank.evaluate.metrics import doc_scores, evaluate_run

    report = _eval_report(n=6)
    qids = list(report.details.texts)
    qrels = {q: {f"{q}-d3": 1, f"{q}-d5": 2} for q in qids}
    runs = {"hybrid": {q: doc_scores([f"{q}-d{r}" for r in range(1, 11)]) for q in qids},
            "hybrid+cross-encoder": {q: doc_scores([f"{q}-d{r}" for r in range(10, 0, -1)]) for q in qids}}
    report = replace(report, details=replace(report.details, qrels=qrels, runs=runs))
    paths = write_eval(report, tmp_path)
    assert [p.name for p in paths] == ["results.json", "results.md", "report.html", "hybrid.run",
                                       "hybrid+cross-encoder.run", "qrels.trec"]
    lines = (tmp_path / "hybrid.run").read_text().splitlines()
    assert lines[0] == f"{qids[0]} Q0 {qids[0]}-d1 1 10.0 hybrid" and len(lines) == 10 * len(qids)
    md = (tmp_path / "results.md").read_text()
    assert "## Run files" in md and "trec_eval -c -m ndcg_cut.10 qrels.trec hybrid.run" in md
    assert md.index("## Run files") < md.index("## Environment")
    read_qrels = Qrels.from_file(str(tmp_path / "qrels.trec"), kind="trec")
    for row, run in runs.items():
        from_file = evaluate(read_qrels, Run.from_file(str(tmp_path / f"{row}.run"), kind="trec"), "ndcg@10",
                             make_comparable=True)
        assert from_file == pytest.approx(evaluate_run(qrels, run, ["ndcg@10"])["ndcg@10"], abs=1e-12)
