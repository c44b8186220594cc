"""Reciprocal rank fusion, against values worked out by hand, and its invariants."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank.errors import ConfigError
from es_rerank.fusion import reciprocal_rank_fusion


def test_hand_computed_k60():
    # a: 1/61 + 1/63 ; b: 1/62 + 1/61 ; c: 1/63 ; d: 1/62
    fused = dict(reciprocal_rank_fusion([["a", "b", "c"], ["b", "d", "a"]], rank_constant=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert fused["b"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63)
    assert fused["d"] == pytest.approx(1 / 62)
    order = [k for k, _ in reciprocal_rank_fusion([["a", "b", "c"], ["b", "d", "a"]], rank_constant=60)]
    assert order == ["b", "a", "d", "c"]


def test_window_limits_each_list():
    fused = dict(reciprocal_rank_fusion([["a", "b", "c"], ["c", "b"]], rank_constant=1, window=1))
    assert fused == {"a": 0.5, "c": 0.5}


def test_ties_break_by_id():
    assert [k for k, _ in reciprocal_rank_fusion([["z"], ["a"]])] == ["a", "z"]


def test_duplicate_in_one_list_counts_once():
    assert dict(reciprocal_rank_fusion([["a", "a"]], rank_constant=1)) == {"a": 0.5}


@pytest.mark.parametrize("kwargs,match", [({"rank_constant": 0}, "rank_constant"), ({"window": 0}, "window")])
def test_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        reciprocal_rank_fusion([["a"]], **kwargs)


ids = st.lists(st.sampled_from("abcdefghij"), max_size=10, unique=True)


@given(st.lists(ids, min_size=1, max_size=4), st.integers(1, 100))
def test_order_invariant_in_inputs(lists, k):
    expected = reciprocal_rank_fusion(lists, rank_constant=k)
    for perm in itertools.islice(itertools.permutations(lists), 24):
        assert reciprocal_rank_fusion(list(perm), rank_constant=k) == expected


@given(st.lists(ids, min_size=1, max_size=4))
def test_scores_descend_and_cover_every_id(lists):
    fused = reciprocal_rank_fusion(lists)
    scores = [s for _, s in fused]
    assert scores == sorted(scores, reverse=True)
    assert {k for k, _ in fused} == set().union(*map(set, lists))
