"""Tuning depth, blend and reranker on small constructed cases (pure logic, no cluster or model)."""

import json

import numpy as np
import pytest

from es_rerank.errors import ConfigError, ValidationError
from es_rerank.evaluate.metrics import doc_scores, evaluate_run
from es_rerank.evaluate.tune import (
    NO_HELP,
    Setting,
    apply_setting,
    check_metric,
    cross_validate,
    evaluate_grid,
    grid,
    kfold_split,
    tune,
)
from es_rerank.ranking import collapse
from es_rerank.types import Hit


def candidates_of(doc_ids):
    """Hits in retrieval order, scored like RRF: 1 / (60 + rank)."""
    out = []
    for rank, cid in enumerate(doc_ids, start=1):
        doc, _, chunk = cid.partition("#")
        out.append(Hit(cid if chunk else f"{doc}#0", doc, int(chunk or 0), f"t {doc}", "x", {}, 1 / (60 + rank), rank))
    return out


def constructed(n_queries=20, length=20):
    """Hybrid has the relevant doc at rank 6; the 'good' reranker scores it 10 but also
    scores a decoy at rank 15 higher (12), so reranking helps at depth 10 and hurts deeper.
    The 'flat' reranker gives every candidate the same score."""
    cands, good, flat, qrels = {}, {}, {}, {}
    for q in range(n_queries):
        qid = f"q{q:02d}"
        docs = [f"{qid}-d{r}" for r in range(1, length + 1)]
        cands[qid] = candidates_of(docs)
        scores = [0.0] * length
        scores[5] = 10.0   # rank 6: the relevant document
        scores[14] = 12.0  # rank 15: the decoy
        good[qid] = scores
        flat[qid] = [1.0] * length
        qrels[qid] = {docs[5]: 1}
    return cands, {"good": good, "flat": flat}, qrels


def test_tune_picks_the_known_best_cell():
    cands, scores, qrels = constructed()
    result = tune(cands, scores, qrels, metric="ndcg@10", depths=(10, 20, 30), resamples=1000)
    assert result.depths == (10, 20) and result.rerankers == ("good", "flat")
    # hybrid: relevant at rank 6 -> nDCG@10 = 1/log2(7) for every query
    assert result.baseline.mean == pytest.approx(1 / np.log2(7))
    # good at depth 10, blend none: relevant first -> 1.0; at depth 20 the decoy comes first -> 1/log2(3).
    # (linear with alpha >= 0.4 also reaches 1.0 at depth 10; ties go to the earlier cell, blend none.)
    assert result.best.setting == Setting("good", 10, "none")
    assert result.best.mean == pytest.approx(1.0)
    means = {c.setting: c.mean for c in result.cells}
    assert means[Setting("good", 20, "none")] == pytest.approx(1 / np.log2(3))
    assert means[Setting("flat", 10, "none")] == pytest.approx(result.baseline.mean)  # ties keep retrieval order
    # rrf at depth 10: the rank-1 document has 1/61 + 1/(60+2) > 1/66 + 1/61 of the relevant one
    assert means[Setting("good", 10, "rrf")] < 1.0
    assert len(result.cells) == 2 * 2 * 11  # 2 rerankers x 2 depths x (none, rrf, 9 alphas)
    c = result.comparison
    assert (c.wins, c.ties, c.losses) == (20, 0, 0) and c.better
    rec = result.recommendation
    assert rec.helps and rec.setting == Setting("good", 10, "none")
    assert rec.env == {"ES_RERANK_RERANKER": "good", "ES_RERANK_DEPTH": "10", "ES_RERANK_BLEND": "none"}
    assert rec.cli_args == ("--reranker", "good", "--depth", "10", "--blend", "none")
    assert rec.sentence.startswith("use good at depth 10 with blend none")
    json.dumps(result.to_dict())  # serialisable


def test_linear_alpha_threshold_by_hand():
    cands, scores, qrels = constructed(n_queries=3)
    g = evaluate_grid(cands, {"good": scores["good"]}, qrels, depths=(10,))
    # depth 10: norm(retrieval) of rank r is (1/(60+r) - 1/70) / (1/61 - 1/70); rank 6 -> 0.4148...
    # relevant: alpha * 1 + (1 - alpha) * 0.4148; rank 1: alpha * 0 + (1 - alpha) * 1
    # relevant first iff alpha > 0.5852 / 1.5852 = 0.369 -> alpha 0.4 .. 0.9 reach 1.0, 0.1 .. 0.3 do not
    r6 = (1 / 66 - 1 / 70) / (1 / 61 - 1 / 70)
    threshold = (1 - r6) / (2 - r6)
    assert 0.36 < threshold < 0.38
    for a in (0.1, 0.2, 0.3):
        assert g.row(Setting("good", 10, "linear", a)).mean() < 1.0
    for a in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        assert g.row(Setting("good", 10, "linear", a)).mean() == pytest.approx(1.0)


def test_grid_values_equal_a_direct_evaluation():
    # documents with several chunks, random scores, two metrics: every cell of the grid must be
    # what apply_setting + collapse + evaluate_run give for that cell on its own
    rng = np.random.default_rng(4)
    cands, scores, qrels = {}, {"r1": {}, "r2": {}}, {}
    for q in range(6):
        qid = f"q{q}"
        chunks = [f"d{rng.integers(0, 12)}#{c}" for c in range(15)]
        chunks = list(dict.fromkeys(chunks))
        cands[qid] = candidates_of(chunks)
        for name in scores:
            scores[name][qid] = [float(s) for s in rng.normal(size=len(chunks))]
        qrels[qid] = {f"d{d}": 1 for d in rng.choice(12, size=3, replace=False)}
    for metric in ("ndcg@10", "recall@5"):
        g = evaluate_grid(cands, scores, qrels, metric=metric, depths=(5, 10, 15), alphas=(0.2, 0.7))
        assert len(g.settings) == 1 + 2 * 3 * 4
        for setting in g.settings:
            run = {}
            for q in cands:
                reranker_scores = None if setting.is_baseline else scores[setting.reranker][q]
                run[q] = doc_scores(collapse(apply_setting(cands[q], reranker_scores, setting)))
            assert g.row(setting).mean() == pytest.approx(evaluate_run(qrels, run, [metric])[metric])


def test_shallow_depth_reranks_only_its_prefix():
    cands = candidates_of(["a", "b", "c", "d"])
    out = apply_setting(cands, [0.0, 1.0, 5.0, 9.0], Setting("r", 2, "none"))
    assert [h.doc_id for h in out] == ["b", "a"] and [h.rerank_rank for h in out] == [1, 2]
    assert apply_setting(cands, None, Setting("none", 4)) == cands


def test_does_not_help_when_hybrid_is_already_right():
    # relevant document at retrieval rank 1; the reranker prefers rank 2 on every query
    cands, scores, qrels = {}, {"ce": {}}, {}
    for q in range(15):
        qid = f"q{q}"
        cands[qid] = candidates_of([f"{qid}-a", f"{qid}-b", f"{qid}-c"])
        scores["ce"][qid] = [0.0, 1.0, -1.0]
        qrels[qid] = {f"{qid}-a": 1}
    result = tune(cands, scores, qrels, metric="recall@1", depths=(3,), resamples=500)
    assert result.baseline.mean == 1.0
    # rrf (1/61 + 1/62 both ways: a tie broken by retrieval rank) and linear with a reranker
    # weight <= 0.5 keep the hybrid order: a tie with hybrid, not a win
    assert result.best.mean == 1.0 and result.best.setting == Setting("ce", 3, "rrf")
    rec = result.recommendation
    assert not rec.helps and rec.sentence == NO_HELP == "reranking does not help on this data; keep hybrid"
    assert rec.setting.is_baseline and rec.env == {"ES_RERANK_RERANKER": "none"}
    assert rec.cli_args == ("--reranker", "none")
    assert result.comparison.ties == 15 and not result.comparison.excludes_zero
    assert "within noise" in rec.reason


def test_does_not_help_when_the_gain_is_within_noise():
    # the reranker fixes 2 queries and breaks 1 of 20: best mean > hybrid, but the interval includes 0
    cands, scores, qrels = {}, {"ce": {}}, {}
    for q in range(20):
        qid = f"q{q:02d}"
        cands[qid] = candidates_of([f"{qid}-a", f"{qid}-b"])
        relevant = "b" if q < 2 else "a"
        qrels[qid] = {f"{qid}-{relevant}": 1}
        scores["ce"][qid] = [0.0, 1.0] if q < 3 else [1.0, 0.0]
    result = tune(cands, scores, qrels, metric="recall@1", depths=(2,), resamples=2000)
    assert result.best.mean == pytest.approx(19 / 20) and result.baseline.mean == pytest.approx(18 / 20)
    assert result.comparison.ci_low < 0 < result.comparison.ci_high
    assert not result.recommendation.helps and result.recommendation.sentence == NO_HELP


def test_setting_env_and_cli_for_linear():
    s = Setting("cross-encoder", 30, "linear", 0.3)
    assert s.env() == {"ES_RERANK_RERANKER": "cross-encoder", "ES_RERANK_DEPTH": "30",
                       "ES_RERANK_BLEND": "linear", "ES_RERANK_BLEND_WEIGHT": "0.3"}
    assert s.cli_args() == ("--reranker", "cross-encoder", "--depth", "30", "--blend", "linear",
                            "--blend-weight", "0.3")
    assert s.label() == "cross-encoder depth=30 blend=linear alpha=0.3"
    assert Setting("none", 100).label() == "hybrid"


def test_grid_order_and_alphas():
    cells = grid([20, 10], ["a"])
    assert cells[:3] == [Setting("a", 10, "none"), Setting("a", 10, "rrf"), Setting("a", 10, "linear", 0.1)]
    assert [c.alpha for c in cells if c.depth == 10 and c.blend == "linear"] == [
        0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert len(cells) == 22


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"metric": "map@10"}, ValidationError, "ndcg@K or recall@K .* got 'map@10'"),
    ({"metric": "ndcg@0"}, ValidationError, "got 'ndcg@0'"),
    ({"depths": (50, 100)}, ValidationError, r"no depth of \[50, 100\] is <= the candidates' depth 20"),
    ({"depths": (0, 10)}, ValidationError, "depths must be integers >= 1, got 0"),
    ({"depths": ("10",)}, ValidationError, "depths must be integers >= 1, got '10'"),
    ({"max_depth": 15}, ValidationError, "retrieved at depth 15 but a query has 20"),
    ({"alphas": (0.5, 1.5)}, ConfigError, "got 1.5"),
])
def test_tune_rejects_bad_settings(kwargs, exc, match):
    cands, scores, qrels = constructed(n_queries=2)
    with pytest.raises(exc, match=match):
        evaluate_grid(cands, scores, qrels, **kwargs)


def test_tune_rejects_bad_inputs():
    cands, scores, qrels = constructed(n_queries=2)
    with pytest.raises(ValidationError, match=r"no judgments: \['q01'\]"):
        evaluate_grid(cands, scores, {"q00": qrels["q00"]})
    with pytest.raises(ValidationError, match=r"reranker 'good' gave 19 scores for the 20 candidates of query 'q00'"):
        evaluate_grid(cands, {"good": {**scores["good"], "q00": scores["good"]["q00"][:19]}}, qrels)
    with pytest.raises(ValidationError, match=r"reranker 'good' has no scores for 1 queries: \['q01'\]"):
        evaluate_grid(cands, {"good": {"q00": scores["good"]["q00"]}}, qrels)
    with pytest.raises(ValidationError, match="not 'none', got 'none'"):
        evaluate_grid(cands, {"none": scores["good"]}, qrels)
    shuffled = {**cands, "q00": cands["q00"][::-1]}
    with pytest.raises(ValidationError, match=r"query 'q00' must be in retrieval order with ranks 1..20"):
        evaluate_grid(shuffled, scores, qrels)
    with pytest.raises(ValidationError, match="at least one depth and one reranker"):
        evaluate_grid(cands, {}, qrels)
    assert check_metric("recall@100") == "recall@100"


def test_non_finite_scores_are_fallbacks_in_tuning():
    cands, scores, qrels = constructed(n_queries=4)
    broken = {q: [float("nan")] * 5 + s[5:] for q, s in scores["good"].items()}
    g = evaluate_grid(cands, {"good": broken}, qrels, depths=(10,))
    assert np.all(np.isfinite(g.values))


# --- k-fold -------------------------------------------------------------------------

def test_kfold_split_is_deterministic_disjoint_and_complete():
    qids = [f"q{i}" for i in range(23)]
    folds = kfold_split(qids, 5, seed=3)
    assert folds == kfold_split(list(reversed(qids)), 5, seed=3)  # set and seed decide, not order
    assert folds != kfold_split(qids, 5, seed=4)
    flat = [q for f in folds for q in f]
    assert sorted(flat) == sorted(qids) and len(flat) == len(set(flat))  # disjoint, complete
    for i, a in enumerate(folds):
        for b in folds[i + 1:]:
            assert not set(a) & set(b)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


@pytest.mark.parametrize("qids,k,match", [
    (["a", "b", "c"], 1, "from 2 to the number of queries \\(3\\), got 1"),
    (["a", "b", "c"], 4, "got 4"),
    (["a", "a", "b"], 2, "must not repeat"),
])
def test_kfold_split_rejects_bad_k(qids, k, match):
    with pytest.raises(ValidationError, match=match):
        kfold_split(qids, k)


def test_cross_validate_scores_each_query_with_its_folds_choice():
    cands, scores, qrels = constructed(n_queries=20)
    g = evaluate_grid(cands, scores, qrels, depths=(10, 20))
    cv = cross_validate(g, k=4, seed=1, resamples=500)
    assert [f.held_out for f in cv.folds] == list(kfold_split(g.qids, 4, seed=1))
    assert all(f.chosen == Setting("good", 10, "none") for f in cv.folds)
    assert cv.held_out_mean == pytest.approx(1.0) and cv.baseline_mean == pytest.approx(1 / np.log2(7))
    assert cv.recommendation.helps and cv.recommendation.setting == cv.final.best.setting
    assert "held-out" in cv.recommendation.reason
    json.dumps(cv.to_dict())


def test_cross_validate_exposes_an_overfit_choice():
    # Each "lucky" reranker fixes the queries of one fold and changes nothing elsewhere. Chosen on
    # four folds, the winner is lucky on one of them, so on the held-out fold it gains nothing.
    cands, scores, qrels = {}, {}, {}
    qids = [f"q{i:02d}" for i in range(20)]
    folds = kfold_split(qids, 5, seed=0)
    for qid in qids:
        cands[qid] = candidates_of([f"{qid}-a", f"{qid}-b"])
        qrels[qid] = {f"{qid}-b": 1}  # hybrid ranks the relevant document second everywhere
    for i, fold in enumerate(folds):
        scores[f"lucky{i}"] = {q: ([0.0, 1.0] if q in fold else [1.0, 0.0]) for q in qids}
    g = evaluate_grid(cands, scores, qrels, metric="recall@1", depths=(2,), alphas=(0.5,))
    full = cross_validate(g, k=5, seed=0, resamples=500)
    # on all queries the best lucky reranker looks like a gain (4 of 20 fixed)...
    assert full.final.best.mean == pytest.approx(4 / 20) and full.final.baseline.mean == 0.0
    # ...but each fold's choice was lucky on the training folds only: held out, nothing is gained
    assert all(f.chosen.reranker != f"lucky{f.index}" for f in full.folds)
    assert full.held_out_mean == 0.0 and not full.recommendation.helps
    assert full.recommendation.sentence == NO_HELP
