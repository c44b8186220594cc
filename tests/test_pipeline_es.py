"""The two stages against a real cluster, on each engine: indexing, retrieval, fusion, reranking."""

import json

import pytest

from es_rerank.client import Searcher
from es_rerank.errors import IndexMissingError, MappingMismatchError, ValidationError

from conftest import SAMPLE

pytestmark = [pytest.mark.es, pytest.mark.both_engines]


def test_count_equals_reported_chunks(node, make_index, index_name):
    report = make_index(index_name, SAMPLE)
    n_docs = sum(1 for line in SAMPLE.read_text().splitlines() if line.strip())
    assert report.documents_read == n_docs == report.documents_indexed
    assert node.count(index_name) == report.chunks_indexed >= n_docs


def test_build_is_swapped_in_with_refresh_on_and_marked(node, engine, make_index, index_name):
    """A new index is built under a fresh name with refresh off, then served through the alias."""
    from es_rerank.engines import MARKER

    report = make_index(index_name, SAMPLE)
    assert report.rebuilt and report.concrete.startswith(index_name + "-")
    assert node.alias_targets(index_name) == [report.concrete]
    settings = node.index_settings(report.concrete)
    assert "refresh_interval" not in settings and settings["auto_expand_replicas"] == "0-1"
    meta = node.meta(report.concrete)[MARKER]
    assert meta["state"] == "ready" and meta["alias"] == index_name and meta["dims"] == 384
    assert meta["engine"] == engine.name
    assert meta["chunks"] == report.chunks_indexed == node.count(index_name)
    assert node.health(index_name) == "green"  # no replica waits on a single node


def test_state_changes_bound_the_master_wait_with_the_engine_own_parameter(node, engine, index_name):
    """Create and delete carry the wait bound each engine names (OpenSearch 3 deprecates master_timeout
    and warns, once per node, with a header the client turns into a Python warning); the node accepts it
    (an unknown parameter would be a 400)."""
    expected = {"elasticsearch": "master_timeout", "opensearch": "cluster_manager_timeout"}[engine.name]
    assert list(engine._master_timeout()) == [expected]
    concrete = f"{index_name}-bound"
    engine.create_index(concrete, {"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    try:
        assert node.count(concrete) == 0
    finally:
        engine.delete_index(concrete)
    assert not node.exists(concrete)


def test_legacy_bulk_load_is_finished(node, engine, make_index, index_name, tmp_path):
    """An index es-rerank 0.1 left in bulk-load mode (refresh off) gets refresh back on."""
    engine.create_index(index_name, {**engine.index_body(384), "mappings": {
        **engine.index_body(384)["mappings"], "_meta": {"es_rerank_bulk_load": True}}})
    engine.put_settings(index_name, {"refresh_interval": "-1"})
    assert node.index_settings(index_name)["refresh_interval"] == "-1"
    extra = tmp_path / "one.jsonl"
    extra.write_text('{"id": "late-1", "text": "a document written after the load"}\n')
    report = make_index(index_name, extra)
    assert not report.rebuilt and report.concrete == index_name
    assert "refresh_interval" not in node.index_settings(index_name)
    assert node.count(index_name, {"term": {"doc_id": "late-1"}}) == 1


def test_reindex_replaces_never_duplicates(node, make_index, index_name):
    first = make_index(index_name, SAMPLE)
    second = make_index(index_name, SAMPLE)
    assert second.chunks_indexed == first.chunks_indexed
    assert node.count(index_name) == first.chunks_indexed


def test_reindex_shorter_document_drops_stale_chunks(node, make_index, index_name, tmp_path):
    p = tmp_path / "d.jsonl"
    long_text = " ".join(f"token{i}" for i in range(400))
    p.write_text(json.dumps({"id": "doc", "text": long_text}) + "\n")
    first = make_index(index_name, p, chunk_tokens=50, chunk_overlap=10)
    assert first.chunks_indexed > 3
    p.write_text(json.dumps({"id": "doc", "text": "now short"}) + "\n")
    second = make_index(index_name, p, chunk_tokens=50, chunk_overlap=10)
    assert second.chunks_indexed == 1 and second.stale_chunks_deleted == first.chunks_indexed - 1
    assert node.count(index_name) == 1


def _owned_index(engine, name, dims):
    from es_rerank.lifecycle import marker

    body = engine.index_body(dims)
    body["mappings"]["_meta"] = marker(alias=name, state="ready", engine=engine.name, embedder="other",
                                       embedding_backend="onnx", dims=dims, chunk_tokens=200, chunk_overlap=40,
                                       analyzer="standard")
    engine.create_index(name, body)


def test_dims_mismatch_fails_before_writing(node, engine, make_index, index_name):
    _owned_index(engine, index_name, 8)
    with pytest.raises(MappingMismatchError, match="dims are 8 in the index but the configured embedder produces 384"):
        make_index(index_name, SAMPLE)
    assert node.count(index_name) == 0


def test_search_returns_final_k_sorted_with_both_scores(searcher):
    result = searcher.search("what happens to my data if I close my account", depth=20, final_k=3)
    assert result.reranked and result.candidates == 20 and len(result.hits) == 3
    scores = [h.rerank_score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    for rank, h in enumerate(result.hits, start=1):
        assert h.rerank_rank == rank and h.retrieval_rank >= 1 and h.retrieval_score > 0
        assert h.doc_id and h.text and h.metadata.get("category")
    t = result.timings
    assert t.retrieval_ms > 0 and t.rerank_ms > 0 and t.total_ms >= t.retrieval_ms + t.rerank_ms


def test_reranked_hits_are_the_top_scores_over_all_candidates(searcher, reranker):
    """The returned hits are exactly the best final_k by reranker score among all depth candidates."""
    q = "refund for a double charge"
    candidates = searcher.retrieve(q, depth=15).hits
    scores = reranker.score(q, [h.passage for h in candidates])
    best = sorted(zip(scores, [h.chunk_id for h in candidates]), reverse=True)[:4]
    result = searcher.search(q, depth=15, final_k=4)
    assert [h.chunk_id for h in result.hits] == [cid for _, cid in best]
    assert [h.rerank_score for h in result.hits] == pytest.approx([s for s, _ in best])


def test_client_fusion_matches_rrf_by_hand(searcher, engine, embedder, settings):
    q = "cancel my subscription"
    depth = 10
    bm25 = engine.search(settings.index, engine.bm25_body(q, size=depth))["hits"]["hits"]
    knn = engine.search(settings.index, engine.knn_body(embedder.embed_query(q), size=depth))["hits"]["hits"]
    by_hand: dict[str, float] = {}
    for hits in (bm25, knn):
        for rank, h in enumerate(hits, start=1):
            by_hand[h["_id"]] = by_hand.get(h["_id"], 0.0) + 1.0 / (60 + rank)
    top = sorted(by_hand.items(), key=lambda kv: (-kv[1], kv[0]))[:depth]  # the fused list keeps depth hits
    first = searcher.retrieve(q, depth=depth, fusion="client")
    hits = first.hits
    assert first.fusion == "client"
    assert [h.chunk_id for h in hits] == [cid for cid, _ in top]
    assert [h.retrieval_score for h in hits] == pytest.approx([score for _, score in top])
    assert [h.retrieval_rank for h in hits] == list(range(1, depth + 1))


def test_auto_fusion_detects_and_remembers(searcher):
    used = searcher.retrieve("billing", depth=5, fusion="auto").fusion
    assert used in ("server", "client")
    assert searcher.engine._server_fusion is (used == "server")
    assert searcher.retrieve("billing", depth=5, fusion="auto").fusion == used


def test_no_rerank_keeps_retrieval_order(searcher):
    result = searcher.search("two-factor authentication", depth=10, final_k=4, rerank=False)
    assert not result.reranked and result.timings.rerank_ms == 0
    assert [h.retrieval_rank for h in result.hits] == [1, 2, 3, 4]
    assert all(h.rerank_score is None for h in result.hits)


@pytest.mark.parametrize("mode", ["bm25", "knn"])
def test_single_modes(searcher, mode):
    result = searcher.search("storage full", depth=8, final_k=3, mode=mode, rerank=False)
    assert result.mode == mode and result.fusion is None and len(result.hits) == 3
    scores = [h.retrieval_score for h in result.hits]
    assert scores == sorted(scores, reverse=True)


def test_filters_apply_to_both_retrievers(searcher):
    for fusion in ("client", "auto"):
        result = searcher.search("account", depth=10, final_k=5, filters={"category": "billing"}, fusion=fusion)
        assert result.hits and {h.metadata["category"] for h in result.hits} == {"billing"}


@pytest.mark.parametrize("kwargs,match", [
    ({"query": "  "}, "query is empty"),
    ({"query": "x", "depth": 5, "final_k": 8}, r"final_k must be <= depth, got 8 > 5"),
    ({"query": "x", "final_k": 0}, "final_k must be >= 1"),
    ({"query": "x", "depth": 10_001, "final_k": 5}, r"exceeds the index's max_result_window \(10000\)"),
])
def test_validation(searcher, kwargs, match):
    with pytest.raises(ValidationError, match=match):
        searcher.search(**kwargs)


def test_missing_index(settings, engine, embedder, reranker):
    s = Searcher(settings.replace(index="no-such-index-xyz"), engine=engine, embedder=embedder, reranker=reranker)
    with pytest.raises(IndexMissingError, match="index 'no-such-index-xyz' does not exist"):
        s.search("anything")


def test_query_against_index_of_other_dims_names_both(engine, settings, embedder, reranker):
    _owned_index(engine, settings.index, 768)
    s = Searcher(settings, engine=engine, embedder=embedder, reranker=reranker)
    with pytest.raises(MappingMismatchError, match="dims are 768 in the index but the configured embedder produces 384"):
        s.search("anything")


class Exploding:
    name = "exploding"

    def score(self, query, texts):
        raise RuntimeError("CUDA out of memory (simulated mid-batch failure)")


class Sleepy:
    name = "sleepy"

    def score(self, query, texts):
        import time

        time.sleep(3)
        return [0.0] * len(texts)


@pytest.mark.parametrize("bad,match", [(Exploding(), "mid-batch failure"), (Sleepy(), "took longer than 0.5s")])
def test_reranker_failures_raise_or_fall_back(settings, engine, embedder, sample_index, bad, match):
    from es_rerank.errors import RerankerError

    s = settings.replace(rerank_timeout=0.5)
    with pytest.raises(RerankerError, match=match):
        Searcher(s, engine=engine, embedder=embedder, reranker=bad).search("refund", depth=6, final_k=3)
    result = Searcher(s.replace(allow_reranker_failures=True), engine=engine, embedder=embedder, reranker=bad).search(
        "refund", depth=6, final_k=3)
    assert not result.reranked and match.split()[0] in result.rerank_error
    assert [h.retrieval_rank for h in result.hits] == [1, 2, 3]


def test_reranker_that_cannot_load(settings, engine, embedder, sample_index):
    from es_rerank.errors import RerankerError

    s = settings.replace(reranker_model="/no/such/model-folder")
    with pytest.raises(RerankerError, match="could not load cross-encoder '/no/such/model-folder'"):
        Searcher(s, engine=engine, embedder=embedder).search("refund", depth=5, final_k=2)
    result = Searcher(s.replace(allow_reranker_failures=True), engine=engine, embedder=embedder).search(
        "refund", depth=5, final_k=2)
    assert not result.reranked and "could not load" in result.rerank_error and len(result.hits) == 2
