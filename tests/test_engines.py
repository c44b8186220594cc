"""Engine request builders and mappings: exact bodies for both engines, names validated,
query text that cannot change a request's structure. Pure: no cluster."""

import json

import pytest

from es_rerank.config import Settings
from es_rerank.engines import ElasticsearchEngine, Engine, OpenSearchEngine, validate_index_name
from es_rerank.engines.base import num_candidates_for
from es_rerank.errors import ConfigError, MappingMismatchError, ValidationError

SRC = ["doc_id", "chunk", "title", "text", "metadata"]
ES = ElasticsearchEngine(Settings())
OS = OpenSearchEngine(Settings())
MATCH = {"multi_match": {"query": "q", "fields": ["text", "title"]}}


def test_no_client_is_made_for_pure_builders():
    assert ES._client is None and OS._client is None


def test_bm25_body_exact_on_both_engines():
    for engine in (ES, OS):
        assert engine.bm25_body("close account", size=10) == {
            "size": 10,
            "query": {"bool": {"must": [{"multi_match": {"query": "close account", "fields": ["text", "title"]}}]}},
            "_source": SRC,
        }


def test_bm25_body_with_filters_exact():
    body = ES.bm25_body("q", size=3, clauses=Engine.filter_clauses({"category": "billing"}))
    assert body["query"] == {"bool": {"must": [MATCH], "filter": [{"term": {"metadata.category": "billing"}}]}}


def test_knn_body_exact_elasticsearch():
    clauses = Engine.filter_clauses({"lang": ["en", "de"]})
    assert ES.knn_body([0.5, 1], size=20, clauses=clauses) == {
        "size": 20,
        "knn": {"field": "embedding", "query_vector": [0.5, 1.0], "k": 20, "num_candidates": 100,
                "filter": [{"terms": {"metadata.lang": ["en", "de"]}}]},
        "_source": SRC,
    }


def test_knn_body_exact_opensearch():
    clauses = Engine.filter_clauses({"lang": ["en", "de"]})
    assert OS.knn_body([0.5, 1], size=20, clauses=clauses) == {
        "size": 20,
        "query": {"knn": {"embedding": {"vector": [0.5, 1.0], "k": 20,
                                        "filter": {"bool": {"filter": [{"terms": {"metadata.lang": ["en", "de"]}}]}}}}},
        "_source": SRC,
    }


def test_rrf_retriever_exact_elasticsearch():
    clauses = Engine.filter_clauses({"doc_id": "a"})
    assert ES.hybrid_body("q", [1.0], depth=50, rank_constant=60, clauses=clauses) == {
        "size": 50,
        "retriever": {"rrf": {
            "retrievers": [
                {"standard": {"query": {"bool": {"must": [MATCH], "filter": [{"term": {"doc_id": "a"}}]}}}},
                {"knn": {"field": "embedding", "query_vector": [1.0], "k": 50, "num_candidates": 100,
                         "filter": [{"term": {"doc_id": "a"}}]}},
            ],
            "rank_constant": 60,
            "rank_window_size": 50,
        }},
        "_source": SRC,
    }


def test_hybrid_query_exact_opensearch():
    assert OS.hybrid_body("q", [1.0], depth=30, rank_constant=20) == {
        "size": 30,
        "query": {"hybrid": {"queries": [{"bool": {"must": [MATCH]}},
                                         {"knn": {"embedding": {"vector": [1.0], "k": 30}}}],
                             "pagination_depth": 30}},
        "search_pipeline": {"phase_results_processors": [
            {"score-ranker-processor": {"combination": {"technique": "rrf", "rank_constant": 20}}}]},
        "_source": SRC,
    }


@pytest.mark.parametrize("k,expected", [(1, 100), (50, 100), (80, 160), (9000, 10000)])
def test_num_candidates(k, expected):
    assert num_candidates_for(k) == expected


def test_filter_clauses_kinds():
    assert Engine.filter_clauses({"year": {"gte": 2020}, "metadata.lang": "en", "title": "x"}) == [
        {"range": {"metadata.year": {"gte": 2020}}},
        {"term": {"metadata.lang": "en"}},
        {"term": {"title.keyword": "x"}},
    ]
    assert Engine.filter_clauses(None) == []


@pytest.mark.parametrize("bad,match", [
    ({"a": []}, "empty list"),
    ({"a": {"from": 1}}, "gt/gte/lt/lte"),
    ({"a": object()}, "unsupported value"),
])
def test_filter_clauses_reject(bad, match):
    with pytest.raises(ValidationError, match=match):
        Engine.filter_clauses(bad)


def test_filters_checked_against_the_index_fields():
    fields = Engine.field_info(ES.index_body(4)["mappings"] | {"properties": {
        **ES.index_body(4)["mappings"]["properties"],
        "metadata": {"properties": {"category": {"type": "keyword"}, "year": {"type": "long"}}}}})
    assert Engine.filter_clauses({"title": "Refund for a double charge", "year": {"gte": 2020}}, fields) == [
        {"term": {"title.keyword": "Refund for a double charge"}}, {"range": {"metadata.year": {"gte": 2020}}}]
    with pytest.raises(ValidationError, match=r"unknown filter field 'categry'; the index has: .*category"):
        Engine.filter_clauses({"categry": "billing"}, fields)
    with pytest.raises(ValidationError, match="a range needs a numeric or date field; 'category' is keyword"):
        Engine.filter_clauses({"category": {"gte": "a"}}, fields)
    old = Engine.field_info({"properties": {"title": {"type": "text"}}})
    with pytest.raises(ValidationError, match="without an exact-match title field"):
        Engine.filter_clauses({"title": "x"}, old)


@pytest.mark.parametrize("nasty", [
    'title:foo AND text:"bar" OR *',
    '{"query": {"match_all": {}}}',
    '"}, "script": {"source": "ctx._source.x = 1"}, "a": {"',
    "\\u0000 <script>alert(1)</script> ${jndi:ldap://x}",
])
@pytest.mark.parametrize("engine", [ES, OS], ids=["elasticsearch", "opensearch"])
def test_query_text_stays_a_value(nasty, engine):
    """Whatever the text holds, the body's shape is the same and the text is one value."""
    body = engine.hybrid_body(nasty, [1.0], depth=5)
    plain = engine.hybrid_body("plain", [1.0], depth=5)
    assert json.dumps(body).replace(json.dumps(nasty), '"plain"') == json.dumps(plain)


# -- mappings -----------------------------------------------------------------------------------

def test_elasticsearch_mapping_fills_placeholders():
    body = ES.index_body(384, analyzer="english", hnsw_m=24, hnsw_ef_construction=128)
    vec = body["mappings"]["properties"]["embedding"]
    assert vec == {"type": "dense_vector", "dims": 384, "index": True, "similarity": "cosine",
                   "index_options": {"type": "hnsw", "m": 24, "ef_construction": 128}}
    assert body["mappings"]["properties"]["text"] == {"type": "text", "analyzer": "english"}
    assert body["mappings"]["properties"]["title"]["fields"] == {"keyword": {"type": "keyword", "ignore_above": 1024}}
    assert body["settings"]["index"]["auto_expand_replicas"] == "0-1"
    assert "{{" not in repr(body)


def test_opensearch_mapping_never_uses_faiss():
    """A knn_vector without an explicit Lucene engine defaults to faiss, which kills a node
    whose k-NN plugin has no native libraries (the Maven zip): the engine is always lucene."""
    body = OS.index_body(384, hnsw_m=16, hnsw_ef_construction=100)
    vec = body["mappings"]["properties"]["embedding"]
    assert vec == {"type": "knn_vector", "dimension": 384,
                   "method": {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil",
                              "parameters": {"m": 16, "ef_construction": 100}}}
    assert body["settings"]["index"]["knn"] is True


@pytest.mark.parametrize("kwargs,match", [({"dims": 0}, "dims must be >= 1"), ({"dims": 3, "hnsw_m": 1}, "HNSW m")])
def test_mapping_rejects(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ES.index_body(**kwargs)


@pytest.mark.parametrize("engine", [ES, OS], ids=["elasticsearch", "opensearch"])
def test_check_accepts_own_mapping_and_names_dims_mismatch(engine):
    engine.check_mapping("i", engine.index_body(384)["mappings"], dims=384)
    with pytest.raises(MappingMismatchError, match=r"embedding dims are 768 in the index but the configured "
                                                   r"embedder produces 384") as err:
        engine.check_mapping("i", engine.index_body(768)["mappings"], dims=384)
    assert err.value.index == "i" and len(err.value.problems) == 1


def test_check_names_missing_and_wrong_fields():
    with pytest.raises(MappingMismatchError) as err:
        ES.check_mapping("docs", {"properties": {"text": {"type": "keyword"}}}, dims=384)
    msg = str(err.value)
    assert "index 'docs'" in msg and "field 'text' is keyword, expected text" in msg
    assert "field 'embedding' is missing" in msg


# -- names ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["docs", "help-centre", "eval-scifact-0123abcd", "a.b_c+d"])
def test_valid_index_names(name):
    assert validate_index_name(name) == name


@pytest.mark.parametrize("name,why", [
    ("a,b", "contains ','"), ("prod*", "contains '\\*'"), ("_all", "every index"), ("-x", "may not start"),
    (".security", "may not start"), ("Docs", "contains 'D'"), ("a b", "contains ' '"), ("", "empty"),
    ("x" * 256, "longer than 255 bytes"), ("a:b", "contains ':'"), ("_", "every index|may not start"),
])
def test_invalid_index_names_are_refused(name, why):
    with pytest.raises(ValidationError, match=why):
        validate_index_name(name)


# -- choosing the engine ---------------------------------------------------------------------------

def test_an_existing_client_picks_its_engine_without_asking_the_cluster():
    """A caller's client names the engine (no GET / is sent: the URL below has nothing listening)."""
    from elasticsearch import Elasticsearch
    from opensearchpy import OpenSearch

    from es_rerank.engines import open_engine

    settings = Settings(url="http://127.0.0.1:9")
    os_client, es_client = OpenSearch("http://127.0.0.1:9"), Elasticsearch("http://127.0.0.1:9")
    try:
        assert type(open_engine(settings, client=os_client)) is OpenSearchEngine
        assert type(open_engine(settings, client=es_client)) is ElasticsearchEngine
        assert open_engine(settings, client=os_client).client is os_client
    finally:
        os_client.close()
        es_client.close()


@pytest.mark.parametrize("name,cls", [("elasticsearch", ElasticsearchEngine), ("opensearch", OpenSearchEngine)])
def test_a_named_engine_is_used_as_named(name, cls):
    from es_rerank.engines import open_engine

    engine = open_engine(Settings(url="http://127.0.0.1:9", engine=name))
    assert type(engine) is cls and engine._client is None  # nothing was sent


def test_unknown_engine_is_refused():
    from es_rerank.engines import engine_class

    with pytest.raises(ConfigError, match="engine must be one of elasticsearch, opensearch, got 'solr'"):
        engine_class("solr")


@pytest.mark.parametrize("error,expected", [
    # OpenSearch 3.5.0, an empty metadata field name (as the node answered it)
    ({"type": "mapper_parsing_exception", "reason": "failed to parse",
      "caused_by": {"type": "illegal_argument_exception", "reason": "field name cannot be an empty string"}},
     "failed to parse: field name cannot be an empty string"),
    # Elasticsearch 9.2.8, the same document: the cause is already in the reason
    ({"type": "document_parsing_exception", "reason": "[1:14] failed to parse: field name cannot be an empty string",
      "caused_by": {"type": "illegal_argument_exception", "reason": "field name cannot be an empty string"}},
     "[1:14] failed to parse: field name cannot be an empty string"),
    ({"type": "es_rejected_execution_exception", "reason": "rejected execution of TimedRunnable"},
     "rejected execution of TimedRunnable"),
    ({"type": "version_conflict_engine_exception"}, "version_conflict_engine_exception"),
    ("a plain string", "a plain string"),
])
def test_item_error_keeps_the_cause(error, expected):
    assert Engine.item_error(error) == expected
