"""The second stage as pure functions: rerank order, blends worked out by hand, collapse to documents."""

import copy
import math

import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from es_rerank.errors import ConfigError, RerankerError
from es_rerank.evaluate.metrics import doc_scores
from es_rerank.ranking import (BLEND_METHODS, blend, check_blend, collapse, fallback_count, order_and_blend,
                               order_by_rerank)
from es_rerank.types import Hit


def hit(cid, rank, retrieval=1.0, rerank_score=None, rerank_rank=None):
    doc, _, chunk = cid.partition("#")
    return Hit(cid, doc, int(chunk or 0), f"title {doc}", f"text {cid}", {}, retrieval, rank,
               rerank_score=rerank_score, rerank_rank=rerank_rank)


def ids(hits):
    return [h.chunk_id for h in hits]


# --- order_by_rerank ---------------------------------------------------------------

def test_order_by_rerank_orders_all_hits_and_keeps_both_scores():
    hits = [hit("a#0", 1, 0.9), hit("b#0", 2, 0.8), hit("c#0", 3, 0.7)]
    out = order_by_rerank(hits, [-1.0, 3.5, 0.25])
    assert ids(out) == ["b#0", "c#0", "a#0"]
    assert [(h.retrieval_rank, h.rerank_rank) for h in out] == [(2, 1), (3, 2), (1, 3)]
    assert [(h.retrieval_score, h.rerank_score) for h in out] == [(0.8, 3.5), (0.7, 0.25), (0.9, -1.0)]
    assert all(h.final_score is None for h in out)
    assert hits[0].rerank_score is None  # input untouched


def test_order_by_rerank_ties_keep_retrieval_order():
    hits = [hit("c#0", 3), hit("a#0", 1), hit("b#0", 2)]  # input order is not retrieval order
    assert ids(order_by_rerank(hits, [1.0, 1.0, 1.0])) == ["a#0", "b#0", "c#0"]
    assert ids(order_by_rerank(hits, [2.0, 1.0, 2.0])) == ["b#0", "c#0", "a#0"]  # c and b tie at 2.0


def test_order_by_rerank_accepts_numpy_scalars():
    np = pytest.importorskip("numpy")
    out = order_by_rerank([hit("a#0", 1), hit("b#0", 2)], np.array([0.5, 1.5], dtype=np.float32))
    assert ids(out) == ["b#0", "a#0"] and type(out[0].rerank_score) is float


def test_non_finite_scores_rank_last_counted_and_never_stored():
    hits = [hit("a#0", 1), hit("b#0", 2), hit("c#0", 3), hit("d#0", 4), hit("e#0", 5)]
    out = order_by_rerank(hits, [math.nan, -5.0, math.inf, -math.inf, -7.0])
    # finite scores first (-5 > -7); the three fallbacks after, in retrieval order
    assert ids(out) == ["b#0", "e#0", "a#0", "c#0", "d#0"]
    assert [h.rerank_rank for h in out] == [1, 2, 3, 4, 5]
    assert [h.rerank_score for h in out] == [-5.0, -7.0, None, None, None]
    assert fallback_count(out) == 3
    for method in BLEND_METHODS:
        for h in blend(out, method):
            for value in (h.rerank_score, h.final_score, h.retrieval_score, h.score):
                assert value is None or math.isfinite(value)


def test_fallback_count_ignores_hits_that_were_not_reranked():
    assert fallback_count([hit("a#0", 1)]) == 0
    assert fallback_count(order_by_rerank([hit("a#0", 1)], [0.0])) == 0


@pytest.mark.parametrize("scores,match", [
    ([1.0, 2.0], "2 scores for 3 candidates"),
    ([1.0, "x", 2.0], "non-numeric score 'x' for candidate 1"),
    ([1.0, None, 2.0], "non-numeric score None for candidate 1"),
    ([True, 1.0, 2.0], "boolean score True for candidate 0"),
])
def test_order_by_rerank_rejects_bad_scores(scores, match):
    with pytest.raises(RerankerError, match=match):
        order_by_rerank([hit("a#0", 1), hit("b#0", 2), hit("c#0", 3)], scores)


# --- blend ---------------------------------------------------------------------------

# Three candidates, retrieval order a, b, c; the reranker prefers c, then a, then b.
#   chunk  retrieval_score  retrieval_rank  rerank_score  rerank_rank
#   a      0.030            1               2.0           2
#   b      0.020            2               -1.0          3
#   c      0.010            3               5.0           1
def reranked_abc():
    return order_by_rerank([hit("a#0", 1, 0.030), hit("b#0", 2, 0.020), hit("c#0", 3, 0.010)], [2.0, -1.0, 5.0])


def test_blend_none_is_the_rerank_order():
    out = blend(reranked_abc(), "none")
    assert ids(out) == ["c#0", "a#0", "b#0"]
    assert [h.final_score for h in out] == [5.0, 2.0, -1.0]
    assert [h.rerank_rank for h in out] == [1, 2, 3]


def test_blend_rrf_by_hand():
    out = blend(reranked_abc(), "rrf", rank_constant=60)
    # a: 1/(60+1) + 1/(60+2) = 0.016393 + 0.016129 = 0.032522
    # b: 1/(60+2) + 1/(60+3) = 0.016129 + 0.015873 = 0.032002
    # c: 1/(60+3) + 1/(60+1) = 0.015873 + 0.016393 = 0.032266
    expected = {"a#0": 1 / 61 + 1 / 62, "b#0": 1 / 62 + 1 / 63, "c#0": 1 / 63 + 1 / 61}
    assert ids(out) == ["a#0", "c#0", "b#0"]
    assert {h.chunk_id: h.final_score for h in out} == pytest.approx(expected, abs=1e-15)
    # both stages' scores and ranks stay; rerank_rank is still the reranker's own
    a = out[0]
    assert (a.retrieval_score, a.retrieval_rank, a.rerank_score, a.rerank_rank) == (0.030, 1, 2.0, 2)


def test_blend_rrf_small_constant_by_hand():
    out = blend(reranked_abc(), "rrf", rank_constant=1)
    # a: 1/2 + 1/3 = 0.8333; b: 1/3 + 1/4 = 0.5833; c: 1/4 + 1/2 = 0.75
    assert ids(out) == ["a#0", "c#0", "b#0"]
    assert [h.final_score for h in out] == pytest.approx([5 / 6, 3 / 4, 7 / 12])


def test_blend_linear_by_hand():
    out = blend(reranked_abc(), "linear", alpha=0.7)
    # norm(rerank):    a (2 - -1)/(5 - -1) = 0.5,      b 0,   c 1
    # norm(retrieval): a (0.03-0.01)/(0.02) = 1,       b 0.5, c 0
    # final = 0.7 * rerank + 0.3 * retrieval:
    #   a 0.35 + 0.30 = 0.65;  b 0 + 0.15 = 0.15;  c 0.7 + 0 = 0.70
    assert ids(out) == ["c#0", "a#0", "b#0"]
    assert [h.final_score for h in out] == pytest.approx([0.70, 0.65, 0.15])
    out = blend(reranked_abc(), "linear", alpha=0.4)
    #   a 0.4*0.5 + 0.6*1 = 0.8;  b 0 + 0.6*0.5 = 0.3;  c 0.4 + 0 = 0.4
    assert ids(out) == ["a#0", "c#0", "b#0"]
    assert [h.final_score for h in out] == pytest.approx([0.8, 0.4, 0.3])


def test_blend_linear_extremes_follow_one_stage():
    assert ids(blend(reranked_abc(), "linear", alpha=1.0)) == ["c#0", "a#0", "b#0"]
    assert ids(blend(reranked_abc(), "linear", alpha=0.0)) == ["a#0", "b#0", "c#0"]


def test_blend_linear_constant_scores_normalise_to_zero():
    hits = order_by_rerank([hit("a#0", 1, 0.5), hit("b#0", 2, 0.5), hit("c#0", 3, 0.5)], [1.0, 3.0, 2.0])
    out = blend(hits, "linear", alpha=0.5)
    # retrieval constant -> 0 for all; rerank norm: a 0, b 1, c 0.5 -> final 0, 0.5, 0.25
    assert ids(out) == ["b#0", "c#0", "a#0"]
    assert [h.final_score for h in out] == pytest.approx([0.5, 0.25, 0.0])
    same = order_by_rerank([hit("a#0", 1, 0.5), hit("b#0", 2, 0.5)], [1.0, 1.0])
    assert [h.final_score for h in blend(same, "linear")] == [0.0, 0.0]
    assert [h.final_score for h in blend(order_by_rerank([hit("a#0", 1)], [3.0]), "linear")] == [0.0]


def test_blend_ties_go_by_retrieval_rank():
    # rrf: retrieval 1 / rerank 2 and retrieval 2 / rerank 1 give the same sum
    hits = order_by_rerank([hit("a#0", 1), hit("b#0", 2)], [1.0, 2.0])
    out = blend(hits, "rrf")
    assert out[0].final_score == out[1].final_score and ids(out) == ["a#0", "b#0"]
    # linear with alpha 0.5: a = 0.5*0 + 0.5*1, b = 0.5*1 + 0.5*0
    hits = order_by_rerank([hit("a#0", 1, 2.0), hit("b#0", 2, 1.0)], [0.0, 1.0])
    out = blend(hits, "linear", alpha=0.5)
    assert [h.final_score for h in out] == [0.5, 0.5] and ids(out) == ["a#0", "b#0"]


def test_blend_linear_unscored_hit_normalises_to_zero():
    hits = order_by_rerank([hit("a#0", 1, 3.0), hit("b#0", 2, 2.0), hit("c#0", 3, 1.0)], [math.nan, 1.0, 3.0])
    out = blend(hits, "linear", alpha=0.5)
    # rerank norm over the finite ones: b 0, c 1, a (none) 0; retrieval norm: a 1, b 0.5, c 0
    # final: a 0.5, b 0.25, c 0.5 -> a before c by retrieval rank
    assert ids(out) == ["a#0", "c#0", "b#0"]
    assert [h.final_score for h in out] == pytest.approx([0.5, 0.5, 0.25])
    none = blend(hits, "none")
    assert ids(none) == ["c#0", "b#0", "a#0"] and none[-1].final_score is None


def test_blend_never_mutates_input():
    hits = reranked_abc()
    snapshot = copy.deepcopy(hits)
    for method in BLEND_METHODS:
        blend(hits, method)
    assert hits == snapshot


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "weighted"}, "blend method must be one of none, rrf, linear, got 'weighted'"),
    ({"method": "linear", "alpha": 1.5}, r"alpha .* must be a number in \[0, 1\], got 1.5"),
    ({"method": "linear", "alpha": -0.1}, r"got -0.1"),
    ({"method": "linear", "alpha": math.nan}, r"got nan"),
    ({"method": "linear", "alpha": "0.5"}, r"got '0.5'"),
    ({"method": "rrf", "rank_constant": 0}, "rank_constant must be an integer >= 1, got 0"),
])
def test_blend_validation_names_the_value(kwargs, match):
    method = kwargs.pop("method")
    with pytest.raises(ConfigError, match=match):
        blend(reranked_abc(), method, **kwargs)
    with pytest.raises(ConfigError, match=match):
        check_blend(method, **kwargs)


def test_blend_needs_reranked_hits():
    with pytest.raises(ConfigError, match="'a#0' has no rerank_rank"):
        blend([hit("a#0", 1)], "rrf")


def test_rerank_is_order_then_blend():
    hits = [hit("a#0", 1, 0.030), hit("b#0", 2, 0.020), hit("c#0", 3, 0.010)]
    assert order_and_blend(hits, [2.0, -1.0, 5.0], method="rrf") == blend(reranked_abc(), "rrf")
    with pytest.raises(ConfigError, match="got 'x'"):
        order_and_blend(hits, [1.0], method="x")  # settings are checked before the scores


# --- collapse ------------------------------------------------------------------------

def test_collapse_one_entry_per_document_best_chunk_first():
    ranked = [hit("a#2", 1), hit("b#0", 2), hit("a#0", 3), hit("c#1", 4), hit("b#1", 5), hit("a#1", 6)]
    out = collapse(ranked)
    assert ids(out) == ["a#2", "b#0", "c#1"]
    assert [ids(h.passages) for h in out] == [["a#0", "a#1"], ["b#1"], []]
    assert ids(collapse(ranked, limit=2)) == ["a#2", "b#0"]
    assert collapse(out) == out  # idempotent
    assert collapse([]) == []


def test_collapse_flattens_passages_of_a_collapsed_duplicate():
    first = collapse([hit("a#0", 1), hit("a#1", 2)])[0]
    again = collapse([hit("a#5", 1), first])
    assert ids(again) == ["a#5"] and ids(again[0].passages) == ["a#0", "a#1"]


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_collapse_rejects_bad_limit(limit):
    with pytest.raises(ConfigError, match=f"limit must be an integer >= 1 or None, got {limit!r}"):
        collapse([hit("a#0", 1)], limit=limit)


def test_doc_scores_uses_collapse_for_hits_and_ids():
    ranked = blend(order_by_rerank([hit("a#0", 1), hit("b#0", 2), hit("a#1", 3)], [1.0, 3.0, 2.0]), "none")
    assert ids(ranked) == ["b#0", "a#1", "a#0"]
    assert doc_scores(ranked) == {"b": 2.0, "a": 1.0}
    assert doc_scores(collapse(ranked)) == doc_scores(ranked) == doc_scores(h.doc_id for h in ranked)


chunk_hits = st.lists(
    st.tuples(st.sampled_from("abcdef"), st.integers(0, 4), st.floats(-10, 10, allow_nan=False)),
    max_size=25, unique_by=lambda t: (t[0], t[1]))


@hsettings(deadline=None, max_examples=200)
@given(chunk_hits, st.one_of(st.none(), st.integers(1, 8)))
def test_collapse_properties(chunks, limit):
    hits = [hit(f"{d}#{c}", r, retrieval=s) for r, (d, c, s) in enumerate(chunks, start=1)]
    ranked = blend(order_by_rerank(hits, [s for _, _, s in chunks]), "none")  # best score first
    out = collapse(ranked, limit=limit)
    docs = [h.doc_id for h in out]
    all_docs = list(dict.fromkeys(h.doc_id for h in ranked))
    assert len(docs) == len(set(docs))  # exactly one entry per document
    assert docs == all_docs[:limit]  # in order of each document's best chunk
    for entry in out:
        mine = [h for h in ranked if h.doc_id == entry.doc_id]
        assert entry.score == max(h.score for h in mine)  # the best chunk's score
        assert [entry.chunk_id, *ids(entry.passages)] == ids(mine)  # every chunk, in order
    if limit is None:
        assert sum(1 + len(h.passages) for h in out) == len(ranked)
