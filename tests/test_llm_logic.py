"""LLM rerankers' pure logic: prompts, reading judgments, permutation repair, windows.

Replies in tests/data/llm_replies.json were recorded from the real llama.cpp server the
integration tests start (gemma3-270m); the malformed ones are real too where the tiny
model produced them, and hand-written where noted.
"""

import json
from pathlib import Path

import pytest

from es_rerank.errors import ConfigError
from es_rerank.rerankers.llm import (
    LLMConfig, listwise_prompt, parse_permutation, pointwise_prompt, pointwise_score, sliding_windows,
)

REPLIES = json.loads((Path(__file__).parent / "data" / "llm_replies.json").read_text())


def test_pointwise_prompt_carries_query_document_and_instructions():
    prompt = pointwise_prompt("close my account", "How to close it", instructions="prefer  recent\ndocuments")
    assert "Also follow these instructions from the user: prefer recent documents" in prompt
    assert prompt.endswith("Query: close my account\nDocument: How to close it\nRelevant:")
    assert "instructions" not in pointwise_prompt("q", "d")


def test_listwise_prompt_numbers_every_passage():
    prompt = listwise_prompt("q", ["alpha", "beta\ngamma", "delta"], instructions="prefer official sources")
    assert "[1] alpha\n[2] beta gamma\n[3] delta" in prompt and "Rank the 3 passages" in prompt
    assert "prefer official sources" in prompt and prompt.endswith("Ranking:")


@pytest.mark.parametrize("name", [k for k in REPLIES if k.startswith("pointwise_")])
def test_pointwise_recorded_replies(name):
    case = REPLIES[name]
    score = pointwise_score(case["reply"])
    if case["expected"] is None:
        assert score is None
    else:
        assert score == pytest.approx(case["expected"], abs=1e-6)
        assert 0.0 <= score <= 1.0


def test_pointwise_logprob_math():
    import math

    completions = {"choices": [{"text": " Yes", "logprobs": {"top_logprobs": [
        {" Yes": math.log(0.5), " No": math.log(0.25), " Maybe": math.log(0.1)}]}}]}
    assert pointwise_score(completions) == pytest.approx(0.5 / 0.75)
    reply = {"choices": [{"message": {"content": "Yes"}, "logprobs": {"content": [{
        "token": "Yes", "logprob": math.log(0.6),
        "top_logprobs": [{"token": "Yes", "logprob": math.log(0.6)}, {"token": " no", "logprob": math.log(0.2)},
                         {"token": "Maybe", "logprob": math.log(0.1)}]}]}}]}
    assert pointwise_score(reply) == pytest.approx(0.6 / 0.8)


@pytest.mark.parametrize("name", [k for k in REPLIES if k.startswith("listwise_")])
def test_listwise_recorded_replies(name):
    case = REPLIES[name]
    perm = parse_permutation(case["content"], case["n"])
    assert list(perm.order) == case["expected_order"]
    assert sorted(perm.order) == list(range(case["n"]))  # every candidate exactly once


@pytest.mark.parametrize("text,n,order,counts", [
    ("[2] > [1] > [3]", 3, (1, 0, 2), (0, 0, 0)),
    ("[2] > [2] > [7] > [0]", 3, (1, 0, 2), (2, 1, 2)),
    ("", 2, (0, 1), (0, 0, 2)),
    ("I think passage 3 is best, then 1", 3, (2, 0, 1), (0, 0, 1)),
])
def test_permutation_repair(text, n, order, counts):
    perm = parse_permutation(text, n)
    assert perm.order == order and (perm.unknown, perm.repeated, perm.missing) == counts


@pytest.mark.parametrize("n,w,s,expected", [
    (0, 20, 10, []), (5, 20, 10, [(0, 5)]), (20, 20, 10, [(0, 20)]),
    (25, 20, 10, [(5, 25), (0, 15)]), (30, 10, 10, [(20, 30), (10, 20), (0, 10)]),
])
def test_sliding_windows(n, w, s, expected):
    spans = sliding_windows(n, w, s)
    assert spans == expected
    assert set().union(*(range(a, b) for a, b in spans)) == set(range(n)) if n else spans == []


@pytest.mark.parametrize("w,s", [(1, 1), (10, 0), (10, 11)])
def test_sliding_windows_rejects(w, s):
    with pytest.raises(ConfigError):
        sliding_windows(10, w, s)


def test_llm_config_hides_key():
    cfg = LLMConfig(api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(cfg)
    with pytest.raises(ConfigError, match="concurrency"):
        LLMConfig(concurrency=0)


@pytest.mark.parametrize("kind", ["llm", "listwise"])
def test_normalize_is_refused_for_llm_rerankers(kind):
    from es_rerank.config import Settings
    from es_rerank.rerankers import build_reranker

    with pytest.raises(ConfigError, match="--normalize applies to the cross-encoder only"):
        build_reranker(kind, Settings(), normalize=True)
