"""The pipeline an index keeps, on real clusters: apply it, and query, Searcher and serve use it.

Every test builds its own uuid-named index from the sample and deletes it afterwards. The
cross-encoder is the session's (a MiniLM encoder with a seeded random head, saved to a folder):
these tests check which settings are used and where they came from, never relevance. The loop on
the sample's judged questions with the real offline cross-encoder is tests/test_help_centre_loop.py.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid

import httpx
import pytest
from click.testing import CliRunner

from es_rerank import pipelines
from es_rerank.cli import cli
from es_rerank.client import Searcher
from es_rerank.config import Settings
from es_rerank.errors import ModelError, NotOwnedError

from conftest import BACKEND, ROOT, SAMPLE, drop

QUESTION = "what happens to my data if I close my account"
QUESTIONS = ROOT / "examples" / "help-centre-questions"


def plain_settings(es_url, index, embedding_model_path, **changes):
    """Settings that leave every pipeline setting at its default (so the pipeline supplies them)."""
    return Settings(url=es_url, index=index, embedding_model=embedding_model_path, device="cpu",
                    embedding_backend=BACKEND, **changes)


def chosen(cross_encoder_path, **changes):
    values = dict(reranker="cross-encoder", model=cross_encoder_path, backend=BACKEND, depth=7, final_k=2,
                  blend="linear", blend_weight=0.3)
    values.update(changes)
    return pipelines.make(**values)


@pytest.fixture
def env(es_url, index_name, embedding_model_path):
    """CLI environment with no pipeline setting given (only where the cluster and embedder are)."""
    return {"ES_URL": es_url, "ES_RERANK_INDEX": index_name, "ES_RERANK_EMBEDDING_MODEL": embedding_model_path,
            "ES_RERANK_DEVICE": "cpu", "ES_RERANK_EMBEDDING_BACKEND": BACKEND, "ES_RERANK_RERANKER_MODEL": "",
            "ES_RERANK_RERANKER_BACKEND": "", "ES_RERANK_DEPTH": "", "ES_RERANK_FINAL_K": "",
            "ES_RERANK_BLEND": "", "ES_RERANK_BLEND_WEIGHT": "", "ES_RERANK_RERANKER": ""}


@pytest.fixture
def decoy(engine, make_index, node):
    """Another es-rerank index whose marker must never change."""
    name = f"test-decoy-{uuid.uuid4().hex[:8]}"
    make_index(name, SAMPLE)
    index = node.alias_targets(name)[0]
    before = node.meta(index)
    yield name
    assert node.meta(index) == before, "the decoy's marker was touched"
    drop(engine, name)


def sources(result_settings):
    return {k: (v["value"], v["source"]) for k, v in result_settings["settings"].items()}


@pytest.mark.both_engines
def test_applied_pipeline_is_used_by_searcher_query_and_serve(engine, es_url, index_name, make_index,
                                                              embedding_model_path, embedder, cross_encoder_path,
                                                              env, decoy):
    make_index(index_name, SAMPLE)
    stored = pipelines.apply(engine, index_name, chosen(cross_encoder_path))
    assert stored.pipeline.depth == 7 and stored.history == ()

    # Searcher, no options: depth 7, final_k 2, linear 0.3, the pipeline's model
    with Searcher(plain_settings(es_url, index_name, embedding_model_path), embedder=embedder) as s:
        result = s.search(QUESTION)
        assert result.candidates == 7 and len(result.hits) == 2 and result.reranked
        got = sources(result.settings)
        assert got["depth"] == (7, "pipeline") and got["final_k"] == (2, "pipeline")
        assert got["blend"] == ("linear", "pipeline") and got["blend_weight"] == (0.3, "pipeline")
        assert got["reranker_model"][1] == "pipeline" and result.settings["model_check"] == "ok"
        assert result.reranker == f"cross-encoder:{stored.pipeline.model}"
        # an explicit option wins over the pipeline, the rest still comes from it
        result = s.search(QUESTION, depth=9, final_k=3)
        assert result.candidates == 9 and len(result.hits) == 3
        assert sources(result.settings)["depth"] == (9, "argument")
        assert sources(result.settings)["blend"] == ("linear", "pipeline")
        assert not s.search(QUESTION, rerank=False).reranked

    # a setting given in the settings (environment or a non-default value) also wins
    with Searcher(plain_settings(es_url, index_name, embedding_model_path, final_k=4), embedder=embedder) as s:
        result = s.search(QUESTION)
        assert len(result.hits) == 4 and sources(result.settings)["final_k"] == (4, "settings")

    # the CLI: no options -> the pipeline; --final-k overrides; --explain says where each came from
    runner = CliRunner()
    out = runner.invoke(cli, ["query", QUESTION, "--json"], env=env)
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["candidates"] == 7 and len(data["hits"]) == 2 and data["reranked"]
    assert sources(data["settings"])["blend"] == ("linear", "pipeline")
    out = runner.invoke(cli, ["query", QUESTION, "--json", "--final-k", "4"], env=env)
    data = json.loads(out.output)
    assert len(data["hits"]) == 4 and sources(data["settings"])["final_k"] == (4, "argument")
    out = runner.invoke(cli, ["query", QUESTION, "--explain"], env=env)
    assert out.exit_code == 0 and "depth             7" in out.output and "(pipeline)" in out.output

    # serve: a reranker retriever that leaves window, size and inference_id out
    from es_rerank.server import ServerThread, create_app

    app = create_app(plain_settings(es_url, "unused", embedding_model_path), embedder=embedder)
    body = rerank_body()
    with ServerThread(app) as running:
        resp = httpx.post(f"{running.url}/{index_name}/_search", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert len(answer["hits"]["hits"]) == 2 and answer["es_rerank"]["reranked"]
        got = sources(answer["es_rerank"])
        assert got["depth"] == (7, "pipeline") and got["final_k"] == (2, "pipeline")
        assert got["blend"] == ("linear", "pipeline")
        assert answer["es_rerank"]["pipeline"]["label"] == stored.pipeline.label()
        explicit = json.loads(json.dumps(body))
        explicit["retriever"]["text_similarity_reranker"]["rank_window_size"] = 9
        explicit["size"] = 3
        answer = httpx.post(f"{running.url}/{index_name}/_search", json=explicit, timeout=120).json()
        assert len(answer["hits"]["hits"]) == 3
        assert sources(answer["es_rerank"])["depth"] == (9, "argument")


def rerank_body(**reranker):
    """A ``_search`` with a reranker retriever that leaves window, size and inference_id out."""
    return {"retriever": {"text_similarity_reranker": {
        "retriever": {"rrf": {"retrievers": [
            {"standard": {"query": {"multi_match": {"query": QUESTION, "fields": ["text", "title"]}}}},
            {"knn": {"field": "embedding", "k": 10, "num_candidates": 50,
                     "query_vector_builder": {"text_embedding": {"model_text": QUESTION}}}}]}},
        "field": "text", "inference_text": QUESTION, **reranker}}}


def test_serve_settings_given_explicitly_win_over_the_pipeline(engine, es_url, index_name, make_index,
                                                               embedding_model_path, embedder, cross_encoder_path,
                                                               monkeypatch, decoy):
    """serve started with ES_RERANK_RERANKER=none (and ES_RERANK_DEPTH): the variables win over the
    pipeline, as documented, and the answer says so; an index without a pipeline still gets the 400."""
    from es_rerank.server import ServerThread, create_app

    make_index(index_name, SAMPLE)
    stored = pipelines.apply(engine, index_name, chosen(cross_encoder_path))
    monkeypatch.setenv("ES_RERANK_RERANKER", "none")
    monkeypatch.setenv("ES_RERANK_DEPTH", "12")
    # the server's own cross-encoder (what a request's inference_id names) is the session's model
    app = create_app(plain_settings(es_url, "unused", embedding_model_path, reranker="none", depth=12,
                                    reranker_model=cross_encoder_path, reranker_backend=BACKEND), embedder=embedder)
    with ServerThread(app) as running:
        resp = httpx.post(f"{running.url}/{index_name}/_search", json=rerank_body(), timeout=120)
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        got = sources(answer["es_rerank"])
        assert got["reranker"] == ("none", "environment") and not answer["es_rerank"]["reranked"]
        assert got["depth"] == (12, "environment") and got["final_k"] == (2, "pipeline")
        assert len(answer["hits"]["hits"]) == 2
        assert answer["es_rerank"]["pipeline"]["label"] == stored.pipeline.label()
        # the request's own inference_id still wins over the variable
        resp = httpx.post(f"{running.url}/{index_name}/_search", json=rerank_body(inference_id="cross-encoder"),
                          timeout=120)
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert answer["es_rerank"]["reranked"] and sources(answer["es_rerank"])["reranker"] == \
            ("cross-encoder", "argument")
        # an index without a pipeline: nothing names a reranker, so the request must
        resp = httpx.post(f"{running.url}/{decoy}/_search", json=rerank_body(), timeout=120)
        assert resp.status_code == 400 and "[inference_id] is required" in resp.text, resp.text
        assert "es_rerank" not in resp.json()


@pytest.mark.both_engines
def test_rollback_restores_the_previous_and_recreate_keeps_it(engine, index_name, make_index, node,
                                                             cross_encoder_path, env, decoy):
    make_index(index_name, SAMPLE)
    first = pipelines.apply(engine, index_name, chosen(cross_encoder_path)).pipeline
    second = pipelines.apply(engine, index_name, pipelines.make(reranker="none", final_k=3)).pipeline
    stored = pipelines.read(engine, index_name)
    assert stored.pipeline == second and stored.history == (first,)

    # an alias swap (--recreate) carries the pipeline and its history to the new index
    old = node.alias_targets(index_name)
    make_index(index_name, SAMPLE, recreate=True)
    assert node.alias_targets(index_name) != old
    moved = pipelines.read(engine, index_name)
    assert moved.pipeline == second and moved.history == (first,)

    out = CliRunner().invoke(cli, ["pipeline", "rollback"], env=env)
    assert out.exit_code == 0, out.output
    back = pipelines.read(engine, index_name)
    assert back.pipeline.label() == first.label() and back.pipeline.how == "rollback" and back.history == ()
    out = CliRunner().invoke(cli, ["pipeline", "history"], env=env)
    assert "in use" in out.output and first.label() in out.output
    # from the first pipeline, a rollback leaves none: the settings decide again
    assert pipelines.rollback(engine, index_name).pipeline is None
    out = CliRunner().invoke(cli, ["pipeline", "rollback"], env=env)
    assert out.exit_code != 0 and "no pipeline to roll back" in out.output


def test_history_is_bounded(engine, index_name, make_index):
    make_index(index_name, SAMPLE)
    for k in range(1, pipelines.HISTORY_LIMIT + 4):
        pipelines.apply(engine, index_name, pipelines.make(reranker="none", final_k=k))
    stored = pipelines.read(engine, index_name)
    assert stored.pipeline.final_k == pipelines.HISTORY_LIMIT + 3
    assert len(stored.history) == pipelines.HISTORY_LIMIT
    assert [p.final_k for p in stored.history] == list(range(pipelines.HISTORY_LIMIT + 2, 2, -1))


def test_changed_model_folder_is_detected(engine, es_url, index_name, make_index, embedding_model_path, embedder,
                                          cross_encoder_path, tmp_path, env):
    make_index(index_name, SAMPLE)
    folder = tmp_path / "model"
    shutil.copytree(cross_encoder_path, folder)
    pipelines.apply(engine, index_name, chosen(str(folder)))
    settings = plain_settings(es_url, index_name, embedding_model_path)
    with Searcher(settings, embedder=embedder) as s:
        assert s.plan().model_check == "ok"
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")  # same model, other bytes
    with Searcher(settings, embedder=embedder) as s:
        plan = s.plan()
        assert plan.model_check == "changed" and "no longer holds the files" in plan.warning
        result = s.search(QUESTION)  # warn (the default): it still answers, and says so
        assert result.settings["model_check"] == "changed"
    with Searcher(settings.replace(pipeline_model_check="refuse"), embedder=embedder) as s:
        with pytest.raises(ModelError, match="no longer holds the files"):
            s.search(QUESTION)
    out = CliRunner().invoke(cli, ["query", QUESTION], env=env)
    assert out.exit_code == 0 and "warning: the reranker model folder" in out.output
    out = CliRunner().invoke(cli, ["query", QUESTION], env={**env, "ES_RERANK_PIPELINE_MODEL_CHECK": "refuse"})
    assert out.exit_code != 0 and "ES_RERANK_PIPELINE_MODEL_CHECK=refuse" in out.output


def test_only_es_rerank_indices_take_a_pipeline(engine, node, cross_encoder_path):
    plain = f"test-plain-{uuid.uuid4().hex[:8]}"
    node.create_plain(plain, [{"text": "x"}])
    try:
        with pytest.raises(NotOwnedError, match="not created by es-rerank"):
            pipelines.apply(engine, plain, chosen(cross_encoder_path))
        assert "es_rerank" not in node.meta(plain)
    finally:
        node.delete_plain(plain)


@pytest.fixture
def eval_indices(engine, node):
    """Evaluation indices tune builds here are deleted afterwards (those that existed are kept)."""
    before = set(node.indices("es-rerank-eval-help-centre-questions-*"))
    yield
    for name in set(node.indices("es-rerank-eval-help-centre-questions-*")) - before:
        drop(engine, re.sub(r"-\d{8}t\d{6}-[0-9a-f]{4}$", "", name))  # by its alias


@pytest.mark.both_engines
def test_tune_apply_refuses_a_pipeline_worse_than_hybrid_unless_forced(engine, index_name, make_index,
                                                                      cross_encoder_path, env, decoy,
                                                                      eval_indices):
    """The random-head cross-encoder alone (no blend) is worse than hybrid on the sample's questions."""
    make_index(index_name, SAMPLE)
    args = ["tune", "--data", str(QUESTIONS), "--split", "test", "--depths", "10", "--blends", "none",
            "--latency-queries", "0", "--no-progress", "--reranker", "cross-encoder", "--apply", "best"]
    env = {**env, "ES_RERANK_RERANKER_MODEL": cross_encoder_path, "ES_RERANK_RERANKER_BACKEND": BACKEND}
    out = CliRunner().invoke(cli, args, env=env)
    assert out.exit_code != 0, out.output
    assert "not applied" in out.output and "worse than hybrid" in out.output and "--force" in out.output
    assert pipelines.read(engine, index_name).pipeline is None
    out = CliRunner().invoke(cli, [*args, "--force"], env=env)
    assert out.exit_code == 0, out.output
    p = pipelines.read(engine, index_name).pipeline
    assert p.reranker == "cross-encoder" and p.depth == 10 and p.blend == "none" and p.how == "tune"
    assert p.evidence["questions"]["queries"] == 22 and p.evidence["metrics"]["ndcg@10"]["mean_delta"] < 0


def test_eval_pipeline_evaluates_what_the_index_applied(engine, index_name, make_index, cross_encoder_path, env,
                                                        eval_indices, tmp_path):
    """`eval --pipeline INDEX` runs the applied pipeline's reranker, depth, final_k and blend; options win."""
    make_index(index_name, SAMPLE)
    args = ["eval", "--data", str(QUESTIONS), "--split", "test", "--no-progress", "--pipeline", index_name]
    out = CliRunner().invoke(cli, args, env=env)
    assert out.exit_code != 0 and f"{index_name} has no pipeline" in out.output, out.output

    pipelines.apply(engine, index_name, chosen(cross_encoder_path, depth=9, final_k=4, blend_weight=0.4))
    out = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "applied")], env=env)
    assert out.exit_code == 0, out.output
    assert f"evaluating the pipeline of {index_name}: cross-encoder" in out.output
    result = json.loads((tmp_path / "applied" / "results.json").read_text())
    assert (result["depth"], result["final_k"], result["blend"], result["blend_weight"]) == (9, 4, "linear", 0.4)
    assert result["environment"]["pipeline_of"] == index_name
    assert result["environment"]["reranker_model"] == cross_encoder_path
    assert [r["setup"] for r in result["rows"]][-1] == "hybrid+cross-encoder"

    out = CliRunner().invoke(cli, [*args, "--depth", "6", "--out", str(tmp_path / "given")], env=env)
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "given" / "results.json").read_text())
    assert (result["depth"], result["final_k"]) == (6, 4)

    pipelines.apply(engine, index_name, pipelines.make(reranker="none", final_k=3))
    out = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "none")], env=env)
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "none" / "results.json").read_text())
    assert [r["setup"] for r in result["rows"]] == ["bm25", "knn", "hybrid"] and result["final_k"] == 3
