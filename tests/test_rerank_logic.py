"""Pure pipeline logic: client-side fusion of hit lists."""

import pytest

from es_rerank.fusion import fuse_hits
from es_rerank.types import Hit


def hit(cid, rank, score=1.0):
    return Hit(cid, cid.split("#")[0], 0, "", f"text {cid}", {}, score, rank)


def test_fuse_hits_by_hand():
    bm25 = [hit("a#0", 1), hit("b#0", 2)]
    knn = [hit("b#0", 1), hit("c#0", 2)]
    fused = fuse_hits([bm25, knn], rank_constant=60, window=10)
    assert [h.chunk_id for h in fused] == ["b#0", "a#0", "c#0"]
    assert fused[0].retrieval_score == pytest.approx(1 / 62 + 1 / 61)
    assert fused[1].retrieval_score == pytest.approx(1 / 61)
    assert [h.retrieval_rank for h in fused] == [1, 2, 3]


def test_fuse_hits_window_and_three_lists():
    lists = [[hit("a#0", 1), hit("b#0", 2)], [hit("c#0", 1)], [hit("b#0", 1), hit("a#0", 2)]]
    fused = fuse_hits(lists, rank_constant=1, window=2)
    # a: 1/2 + 1/3, b: 1/3 + 1/2, c: 1/2 -> a and b tie (broken by id), c third; window keeps 2
    assert [h.chunk_id for h in fused] == ["a#0", "b#0"]
    assert fused[0].retrieval_score == pytest.approx(1 / 2 + 1 / 3)
