"""Pure pipeline logic: reranking order, final_k, and client-side fusion of hits."""

import pytest

from es_rerank.client import fuse_hits, rerank_hits
from es_rerank.errors import RerankerError
from es_rerank.types import Hit


def hit(cid, rank, score=1.0):
    return Hit(cid, cid.split("#")[0], 0, "", f"text {cid}", {}, score, rank)


def test_rerank_orders_by_score_keeps_both_scores_and_final_k():
    hits = [hit("a#0", 1, 0.9), hit("b#0", 2, 0.8), hit("c#0", 3, 0.7)]
    out = rerank_hits(hits, [-1.0, 3.5, 0.25], final_k=2)
    assert [h.chunk_id for h in out] == ["b#0", "c#0"]
    assert [(h.retrieval_rank, h.rerank_rank) for h in out] == [(2, 1), (3, 2)]
    assert [(h.retrieval_score, h.rerank_score) for h in out] == [(0.8, 3.5), (0.7, 0.25)]


def test_rerank_ties_keep_retrieval_order():
    hits = [hit("a#0", 1), hit("b#0", 2), hit("c#0", 3)]
    assert [h.chunk_id for h in rerank_hits(hits, [1.0, 1.0, 1.0], final_k=3)] == ["a#0", "b#0", "c#0"]


def test_rerank_score_count_mismatch():
    with pytest.raises(RerankerError, match="2 scores for 3 candidates"):
        rerank_hits([hit("a#0", 1), hit("b#0", 2), hit("c#0", 3)], [1.0, 2.0], final_k=1)


def test_fuse_hits_by_hand():
    bm25 = [hit("a#0", 1), hit("b#0", 2)]
    knn = [hit("b#0", 1), hit("c#0", 2)]
    fused = fuse_hits(bm25, knn, rank_constant=60, window=10)
    assert [h.chunk_id for h in fused] == ["b#0", "a#0", "c#0"]
    assert fused[0].retrieval_score == pytest.approx(1 / 62 + 1 / 61)
    assert fused[1].retrieval_score == pytest.approx(1 / 61)
    assert [h.retrieval_rank for h in fused] == [1, 2, 3]
