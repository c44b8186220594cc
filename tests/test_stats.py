"""Paired comparison and bootstrap intervals; per-query metric values worked out by hand."""

import copy
import json
import math

import numpy as np
import pytest

from es_rerank.errors import ValidationError
from es_rerank.evaluate.metrics import doc_scores, evaluate_run, per_query
from es_rerank.evaluate.stats import PairedComparison, bootstrap_ci, paired_comparison

# --- per_query -----------------------------------------------------------------------

QRELS = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 1}, "q3": {"d9": 1}, "q4": {"d4": 2, "d5": 1}}
RUN = {
    "q1": doc_scores(["d1", "dx", "d2"]),
    "q2": doc_scores(["dy", "d3"]),
    "q3": {},
    "q4": doc_scores(["d5", "d4"]),
    "unjudged": doc_scores(["d1"]),
}


def test_per_query_by_hand():
    ndcg = per_query(QRELS, RUN, "ndcg@10")
    assert list(ndcg) == ["q1", "q2", "q3", "q4"]  # qrels order, unjudged query ignored
    # q1: relevant at ranks 1 and 3: DCG = 1 + 1/log2(4); ideal = 1 + 1/log2(3)
    assert ndcg["q1"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    # q2: relevant at rank 2: 1/log2(3), ideal 1
    assert ndcg["q2"] == pytest.approx(1 / math.log2(3))
    assert ndcg["q3"] == 0.0  # empty ranking
    # q4 (graded, ranx uses linear gains): gain 1 at rank 1, gain 2 at rank 2
    #   DCG = 1 + 2/log2(3); ideal = 2 + 1/log2(3)
    assert ndcg["q4"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    recall = per_query(QRELS, RUN, "recall@2")
    assert recall == {"q1": 0.5, "q2": 1.0, "q3": 0.0, "q4": 1.0}
    assert all(type(v) is float for v in recall.values())


def test_per_query_averages_to_evaluate_run():
    for metric in ("ndcg@10", "recall@1", "mrr@10"):
        values = per_query(QRELS, RUN, metric)
        assert sum(values.values()) / len(values) == pytest.approx(evaluate_run(QRELS, RUN, [metric])[metric])


def test_per_query_missing_query_is_zero_and_inputs_untouched():
    qrels, run = copy.deepcopy(QRELS), {"q2": doc_scores(["d3"])}
    snapshot = copy.deepcopy((qrels, run))
    assert per_query(qrels, run, "recall@1") == {"q1": 0.0, "q2": 1.0, "q3": 0.0, "q4": 0.0}
    assert (qrels, run) == snapshot


@pytest.mark.parametrize("metric,match", [(["ndcg@10"], r"one metric name .* got \['ndcg@10'\]"), ("", "got ''")])
def test_per_query_rejects_bad_metric(metric, match):
    with pytest.raises(ValidationError, match=match):
        per_query(QRELS, RUN, metric)


# --- bootstrap and paired comparison -------------------------------------------------

def _values(n, mean, spread, seed):
    rng = np.random.default_rng(seed)
    return {f"q{i}": float(v) for i, v in enumerate(rng.normal(mean, spread, n))}


def test_ci_reproducible_with_its_seed_and_different_with_another():
    base = _values(60, 0.5, 0.2, seed=1)
    new = {q: v + d for (q, v), d in zip(base.items(), np.random.default_rng(2).normal(0.01, 0.1, 60))}
    a = paired_comparison(base, new, seed=7)
    b = paired_comparison(base, new, seed=7)
    c = paired_comparison(base, new, seed=8)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.mean_delta == c.mean_delta  # only the interval depends on the seed
    assert a.resamples == 10_000 and a.seed == 7 and c.seed == 8


def test_ci_must_exclude_zero_for_a_consistent_gain():
    # 40 queries: every query gains between 0.05 and 0.15 -> every resampled mean is > 0.05
    base = {f"q{i}": 0.4 for i in range(40)}
    new = {f"q{i}": 0.4 + 0.05 + 0.1 * (i % 5) / 4 for i in range(40)}
    c = paired_comparison(base, new, metric="ndcg@10")
    assert c.mean_delta == pytest.approx(0.1)
    assert 0.05 - 1e-9 <= c.ci_low < c.mean_delta < c.ci_high <= 0.15 + 1e-9
    assert c.excludes_zero and c.better
    assert (c.wins, c.ties, c.losses) == (40, 0, 0)
    worse = paired_comparison(new, base)
    assert worse.excludes_zero and not worse.better and worse.ci_high <= -0.05 + 1e-9


def test_ci_must_include_zero_for_symmetric_noise():
    # deltas +0.2 and -0.2 alternate (mean 0): the interval straddles 0
    base = {f"q{i}": 0.5 for i in range(50)}
    new = {f"q{i}": 0.5 + (0.2 if i % 2 else -0.2) for i in range(50)}
    c = paired_comparison(base, new)
    assert c.mean_delta == pytest.approx(0.0, abs=1e-12)
    assert c.ci_low < 0 < c.ci_high and not c.excludes_zero and not c.better
    assert (c.wins, c.ties, c.losses) == (25, 0, 25)


def test_ci_matches_a_slow_reference_bootstrap():
    deltas = np.array([0.3, -0.1, 0.0, 0.25, 0.1, -0.05, 0.4])
    low, high = bootstrap_ci(deltas, resamples=3000, seed=3)
    rng = np.random.default_rng(3)
    means = rng.integers(0, deltas.size, size=(3000, deltas.size))
    means = np.array([deltas[row].mean() for row in means])
    # same draws; the vectorised mean may sum in another order, hence approx
    assert (low, high) == pytest.approx((np.percentile(means, 2.5), np.percentile(means, 97.5)), abs=1e-12)
    # the true lower bound here is 0 (a mean of 0.0 exactly) but summation leaves ~1e-18:
    # that noise must not count as excluding 0
    assert abs(low) < 1e-12
    zero = {f"q{i}": 0.0 for i in range(7)}
    setup = {f"q{i}": float(d) for i, d in enumerate(deltas)}
    assert not paired_comparison(zero, setup, resamples=3000, seed=3).excludes_zero


def test_ci_blocks_do_not_change_large_inputs(monkeypatch):
    import es_rerank.evaluate.stats as stats

    values = np.linspace(-1, 2, 500)
    whole = bootstrap_ci(values, resamples=200, seed=5)
    monkeypatch.setattr(stats, "_BLOCK_ELEMENTS", 500 * 7)  # 7 rows per block, last block partial
    assert bootstrap_ci(values, resamples=200, seed=5) == whole


def test_all_ties():
    scores = {"q1": 0.3, "q2": 1.0, "q3": 0.0}
    c = paired_comparison(scores, dict(scores))
    assert (c.mean_delta, c.ci_low, c.ci_high) == (0.0, 0.0, 0.0)
    assert (c.wins, c.ties, c.losses) == (0, 3, 0) and not c.excludes_zero
    # floating-point noise below the tie tolerance is still a tie, not an effect
    noisy = paired_comparison(scores, {q: v + 1e-15 for q, v in scores.items()})
    assert noisy.ties == 3 and not noisy.excludes_zero
    assert "within noise" in c.summary()


def test_one_query_has_no_interval():
    c = paired_comparison({"q1": 0.2}, {"q1": 0.9}, metric="recall@10")
    assert c.mean_delta == pytest.approx(0.7) and c.wins == 1
    assert c.ci_low is None and c.ci_high is None and not c.excludes_zero and not c.better
    assert "no confidence interval from 1 query" in c.summary()


@pytest.mark.parametrize("base,new,kwargs,match", [
    ({}, {}, {}, "at least one query"),
    ({"q1": 0.1, "q2": 0.2}, {"q1": 0.1, "q3": 0.2}, {},
     r"1 only in the baseline \['q2'\], 1 only in the setup \['q3'\]"),
    ({"q1": 0.1, "q2": math.nan}, {"q1": 0.1, "q2": 0.2}, {}, "baseline value of query 'q2' must be finite, got nan"),
    ({"q1": 0.1}, {"q1": 0.2}, {"resamples": 0}, "resamples must be an integer >= 1, got 0"),
    ({"q1": 0.1}, {"q1": 0.2}, {"confidence": 1.0}, r"confidence must be a number in \(0, 1\), got 1.0"),
    ({"q1": 0.1}, {"q1": 0.2}, {"seed": -1}, "seed must be an integer >= 0, got -1"),
])
def test_paired_comparison_rejects_bad_input(base, new, kwargs, match):
    with pytest.raises(ValidationError, match=match):
        paired_comparison(base, new, **kwargs)


def test_bootstrap_rejects_bad_values():
    with pytest.raises(ValidationError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValidationError, match="finite, got inf"):
        bootstrap_ci([1.0, math.inf])


def test_result_is_frozen_and_serialises():
    c = paired_comparison({"q1": 0.1, "q2": 0.5}, {"q1": 0.3, "q2": 0.4}, metric="ndcg@10", resamples=100)
    assert isinstance(c, PairedComparison)
    with pytest.raises(AttributeError):
        c.mean_delta = 1.0  # type: ignore[misc]
    d = json.loads(json.dumps(c.to_dict()))
    assert d["deltas"] == pytest.approx({"q1": 0.2, "q2": -0.1})
    assert d["wins"] == 1 and d["losses"] == 1 and d["better"] is False and d["metric"] == "ndcg@10"
    assert "deltas" not in c.to_dict(with_deltas=False)
