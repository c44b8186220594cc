"""LLM rerankers end to end against a real local OpenAI-compatible server (llama.cpp).

The model is tiny (gemma3-270m): these tests check the protocol and the guarantees
(every candidate returned exactly once, final_k respected, instructions reach the
prompt, failures fall back as documented), never relevance.
"""

import json

import pytest
from click.testing import CliRunner

from es_rerank.cli import cli
from es_rerank.client import Searcher
from es_rerank.errors import RerankerError
from es_rerank.rerankers import build_reranker
from es_rerank.rerankers.llm import FALLBACK_SCORE, ListwiseReranker, LLMConfig, LLMPointwiseReranker

pytestmark = pytest.mark.es

TEXTS = [
    "To close your account open Settings > Account > Close account.",
    "Yearly plans can be refunded in full within 14 days.",
    "Two-factor authentication adds a second step when you sign in.",
    "Deleted files stay in the trash for 30 days.",
    "We do not sell your personal data.",
    "Invite members from Team > Members > Invite.",
    "Mark a file as available offline in the app.",
]


def test_pointwise_scores_every_candidate(llm_url):
    """Through /completions the model answers Yes/No: every score is a real P(yes), no fallback."""
    r = LLMPointwiseReranker(LLMConfig(base_url=llm_url, model="gemma3-270m", timeout=120, api="completions"))
    scores = r.score("how do I close my account", TEXTS)
    assert len(scores) == len(TEXTS)
    assert all(0.0 < s < 1.0 for s in scores)
    u = r.usage()
    assert u["requests"] == len(TEXTS) and u["prompt_tokens"] > 0 and u["completion_tokens"] >= len(TEXTS)
    assert u["fallbacks"] == 0
    # temperature 0: repeatable up to llama.cpp prompt-cache numerics (seen: 0.003)
    assert r.score("how do I close my account", TEXTS) == pytest.approx(scores, abs=0.02)


def test_unreadable_chat_replies_fall_back_and_are_counted(llm_url):
    """Through the chat template this model answers neither Yes nor No: fallback score, counted."""
    r = LLMPointwiseReranker(LLMConfig(base_url=llm_url, model="gemma3-270m", timeout=120, api="chat"))
    scores = r.score("how do I close my account", TEXTS[:3])
    assert len(scores) == 3
    assert r.usage()["fallbacks"] == scores.count(FALLBACK_SCORE)
    assert all(s == FALLBACK_SCORE or 0.0 <= s <= 1.0 for s in scores)


def test_instructions_reach_the_prompt(llm_url):
    """The server counts the prompt it received: the instructions add their tokens to it."""
    cfg = LLMConfig(base_url=llm_url, model="gemma3-270m", timeout=120, api="completions")
    plain, instructed = LLMPointwiseReranker(cfg), LLMPointwiseReranker(cfg, instructions="prefer recent documents " * 5)
    plain.score("q", TEXTS[:1])
    instructed.score("q", TEXTS[:1])
    assert instructed.usage()["prompt_tokens"] >= plain.usage()["prompt_tokens"] + 10


def test_listwise_returns_every_candidate_once(llm_url):
    r = ListwiseReranker(LLMConfig(base_url=llm_url, model="gemma3-270m", timeout=120, api="completions"), window=4, step=2)
    texts = TEXTS * 2  # 14 candidates: several windows
    scores = r.score("refund", texts)
    assert sorted(scores) == [float(i) for i in range(1, len(texts) + 1)]
    assert r.usage()["requests"] == 6  # windows (10,14) (8,12) (6,10) (4,8) (2,6) (0,4)


@pytest.mark.parametrize("kind", ["llm", "listwise"])
def test_searcher_with_llm_rerankers(kind, llm_settings, es, embedder, sample_index):
    s = Searcher(llm_settings.replace(reranker=kind, listwise_window=6, listwise_step=3), es=es, embedder=embedder)
    result = s.search("what happens to my data if I close my account", depth=10, final_k=3)
    assert result.reranked and len(result.hits) == 3 and result.reranker.startswith(kind)
    assert len({h.chunk_id for h in result.hits}) == 3
    assert [h.rerank_rank for h in result.hits] == [1, 2, 3]
    scores = [h.rerank_score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    assert result.usage["requests"] >= 1 and result.usage["prompt_tokens"] > 0


def test_unreachable_llm_raises_or_falls_back(settings, es, embedder, sample_index):
    dead = settings.replace(reranker="llm", llm_base_url="http://127.0.0.1:9/v1", llm_timeout=2.0)
    with pytest.raises(RerankerError, match=r"LLM server at http://127.0.0.1:9/v1/chat/completions failed"):
        Searcher(dead, es=es, embedder=embedder).search("refund", depth=5, final_k=2)
    allowed = Searcher(dead.replace(allow_reranker_failures=True), es=es, embedder=embedder)
    result = allowed.search("refund", depth=5, final_k=2)
    assert not result.reranked and "LLM server" in result.rerank_error
    assert [h.retrieval_rank for h in result.hits] == [1, 2] and all(h.rerank_score is None for h in result.hits)


def test_cli_query_with_llm_rerankers(cli_env, llm_url, sample_index):
    env = dict(cli_env, ES_RERANK_INDEX=sample_index, ES_RERANK_LLM_BASE_URL=llm_url, ES_RERANK_LLM_MODEL="g",
               ES_RERANK_LLM_API="completions")
    for kind in ("llm", "listwise"):
        r = CliRunner().invoke(cli, ["query", "close my account", "--depth", "8", "--final-k", "3", "--reranker", kind,
                                     "--json"], env=env, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        data = json.loads(r.stdout)
        assert data["reranked"] and len(data["hits"]) == 3 and data["usage"]["requests"] >= 1


def test_cli_allow_reranker_failures(cli_env, sample_index):
    env = dict(cli_env, ES_RERANK_INDEX=sample_index, ES_RERANK_LLM_BASE_URL="http://127.0.0.1:9/v1",
               ES_RERANK_LLM_TIMEOUT="2")
    r = CliRunner().invoke(cli, ["query", "refund", "--reranker", "llm", "--final-k", "2"], env=env)
    assert r.exit_code == 1 and "LLM server" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["query", "refund", "--reranker", "llm", "--final-k", "2",
                                 "--allow-reranker-failures"], env=env)
    assert r.exit_code == 0 and "reranker failed" in r.output and "2. [" in r.output


def test_build_reranker_kinds(settings):
    assert build_reranker("llm", settings).name == "llm:local"
    assert build_reranker("listwise", settings).name == "listwise:local"
