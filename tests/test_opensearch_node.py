"""What OpenSearch support promises, checked on real nodes (on Elasticsearch too where the
promise is the same): the mapping as the node stores it (a Lucene HNSW ``knn_vector``, never
faiss), English analysis of BM25 fields, kNN under filters, client-side hybrid in one
``_msearch`` round trip, server-side fusion detected once.

The neural-search plugin (``hybrid`` query, score-ranker pipeline) is not on Maven Central, so
no local node has it: its request body is tested by exact equality in test_engines.py, and here
only that a node without it refuses that body and that es-rerank never sends it there.
"""

import json

import pytest

from es_rerank.client import Searcher
from es_rerank.errors import ClusterError

pytestmark = [pytest.mark.es, pytest.mark.both_engines]

DOCS = [
    {"id": "refund", "title": "Refund for a double charge", "text": "We refunded the second payment within days.",
     "category": "billing", "year": 2019},
    {"id": "invoice", "title": "Invoices", "text": "Download invoices from the billing page.",
     "category": "billing", "year": 2022},
    {"id": "plans", "title": "Plans and prices", "text": "Switch plans at any time; the price changes next month.",
     "category": "billing", "year": 2024},
    {"id": "password", "title": "Reset your password", "text": "Use the reset link we e-mail you.",
     "category": "account", "year": 2021},
    {"id": "close", "title": "Close your account", "text": "Closing an account deletes its data after 30 days.",
     "category": "account", "year": 2023},
]


@pytest.fixture
def small_index(make_index, index_name, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    report = make_index(index_name, path)
    assert report.documents_indexed == len(DOCS) == report.chunks_indexed
    return report


@pytest.fixture
def small_searcher(settings, engine, embedder, reranker, small_index):
    return Searcher(settings, engine=engine, embedder=embedder, reranker=reranker)


@pytest.fixture
def sent(engine, monkeypatch):
    """The (method, path) of every request the engine's client sends from now on (they still go out)."""
    seen: list[tuple[str, str]] = []
    transport = engine.client.transport
    original = transport.perform_request

    def record(method, path, *args, **kwargs):
        seen.append((method, path.split("?")[0]))
        return original(method, path, *args, **kwargs)

    monkeypatch.setattr(transport, "perform_request", record)
    return seen


def test_mapping_as_the_node_stores_it(engine, node, small_index):
    """The vector field is exactly what the mapping file says, with the method set explicitly
    (a knn_vector without one defaults to faiss, whose native library the Maven k-NN zip lacks);
    title and text use the English analyzer, which both local nodes have."""
    props = engine.get_mapping(small_index.concrete)[small_index.concrete]["properties"]
    if engine.name == "opensearch":
        assert props["embedding"] == {"type": "knn_vector", "dimension": 384, "method": {
            "name": "hnsw", "engine": "lucene", "space_type": "cosinesimil",
            "parameters": {"m": 16, "ef_construction": 100}}}
        assert node.index_settings(small_index.concrete)["knn"] == "true"
    else:
        assert props["embedding"] == {"type": "dense_vector", "dims": 384, "index": True, "similarity": "cosine",
                                      "index_options": {"type": "hnsw", "m": 16, "ef_construction": 100}}
    # OpenSearch's distribution has analysis-common; Elasticsearch's local node gets es-rerank's
    # English plugin (a node started before it, or another cluster, may lack it: standard then)
    english = engine.has_analyzer("english")
    assert english or engine.name == "elasticsearch"
    analyzer = "english" if english else "standard"
    assert props["text"]["analyzer"] == props["title"]["analyzer"] == analyzer
    assert node.meta(small_index.concrete)["es_rerank"]["analyzer"] == analyzer


def test_bm25_stems_english_where_the_engine_can(small_searcher, engine):
    """"refunds" finds "refunded" only through an English stemmer; the standard analyzer keeps both
    words apart and finds nothing."""
    result = small_searcher.search("refunds", depth=5, final_k=5, mode="bm25", rerank=False)
    assert [h.doc_id for h in result.hits] == (["refund"] if engine.has_analyzer("english") else [])


@pytest.mark.parametrize("filters,expected", [
    ({"category": "billing"}, {"refund", "invoice", "plans"}),
    ({"year": {"gte": 2021, "lt": 2024}}, {"invoice", "password", "close"}),
    ({"title": "Reset your password"}, {"password"}),
    ({"category": ["account"], "year": {"gt": 2021}}, {"close"}),
])
@pytest.mark.parametrize("mode", ["knn", "bm25", "hybrid"])
def test_filters_apply_inside_each_retriever(small_searcher, mode, filters, expected):
    """Filters restrict the search itself (kNN filters during the HNSW search, not after it): every
    matching document comes back even when depth is small, and nothing else does."""
    query = "anything about my account or payment" if mode != "bm25" else "the your a of account payment price"
    result = small_searcher.search(query, depth=len(expected), final_k=len(expected), mode=mode, filters=filters,
                                   rerank=False)
    got = {h.doc_id for h in result.hits}
    if mode == "bm25":  # BM25 returns only documents sharing a term with the query
        assert got <= expected and got
    else:
        assert got == expected


def test_client_hybrid_is_one_msearch_round_trip(small_searcher, engine, sent, embedder, settings):
    """Client-side fusion asks for BM25 and kNN in one _msearch and fuses them with RRF; server
    fusion is detected once (here: unavailable) and never asked again."""
    small_searcher.retrieve("refund my payment", depth=5, fusion="auto")  # detection, mapping, window
    sent.clear()
    for fusion in ("auto", "client"):
        result = small_searcher.retrieve("refund my payment", depth=5, fusion=fusion)
        assert result.fusion == ("server" if engine.server_fusion() else "client")
    if not engine.server_fusion():
        assert sent == [("POST", "/_msearch"), ("POST", "/_msearch")]
    bm25 = engine.search(settings.index, engine.bm25_body("refund my payment", size=5))["hits"]["hits"]
    knn = engine.search(settings.index, engine.knn_body(embedder.embed_query("refund my payment"), size=5))
    by_hand: dict[str, float] = {}
    for hits in (bm25, knn["hits"]["hits"]):
        for rank, h in enumerate(hits, start=1):
            by_hand[h["_id"]] = by_hand.get(h["_id"], 0.0) + 1.0 / (settings.rank_constant + rank)
    top = sorted(by_hand.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    fused = small_searcher.retrieve("refund my payment", depth=5, fusion="client").hits
    assert [(h.chunk_id, h.retrieval_score) for h in fused] == [(c, pytest.approx(s)) for c, s in top]


def test_server_fusion_body_is_refused_where_unsupported(engine, small_index, embedder):
    """Without the server's fusion (rank-rrf and a license on Elasticsearch, neural-search on
    OpenSearch) the node refuses es-rerank's server-side body; es-rerank detects that before
    sending it. Where a node has it, the same body answers."""
    body = engine.hybrid_body("refund", embedder.embed_query("refund"), depth=5)
    if engine.server_fusion():
        assert engine.hits(engine.search(small_index.index, body))
        return
    with pytest.raises(ClusterError) as err:
        engine.search(small_index.index, body)
    assert err.value.status == 400
    assert ("hybrid" if engine.name == "opensearch" else "rrf") in str(err.value)


def test_detected_engine_and_version(engine, engine_name):
    from es_rerank._versions import ES_VERSION, OPENSEARCH_VERSION

    info = engine.info()
    assert info["engine"] == engine_name
    assert info["version"] == {"elasticsearch": ES_VERSION, "opensearch": OPENSEARCH_VERSION}[engine_name]
