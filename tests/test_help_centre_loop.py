"""The quick start's loop on the sample: index, tune on its judged questions, apply, answer.

Runs ``es-rerank tune --apply`` as scripts/quickstart.sh runs it (its options, read from the
script) on examples/help-centre-questions with the real offline
cross-encoder (/work/shared/models/minilm-l6-scifact-ce, or ES_RERANK_TEST_CROSS_ENCODER), then
answers every question through a Searcher with no options (the applied pipeline) and through
hybrid alone, and checks that the applied pipeline's nDCG@3 is at least hybrid's, and that the
quick start's own question has the article that answers it in the top 3.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from es_rerank import pipelines
from es_rerank.cli import cli
from es_rerank.client import Searcher
from es_rerank.config import Settings
from es_rerank.evaluate.data import load_beir
from es_rerank.evaluate.metrics import doc_scores, per_query

from conftest import BACKEND, ROOT, SAMPLE, drop

QUESTIONS = ROOT / "examples" / "help-centre-questions"
OFFLINE_CE = Path(os.environ.get("ES_RERANK_TEST_CROSS_ENCODER", ROOT.parent / "shared" / "models" /
                                 "minilm-l6-scifact-ce"))


def quickstart_tune_args() -> list[str]:
    """The options scripts/quickstart.sh gives ``es-rerank tune`` (so this test checks what it runs)."""
    script = (ROOT / "scripts" / "quickstart.sh").read_text().replace("\\\n", " ")
    line = next(l for l in script.splitlines() if l.lstrip().startswith("es-rerank tune "))
    args = shlex.split(line.split("|")[0])[2:]
    assert "--apply" in args and "--data" in args, args
    return args


def test_question_set_corpus_is_the_sample():
    """corpus.jsonl is the sample itself (a link, not a copy); the BEIR loader reads its ``id``s."""
    assert (QUESTIONS / "corpus.jsonl").resolve() == SAMPLE.resolve()
    data = load_beir(QUESTIONS, "test")  # reads the sample's "id" as the corpus's "_id"
    sample_ids = [json.loads(line)["id"] for line in SAMPLE.read_text().splitlines() if line.strip()]
    assert 15 <= len(data.queries) <= 25 and not data.unknown_doc_ids
    assert {d for r in data.qrels.values() for d in r} <= set(sample_ids)
    assert all(max(r.values()) == 2 for r in data.qrels.values())  # each question has an article answering it


@pytest.mark.skipif(not OFFLINE_CE.is_dir(), reason=f"no offline cross-encoder at {OFFLINE_CE}")
def test_tune_apply_then_answers_are_at_least_as_good_as_hybrid(engine, node, es_url, index_name, make_index,
                                                                embedding_model_path, embedder):
    make_index(index_name, SAMPLE)
    before = set(node.indices("es-rerank-eval-help-centre-questions-*"))
    env = {"ES_URL": es_url, "ES_RERANK_INDEX": index_name, "ES_RERANK_EMBEDDING_MODEL": embedding_model_path,
           "ES_RERANK_DEVICE": "cpu", "ES_RERANK_EMBEDDING_BACKEND": BACKEND, "ES_RERANK_RERANKER": "",
           "ES_RERANK_RERANKER_MODEL": str(OFFLINE_CE), "ES_RERANK_RERANKER_BACKEND": BACKEND,
           "ES_RERANK_DEPTH": "", "ES_RERANK_FINAL_K": "", "ES_RERANK_BLEND": "", "ES_RERANK_BLEND_WEIGHT": ""}
    try:
        args = quickstart_tune_args()
        args[args.index("--data") + 1] = str(QUESTIONS)
        out = CliRunner().invoke(cli, ["tune", *args], env=env)
    finally:
        for name in set(node.indices("es-rerank-eval-help-centre-questions-*")) - before:
            drop(engine, re.sub(r"-\d{8}t\d{6}-[0-9a-f]{4}$", "", name))
    assert out.exit_code == 0, out.output
    assert f"applied to {index_name}" in out.output
    applied = pipelines.read(engine, index_name).pipeline
    assert applied is not None and applied.how == "tune" and applied.evidence["questions"]["queries"] == 22

    data = load_beir(QUESTIONS, "test")
    settings = Settings(url=es_url, index=index_name, embedding_model=embedding_model_path, device="cpu",
                        embedding_backend=BACKEND, reranker_backend=BACKEND)
    with Searcher(settings, embedder=embedder) as s:
        tuned = {q: s.search(text, final_k=3) for q, text in data.queries.items()}
        hybrid = {q: s.search(text, final_k=3, rerank=False) for q, text in data.queries.items()}
    assert all(r.settings["pipeline"]["label"] == applied.label() for r in tuned.values())
    ndcg_tuned = per_query(data.qrels, {q: doc_scores(r.hits) for q, r in tuned.items()}, "ndcg@3")
    ndcg_hybrid = per_query(data.qrels, {q: doc_scores(r.hits) for q, r in hybrid.items()}, "ndcg@3")
    mean_tuned = sum(ndcg_tuned.values()) / len(ndcg_tuned)
    mean_hybrid = sum(ndcg_hybrid.values()) / len(ndcg_hybrid)
    print(f"\nhelp-centre questions, nDCG@3: applied pipeline ({applied.label()}) {mean_tuned:.4f}, "
          f"hybrid {mean_hybrid:.4f}")
    assert mean_tuned >= mean_hybrid - 1e-9
    q01 = [h.doc_id for h in tuned["q01"].hits]
    assert "data-after-close" in q01, q01
