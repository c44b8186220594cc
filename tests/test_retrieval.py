"""The retrieval plan's pure parts: the plans of a text query, the fusion decision, the fused
bodies of both engines (exact dicts). No cluster: capabilities are given, not detected."""

import pytest

from es_rerank.config import Settings
from es_rerank.engines import ElasticsearchEngine, OpenSearchEngine
from es_rerank.errors import ConfigError, ValidationError
from es_rerank.retrieval import Plan, choose_fusion, resolve, source_fields, text_plan
from es_rerank.types import Knn, Rrf, Standard

MATCH = {"multi_match": {"query": "q", "fields": ["text", "title"]}}


class Vectors:
    """An embedder that counts its calls (each distinct text once)."""

    def __init__(self):
        self.calls = []

    def embed_query(self, text):
        self.calls.append(text)
        return [float(len(text)), 0.5]


def engines(server_fusion):
    out = []
    for cls in (ElasticsearchEngine, OpenSearchEngine):
        engine = cls(Settings())
        engine._server_fusion = server_fusion  # what detection would have found
        out.append(engine)
    return out


@pytest.mark.parametrize("engine", engines(True), ids=["elasticsearch", "opensearch"])
def test_text_plans_send_what_the_engine_builders_send(engine):
    """Searcher's plans resolve to exactly bm25_body, knn_body and hybrid_body (one construction)."""
    vectors = Vectors()
    source = ["doc_id", "chunk", "title", "text", "metadata"]
    bm25 = text_plan("q", index="i", mode="bm25", depth=7, source=source)
    assert engine.leaf_body(bm25.root, size=7, source=source) == engine.bm25_body("q", size=7)
    knn = resolve(text_plan("q", index="i", mode="knn", depth=7, source=source), vectors)
    assert engine.leaf_body(knn.root, size=7, source=source) == engine.knn_body([1.0, 0.5], size=7)
    hybrid = resolve(text_plan("q", index="i", mode="hybrid", depth=9, rank_constant=20, source=source), vectors)
    assert engine.fused_body(hybrid.root, size=9, source=source) == engine.hybrid_body("q", [1.0, 0.5], depth=9,
                                                                                        rank_constant=20)
    assert vectors.calls == ["q", "q"]  # one per plan: the knn text, embedded once each
    with pytest.raises(ValidationError, match="mode must be one of hybrid, bm25, knn, got 'fuzzy'"):
        text_plan("q", index="i", mode="fuzzy", depth=5)


def test_each_distinct_text_is_embedded_once():
    vectors = Vectors()
    tree = Rrf((Knn("embedding", 5, text="a"), Rrf((Knn("embedding", 5, text="a"), Knn("other", 5, text="bb")))))
    resolved = resolve(Plan(tree, "i"), vectors).root
    assert vectors.calls == ["a", "bb"]
    assert resolved.children[0].vector == (1.0, 0.5) and resolved.children[1].children[1].vector == (2.0, 0.5)
    with pytest.raises(ValidationError, match="knn on 'embedding' has neither a vector nor a text"):
        resolve(Plan(Knn("embedding", 5), "i"), vectors)


def test_the_fusion_decision():
    flat = Rrf((Standard(MATCH), Knn("embedding", 5, vector=(1.0,))), 60, 5)
    nested = Rrf((Standard(MATCH), Rrf((Standard(MATCH), Standard(None)), 60, 3)), 60, 5)
    es_on, os_on = engines(True)
    es_off, os_off = engines(False)
    assert choose_fusion(es_on, Plan(Standard(MATCH), "i", fusion="server")) is None  # nothing to fuse
    for engine in (es_on, os_on):
        assert choose_fusion(engine, Plan(flat, "i")) == "server"
        assert choose_fusion(engine, Plan(flat, "i", fusion="client")) == "client"
    for engine in (es_off, os_off):
        assert choose_fusion(engine, Plan(flat, "i")) == "client"
        with pytest.raises(ConfigError, match=engine.server_fusion_hint[:40]):
            choose_fusion(engine, Plan(flat, "i", fusion="server"))
    assert choose_fusion(es_on, Plan(nested, "i")) == "server"  # the rrf retriever nests
    assert choose_fusion(os_on, Plan(nested, "i")) == "client"  # the hybrid query does not
    with pytest.raises(ConfigError, match="OpenSearch cannot fuse this retriever tree on the server"):
        choose_fusion(os_on, Plan(nested, "i", fusion="server"))
    with pytest.raises(ConfigError, match="fusion must be one of auto, server, client, got 'python'"):
        Plan(flat, "i", fusion="python")


def test_fused_bodies_of_a_parsed_tree():
    knn = Knn("vec", 4, 50, vector=(1.0, 2.0), filters=({"term": {"a": 1}},))
    std = Standard(MATCH, ({"term": {"b": 2}},))
    tree = Rrf((std, knn), 30, 12)
    es, os_ = engines(True)
    assert es.fused_body(tree, size=12, source={"includes": ["text"]}) == {
        "size": 12,
        "retriever": {"rrf": {"retrievers": [
            {"standard": {"query": {"bool": {"must": [MATCH], "filter": [{"term": {"b": 2}}]}}}},
            {"knn": {"field": "vec", "query_vector": [1.0, 2.0], "k": 4, "num_candidates": 50,
                     "filter": [{"term": {"a": 1}}]}}],
            "rank_constant": 30, "rank_window_size": 12}},
        "_source": {"includes": ["text"]},
    }
    assert os_.fused_body(tree, size=12) == {
        "size": 12,
        "query": {"hybrid": {"queries": [
            {"bool": {"must": [MATCH], "filter": [{"term": {"b": 2}}]}},
            {"knn": {"vec": {"vector": [1.0, 2.0], "k": 4, "filter": {"bool": {"filter": [{"term": {"a": 1}}]}}}}}],
            "pagination_depth": 12}},
        "search_pipeline": {"phase_results_processors": [
            {"score-ranker-processor": {"combination": {"technique": "rrf", "rank_constant": 30}}}]},
    }
    with pytest.raises(ValidationError, match="OpenSearch's hybrid query takes 1 to 5 standard or knn"):
        os_.fused_body(Rrf((Standard(MATCH, min_score=1.0),)), size=5)


def test_source_fields_is_one_spelling():
    assert source_fields(("text", "doc_id"), ("title", "text")) == {"includes": ["doc_id", "text", "title"]}
