"""Request builders: exact bodies, and query text that cannot change a request's structure."""

import json

import pytest

from es_rerank import queries
from es_rerank.errors import ValidationError

SRC = ["doc_id", "chunk", "title", "text", "metadata"]


def test_bm25_body_exact():
    assert queries.bm25_body("close account", size=10) == {
        "size": 10,
        "query": {"bool": {"must": [{"multi_match": {"query": "close account", "fields": ["text", "title"]}}]}},
        "_source": SRC,
    }


def test_bm25_body_with_filters_exact():
    body = queries.bm25_body("q", size=3, filters={"category": "billing"})
    assert body["query"] == {"bool": {
        "must": [{"multi_match": {"query": "q", "fields": ["text", "title"]}}],
        "filter": [{"term": {"metadata.category": "billing"}}],
    }}


def test_knn_body_exact():
    assert queries.knn_body([0.5, 1], size=20, filters={"lang": ["en", "de"]}) == {
        "size": 20,
        "knn": {"field": "embedding", "query_vector": [0.5, 1.0], "k": 20, "num_candidates": 100,
                "filter": [{"terms": {"metadata.lang": ["en", "de"]}}]},
        "_source": SRC,
    }


def test_rrf_body_exact():
    assert queries.rrf_body("q", [1.0], depth=50, rank_constant=60, filters={"doc_id": "a"}) == {
        "size": 50,
        "retriever": {"rrf": {
            "retrievers": [
                {"standard": {"query": {"bool": {
                    "must": [{"multi_match": {"query": "q", "fields": ["text", "title"]}}],
                    "filter": [{"term": {"doc_id": "a"}}]}}}},
                {"knn": {"field": "embedding", "query_vector": [1.0], "k": 50, "num_candidates": 100,
                         "filter": [{"term": {"doc_id": "a"}}]}},
            ],
            "rank_constant": 60,
            "rank_window_size": 50,
        }},
        "_source": SRC,
    }


@pytest.mark.parametrize("k,expected", [(1, 100), (50, 100), (80, 160), (9000, 10000)])
def test_num_candidates(k, expected):
    assert queries.num_candidates_for(k) == expected


def test_filter_clauses_kinds():
    assert queries.filter_clauses({"year": {"gte": 2020}, "metadata.lang": "en", "title": "x"}) == [
        {"range": {"metadata.year": {"gte": 2020}}},
        {"term": {"metadata.lang": "en"}},
        {"term": {"title": "x"}},
    ]
    assert queries.filter_clauses(None) == []


@pytest.mark.parametrize("bad,match", [
    ({"a": []}, "empty list"),
    ({"a": {"from": 1}}, "gt/gte/lt/lte"),
    ({"a": object()}, "unsupported value"),
])
def test_filter_clauses_reject(bad, match):
    with pytest.raises(ValidationError, match=match):
        queries.filter_clauses(bad)


def test_msearch_pairs():
    assert queries.msearch_searches("idx", [{"size": 1}, {"size": 2}]) == [
        {"index": "idx"}, {"size": 1}, {"index": "idx"}, {"size": 2}]


@pytest.mark.parametrize("nasty", [
    'title:foo AND text:"bar" OR *',
    '{"query": {"match_all": {}}}',
    '"}, "script": {"source": "ctx._source.x = 1"}, "a": {"',
    "\\u0000 <script>alert(1)</script> ${jndi:ldap://x}",
])
def test_query_text_stays_a_value(nasty):
    """Whatever the text holds, the body's shape is the same and the text is one value."""
    body = queries.rrf_body(nasty, [1.0], depth=5)
    plain = queries.rrf_body("plain", [1.0], depth=5)
    assert json.dumps(body).replace(json.dumps(nasty), '"plain"') == json.dumps(plain)


@pytest.mark.parametrize("q", ["", "   ", "\n\t"])
def test_validate_query_rejects_blank(q):
    with pytest.raises(ValidationError, match="query is empty"):
        queries.validate_query(q)


def test_validate_query_rejects_non_string():
    with pytest.raises(ValidationError, match="must be a string"):
        queries.validate_query(None)
