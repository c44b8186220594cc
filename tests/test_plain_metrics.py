"""The plain-Python metrics (used where ranx is not installed) agree with ranx.

Random graded qrels and runs shaped as es-rerank makes them (strictly decreasing scores, see
``doc_scores``), including queries with no run, an empty ranking, and no relevant document.
"""

from __future__ import annotations

import random

import pytest

from es_rerank.errors import ValidationError
from es_rerank.evaluate import metrics, plain_metrics

pytest.importorskip("ranx", reason="compares with ranx: pip install -e '.[eval]'")

METRICS = ["ndcg@10", "ndcg@3", "recall@5", "recall@10", "recall@100", "hit_rate@3", "mrr@10"]


def _case(seed: int):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(40)]
    qrels, run = {}, {}
    for q in range(30):
        judged = rng.sample(docs, rng.randint(1, 6))
        qrels[f"q{q}"] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        if q % 10 == 3:
            continue  # no run at all
        ranked = [] if q % 10 == 7 else rng.sample(docs, rng.randint(1, 30))
        run[f"q{q}"] = {d: float(len(ranked) - i) for i, d in enumerate(ranked)}
    return qrels, run


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_plain_metrics_equal_ranx(seed):
    qrels, run = _case(seed)
    for m in METRICS:
        want = metrics.per_query(qrels, run, m)  # ranx
        got = plain_metrics.per_query(qrels, run, m)
        assert list(got) == list(want)
        bad = {q: (got[q], want[q]) for q in want if abs(got[q] - want[q]) > 1e-9}
        assert bad == {}, (m, bad)


def test_metrics_fall_back_to_plain_without_ranx(monkeypatch):
    qrels, run = _case(4)
    want = {m: metrics.evaluate_run(qrels, run, [m])[m] for m in METRICS}
    monkeypatch.setattr(metrics, "have_ranx", lambda: False)
    got = metrics.evaluate_run(qrels, run, METRICS)
    assert all(abs(got[m] - want[m]) < 1e-9 for m in METRICS), (got, want)
    assert metrics.per_query(qrels, run, "ndcg@10") == plain_metrics.per_query(qrels, run, "ndcg@10")
    with pytest.raises(ValidationError, match="without ranx"):
        metrics.per_query(qrels, run, "map@10")
    with pytest.raises(ValidationError, match="qrels is empty"):
        metrics.per_query({}, run, "ndcg@10")
