"""The server's pure parts: request parsing (400s naming the field), the bodies sent to the
cluster (exact dicts), ``_source`` filtering, answers, micro-batching and admission.
No cluster, no model: the rerankers here are tiny deterministic scorers."""

import threading
import time

import pytest

from es_rerank.engines import ElasticsearchEngine, OpenSearchEngine

from es_rerank.config import Settings
from es_rerank.errors import ClusterError, IndexMissingError, RerankerError, ValidationError
from es_rerank.rerankers.base import BaseReranker
from es_rerank.server import is_loopback
from es_rerank.server.app import _NOT_JSON, MAX_NESTING, Admission, decoded_body, nesting, parse_json
from es_rerank.server.batching import BatchedReranker, PairBatcher
from es_rerank.server.errors import ApiError, from_exception
from es_rerank.server.metrics import Metrics
from es_rerank.server.pipeline import _fuse, caller_headers, without_credentials
from es_rerank.server.translate import (Knn, Rrf, SourceSpec, Standard, field_hits, field_text, filter_source,
                                        inference_response, is_rerank_search, leaf_body, leaves, parse_inference,
                                        parse_search, rrf_body, search_response, source_request)
from es_rerank.types import Hit

Q = {"match": {"text": "refund"}}


def body(child=None, **reranker):
    spec = {"retriever": child if child is not None else {"standard": {"query": Q}}, "field": "text",
            "inference_text": "refund", **reranker}
    return {"retriever": {"text_similarity_reranker": spec}}


def hybrid(window=20, k=20, num_candidates=100):
    return {"rrf": {"retrievers": [
        {"standard": {"query": Q}},
        {"knn": {"field": "embedding", "k": k, "num_candidates": num_candidates,
                 "query_vector_builder": {"text_embedding": {"model_text": "refund"}}}},
    ], "rank_constant": 60, "rank_window_size": window}}


# -- parsing -------------------------------------------------------------------------------------

def test_parse_hybrid_child():
    spec = parse_search({**body(hybrid(), rank_window_size=20), "size": 3})
    assert spec.window == 20 and spec.size == 3 and spec.start == 0 and spec.query == "refund"
    assert spec.inference_id is None and spec.field == "text"
    assert spec.child == Rrf((Standard(Q), Knn("embedding", 20, 100, text="refund")), 60, 20)


def test_defaults_follow_elasticsearch():
    spec = parse_search(body())
    assert (spec.window, spec.size, spec.source, spec.explain) == (10, 10, SourceSpec(), False)
    assert parse_search(body(rank_window_size=4)).size == 4  # default size never exceeds the window
    nested = parse_search(body({"rrf": {"retrievers": [{"standard": {"query": Q}}]}}, rank_window_size=30))
    assert nested.child.window == 30 and nested.child.rank_constant == 60


def test_inference_text_is_stripped_and_filters_reach_every_leaf():
    f1, f2 = {"term": {"lang": "en"}}, {"term": {"tier": "gold"}}
    b = body({"rrf": {"retrievers": [{"standard": {"query": Q}},
                                     {"knn": {"field": "v", "k": 5, "num_candidates": 10, "query_vector": [1, 0],
                                              "filter": f2}}], "filter": [f1]}})
    b["retriever"]["text_similarity_reranker"]["inference_text"] = "  refund  "
    spec = parse_search(b)
    assert spec.query == "refund"
    assert spec.child.children[0].filters == (f1,)
    assert spec.child.children[1].filters == (f1, f2) and spec.child.children[1].vector == (1.0, 0.0)


@pytest.mark.parametrize("mutate, field", [
    (lambda b: b["retriever"]["text_similarity_reranker"].pop("field"), "text_similarity_reranker.field"),
    (lambda b: b["retriever"]["text_similarity_reranker"].pop("inference_text"), "inference_text"),
    (lambda b: b["retriever"]["text_similarity_reranker"].update(retriever={"linear": {}}), "unknown retriever type"),
    (lambda b: b["retriever"]["text_similarity_reranker"].update(rank_window_size=-1), "rank_window_size"),
    (lambda b: b["retriever"]["text_similarity_reranker"].update(rank_window_size=0), "rank_window_size"),
    (lambda b: b["retriever"]["text_similarity_reranker"].update(rank_window_size=10**6), "between 1 and 1000"),
    (lambda b: b["retriever"]["text_similarity_reranker"].update(rank_window_size="5"), "must be an integer"),
    (lambda b: b.update(size=11), r"\[size\] from \+ size must be <= "),
    (lambda b: b.update({"from": 8, "size": 5}), "8 \\+ 5 = 13"),
    (lambda b: b.update(size=-1), r"\[size\] must be >= 0"),
    (lambda b: b.update(query={"match_all": {}}), r"\[query\] cannot be used"),
    (lambda b: b["retriever"]["text_similarity_reranker"].update(extra=1), "unknown field \\[extra\\]"),
    (lambda b: b["retriever"]["text_similarity_reranker"].update(inference_text=" "), "inference_text\\] must not"),
    (lambda b: b["retriever"]["text_similarity_reranker"].update(field=3), "field\\] must be a string"),
    (lambda b: b.update(_source=3), r"\[_source\] must be an object"),
])
def test_malformed_requests_are_400s_naming_the_field(mutate, field):
    b = body()
    mutate(b)
    with pytest.raises(ApiError, match=field) as info:
        parse_search(b)
    assert info.value.status == 400
    err = info.value.body()
    assert err["status"] == 400 and err["error"]["type"] in ("illegal_argument_exception", "x_content_parse_exception")
    assert err["error"]["root_cause"][0]["reason"] == err["error"]["reason"]


@pytest.mark.parametrize("knn, message", [
    ({"k": 5, "num_candidates": 10, "query_vector": [1]}, r"knn.field\] is required"),
    ({"field": "v", "num_candidates": 10, "query_vector": [1]}, r"knn.k\] is required"),
    ({"field": "v", "k": 50, "num_candidates": 10, "query_vector": [1]}, r"num_candidates\] must be between 50"),
    ({"field": "v", "k": 5, "num_candidates": 10}, "exactly one of"),
    ({"field": "v", "k": 5, "num_candidates": 10, "query_vector": [1],
      "query_vector_builder": {"text_embedding": {"model_text": "x"}}}, "exactly one of"),
    ({"field": "v", "k": 5, "num_candidates": 10, "query_vector_builder": {"text_embedding": {}}},
     r"model_text\] is required"),
    ({"field": "v", "k": 5, "num_candidates": 10, "query_vector": ["a"]}, r"query_vector\[0\]\] must be a finite"),
    ({"field": "v", "k": 5, "num_candidates": 10, "query_vector": [1], "rescore_vector": {}},
     r"unknown field \[rescore_vector\]"),
])
def test_knn_errors_name_the_field(knn, message):
    with pytest.raises(ApiError, match=message):
        parse_search(body({"knn": knn}))


def test_rrf_errors_and_nested_reranker():
    with pytest.raises(ApiError, match=r"rrf.retrievers\] must be a non-empty array"):
        parse_search(body({"rrf": {"retrievers": []}}))
    with pytest.raises(ApiError, match=r"retrievers\[1\]\] a retriever has exactly one type"):
        parse_search(body({"rrf": {"retrievers": [{"standard": {}}, {"standard": {}, "knn": {}}]}}))
    with pytest.raises(ApiError, match="cannot sit inside"):
        parse_search(body({"rrf": {"retrievers": [body()["retriever"]]}}))


def test_query_string_parameters():
    spec = parse_search(body(rank_window_size=20), {"size": "3", "from": "2", "_source_includes": "title,doc_*",
                                                   "rest_total_hits_as_int": "true", "pretty": ""})
    assert (spec.size, spec.start, spec.total_as_int, spec.pretty) == (3, 2, True, True)
    assert spec.source == SourceSpec(includes=("title", "doc_*"))
    with pytest.raises(ApiError, match=r"unrecognized parameter: \[scroll\]"):
        parse_search(body(), {"scroll": "1m"})
    with pytest.raises(ApiError, match=r"\[size\] must be an integer"):
        parse_search(body(), {"size": "three"})


def test_is_rerank_search():
    assert is_rerank_search(body())
    assert not is_rerank_search({"query": {"match_all": {}}})
    assert not is_rerank_search({"retriever": {"rrf": {}}})
    assert not is_rerank_search([1, 2])


def test_parse_json():
    assert parse_json(b'{"a": 1}', "application/vnd.elasticsearch+json; compatible-with=9") == {"a": 1}
    assert parse_json(b"", "application/json") is _NOT_JSON
    assert parse_json(b"\x00\x01", "application/smile") is _NOT_JSON
    with pytest.raises(ApiError, match="not valid JSON: Expecting value at line 1 column 1"):
        parse_json(b"not json", "application/json")
    with pytest.raises(ApiError, match=r"duplicate field \[size\]"):
        parse_json(b'{"size": 1, "size": 2}', None)


def _depth(value):
    if isinstance(value, dict):
        value = list(value.values())
    return 1 + max(map(_depth, value), default=0) if isinstance(value, list) else 0


@pytest.mark.parametrize("value", [
    0, "[{", [], {}, [[[]]], {"a": [{"b": [{}]}]},
    {"a": 'x" [[[ \\ ]]] {{', "b": ["\\", ["\\\"[", "]"]]},  # brackets and escaped quotes inside strings
    {"query": {"bool": {"must": [{"match": {"text": "a [b] {c}"}}] * 3}}},
])
def test_nesting_counts_structure_not_strings(value):
    import json

    text = json.dumps(value).encode()
    assert nesting(text) == _depth(value) == _depth(json.loads(text))


def test_deep_bodies_are_refused_before_they_are_decoded():
    """100,000 levels would overflow the decoder's stack: a 400 naming the depth instead."""
    with pytest.raises(ApiError, match=f"nested 100001 levels deep; the limit is {MAX_NESTING}") as info:
        parse_json(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json")
    assert info.value.status == 400 and info.value.type == "x_content_parse_exception"
    at_limit = b"[" * MAX_NESTING + b"]" * MAX_NESTING
    assert _depth(parse_json(at_limit, None)) == MAX_NESTING
    with pytest.raises(ApiError, match=f"nested {MAX_NESTING + 1} levels deep"):
        parse_json(b"[" + at_limit + b"]", None)


def test_decoded_body():
    import gzip
    import zlib

    raw = b'{"size": 1}'
    assert decoded_body(raw, None, 100) == raw and decoded_body(raw, "identity", 100) == raw
    assert decoded_body(gzip.compress(raw), "gzip", 100) == raw
    assert decoded_body(zlib.compress(raw), "deflate", 100) == raw
    assert decoded_body(raw, "br", 100) is None  # not ours to read: passes through
    with pytest.raises(ApiError, match="not valid gzip"):
        decoded_body(b"not gzip", "gzip", 100)
    bomb = gzip.compress(b"0" * 10_000_000)
    with pytest.raises(ApiError, match="decompresses to more than the limit of 1000 bytes") as info:
        decoded_body(bomb, "gzip", 1000)
    assert info.value.status == 413 and len(bomb) < 20_000


# -- bodies sent to the cluster -------------------------------------------------------------------

ES_ENGINE = ElasticsearchEngine(Settings())
OS_ENGINE = OpenSearchEngine(Settings())


def test_leaf_bodies_elasticsearch_and_opensearch():
    std = Standard(Q, ({"term": {"lang": "en"}},), min_score=0.5)
    assert leaf_body(std, engine=ES_ENGINE, size=20, source=["title"]) == {
        "size": 20, "query": {"bool": {"must": [Q], "filter": [{"term": {"lang": "en"}}]}}, "min_score": 0.5,
        "_source": ["title"]}
    assert leaf_body(Standard(Q), engine=ES_ENGINE, size=5) == {"size": 5, "query": Q}
    assert leaf_body(Standard(None), engine=OS_ENGINE, size=5) == {"size": 5, "query": {"match_all": {}}}
    knn = Knn("embedding", 20, 100, vector=(0.5, 1.0), filters=({"term": {"a": 1}},), similarity=0.2)
    assert leaf_body(knn, engine=ES_ENGINE, size=20) == {"size": 20, "knn": {
        "field": "embedding", "query_vector": [0.5, 1.0], "k": 20, "num_candidates": 100,
        "filter": [{"term": {"a": 1}}], "similarity": 0.2}}
    os_knn = Knn("embedding", 20, 100, vector=(0.5, 1.0), filters=({"term": {"a": 1}},))
    assert leaf_body(os_knn, engine=OS_ENGINE, size=20) == {"size": 20, "query": {"knn": {"embedding": {
        "vector": [0.5, 1.0], "k": 20, "filter": {"bool": {"filter": [{"term": {"a": 1}}]}}}}}}
    with pytest.raises(ValidationError, match="not supported on OpenSearch"):
        leaf_body(knn, engine=OS_ENGINE, size=20)
    with pytest.raises(ValueError, match="not resolved"):
        leaf_body(Knn("embedding", 5, 10, text="q"), engine=ES_ENGINE, size=5)


def test_the_hybrid_child_asks_what_searcher_asks():
    """Searcher's client-side hybrid sends bm25_body and knn_body; the same child sends the same searches."""
    from es_rerank.engines import ElasticsearchEngine
    from es_rerank.engines.base import num_candidates_for

    engine = ElasticsearchEngine(Settings())
    vector = (0.25, -0.5)
    bm25 = engine.bm25_query("refund")
    tree = Rrf((Standard(bm25), Knn("embedding", 20, num_candidates_for(20), vector=vector)), 60, 20)
    sent = [leaf_body(node, engine=ES_ENGINE, size=size, source=None) for node, size in leaves(tree, 20)]
    want = [engine.bm25_body("refund", size=20), engine.knn_body(vector, size=20)]
    for got, expected in zip(sent, want):
        expected.pop("_source")
        assert got == expected
    assert rrf_body(tree, size=20) == {k: v for k, v in engine.hybrid_body("refund", vector, depth=20).items()
                                       if k != "_source"}


def test_leaves_take_their_rrf_window():
    a, b, c = Standard({"a": {}}), Standard({"b": {}}), Standard({"c": {}})
    tree = Rrf((a, Rrf((b, c), 60, 7)), 60, 30)
    assert list(leaves(tree, 50)) == [(a, 30), (b, 7), (c, 7)]
    assert list(leaves(a, 50)) == [(a, 50)]


def test_client_side_fusion_of_a_nested_tree_equals_fuse_hits():
    from es_rerank.fusion import fuse_hits

    def hits(*ids):
        return [Hit(i, i, 0, "", "", {}, 1.0, r) for r, i in enumerate(ids, start=1)]

    x, y, z = hits("a", "b", "c"), hits("c", "d"), hits("d", "a")
    tree = Rrf((Standard(None), Rrf((Standard(None), Standard(None)), 10, 2)), 60, 3)
    fused = _fuse(tree, iter([x, y, z]))
    inner = fuse_hits([y, z], rank_constant=10, window=2)
    assert [h.chunk_id for h in fused] == [h.chunk_id for h in fuse_hits([x, inner], rank_constant=60, window=3)]


def test_source_request_adds_what_reranking_needs():
    assert source_request(SourceSpec(), ("text",)) is None
    assert source_request(SourceSpec(enabled=False), ("text",)) == ["text"]
    assert source_request(SourceSpec(includes=("title",)), ("body.text",)) == {"includes": ["body.text", "title"]}
    assert source_request(SourceSpec(excludes=("secret",)), ("text",)) is None


def test_filter_source():
    doc = {"title": "T", "text": "x", "meta": {"lang": "en", "tier": "gold", "deep": {"a": 1}},
           "items": [{"n": 1, "m": 2}, {"n": 3}]}
    assert filter_source(doc, SourceSpec()) == doc
    assert filter_source(doc, SourceSpec(enabled=False)) is None
    assert filter_source(doc, SourceSpec(includes=("title",))) == {"title": "T"}
    assert filter_source(doc, SourceSpec(includes=("meta",), excludes=("meta.tier",))) == {
        "meta": {"lang": "en", "deep": {"a": 1}}}
    assert filter_source(doc, SourceSpec(includes=("meta.de*",))) == {"meta": {"deep": {"a": 1}}}
    assert filter_source(doc, SourceSpec(includes=("items.n",))) == {"items": [{"n": 1}, {"n": 3}]}
    assert filter_source(doc, SourceSpec(excludes=("t*",))) == {"meta": doc["meta"], "items": doc["items"]}


def test_field_text():
    src = {"title": "T", "body": {"text": "hello"}, "tags": ["a", 2, {"x": 1}, True], "a.b": "literal"}
    assert field_text(src, "title") == "T"
    assert field_text(src, "body.text") == "hello"
    assert field_text(src, "tags") == "a\n2"
    assert field_text(src, "a.b") == "literal"
    assert field_text(src, "missing") == "" and field_text(None, "title") == ""
    assert field_text({"n": [{"t": "x"}, {"t": "y"}]}, "n.t") == "x\ny"


def test_field_hits_key_by_index_and_id():
    resp = {"hits": {"hits": [{"_index": "a", "_id": "1", "_score": 2.0, "_source": {"body": "one"}},
                              {"_index": "b", "_id": "1", "_score": None, "_source": {}}]}}
    hits, raw = field_hits(resp, "body")
    assert [(h.chunk_id, h.doc_id, h.text, h.retrieval_score, h.retrieval_rank) for h in hits] == [
        ("a/1", "a/1", "one", 2.0, 1), ("b/1", "b/1", "", 0.0, 2)]
    assert raw["b/1"]["_index"] == "b"


# -- answers -----------------------------------------------------------------------------------

def test_search_response_shape():
    spec = parse_search({**body(), "_source": ["title"], "explain": True})
    hit = Hit("c#0", "c", 0, "T", "x", {}, 0.03, 4, rerank_score=2.5, rerank_rank=1, final_score=2.5)
    raw = {"c#0": {"_index": "ix", "_id": "c#0", "_score": 0.03, "_source": {"title": "T", "text": "x"}}}
    out = search_response(spec, [hit], raw, took_ms=12.4, total={"value": 40, "relation": "eq"},
                          shards={"total": 1, "successful": 1, "skipped": 0, "failed": 0}, timed_out=False,
                          reranked=True, inference_id="cross-encoder", fusion="client")
    assert out["took"] == 12 and out["timed_out"] is False and out["hits"]["total"] == {"value": 40, "relation": "eq"}
    assert out["hits"]["max_score"] == 2.5
    (h,) = out["hits"]["hits"]
    assert h["_index"] == "ix" and h["_id"] == "c#0" and h["_score"] == 2.5 and h["_source"] == {"title": "T"}
    assert h["_explanation"]["details"][0] == {"value": 0.03, "description": "retrieval rank 4, retrieval score",
                                               "details": []}
    assert out["es_rerank"] == {"reranked": True, "inference_id": "cross-encoder", "fusion": "client"}
    empty = search_response(parse_search(body(), {"rest_total_hits_as_int": "true"}), [], {}, took_ms=1,
                            total={"value": 0, "relation": "eq"}, shards=None, timed_out=False, reranked=False,
                            inference_id="llm", error="boom")
    assert empty["hits"] == {"total": 0, "max_score": None, "hits": []} and empty["es_rerank"]["error"] == "boom"


def test_inference_parse_and_answer():
    req = parse_inference({"query": " q ", "input": ["a", "b", "c"], "task_settings": {"top_n": 2},
                           "return_documents": True})
    assert (req.query, req.inputs, req.return_documents, req.top_n) == ("q", ("a", "b", "c"), True, 2)
    assert inference_response(req, [0.1, 0.9, float("nan")]) == {"rerank": [
        {"index": 1, "relevance_score": 0.9, "text": "b"}, {"index": 0, "relevance_score": 0.1, "text": "a"}]}
    plain = parse_inference({"query": "q", "input": "only"})
    assert inference_response(plain, [1.0]) == {"rerank": [{"index": 0, "relevance_score": 1.0}]}
    for bad, message in [({"input": ["a"]}, r"\[query\] is required"), ({"query": "q", "input": []}, r"\[input\]"),
                         ({"query": "q", "input": [1]}, r"input\[0\]\] must be a string"),
                         ({"query": "q", "input": ["a"], "top_n": 0}, r"\[top_n\] must be >= 1"),
                         ({"query": "q", "input": ["a"], "model": "x"}, r"unknown field \[model\]")]:
        with pytest.raises(ApiError, match=message):
            parse_inference(bad)
    with pytest.raises(ApiError, match="at most 2 per request"):
        parse_inference({"query": "q", "input": ["a", "b", "c"]}, max_inputs=2)


# -- credentials, errors, hosts --------------------------------------------------------------------

def test_without_credentials():
    s = Settings(url="https://elastic:s3cr/t#x@es.example:9243", api_key=None, username="u", password="p",
                 request_timeout=60, serve_timeout=10)
    clean = without_credentials(s)
    assert clean.url == "https://es.example:9243" and clean.username is None and clean.password is None
    assert clean.api_key is None and clean.request_timeout == 10
    assert without_credentials(Settings(api_key="k")).api_key is None
    assert caller_headers({"authorization": "Basic x", "cookie": "c", "x-opaque-id": "7"}) == {
        "authorization": "Basic x", "x-opaque-id": "7"}


def test_from_exception():
    refused = ClusterError("Elasticsearch answered 401", status=401, error_type="security_exception",
                           body={"error": {"type": "security_exception"}, "status": 401})
    e = from_exception(refused)
    assert e.status == 401 and e.body() == refused.body and e.relayed
    assert from_exception(ClusterError("cannot reach")).status == 502
    assert from_exception(IndexMissingError("docs")).body()["error"]["type"] == "index_not_found_exception"
    assert from_exception(ValidationError("bad depth", field="depth")).body()["error"]["reason"] == "[depth] bad depth"
    assert from_exception(RerankerError("model broke")).status == 500
    assert from_exception(TimeoutError("late")).status == 504
    try:
        try:
            raise TimeoutError("dropped unscored")
        except TimeoutError as inner:
            raise RerankerError("reranker x failed: dropped unscored") from inner
    except RerankerError as wrapped:
        assert from_exception(wrapped).status == 504  # gave up for lack of time: a timeout, not a fault
    secret = from_exception(RuntimeError("token abc123 leaked"), secrets=("abc123",))
    assert secret.status == 500 and "abc123" not in secret.reason


def test_a_failure_no_route_answered_is_still_elasticsearch_error_json():
    """The app's last resort (Starlette's 500 handler) answers JSON, secrets masked, never plain text."""
    import asyncio
    import json

    from es_rerank.server import create_app

    app = create_app(Settings(url="http://127.0.0.1:9", username="elastic", password="s3cret"))
    handler = app.exception_handlers[Exception]
    resp = asyncio.run(handler(None, RuntimeError("lost s3cret")))
    assert resp.status_code == 500 and resp.media_type == "application/json"
    cause = {"type": "es_rerank_exception", "reason": "RuntimeError: lost ***"}
    assert json.loads(resp.body) == {"error": {"root_cause": [cause], **cause}, "status": 500}


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("no-such-host.invalid")


# -- micro-batching and admission ---------------------------------------------------------------------

class Recording(BaseReranker):
    """Scores a pair by its text's length (plus the query's, so queries differ); records each call."""

    name = "recording"

    def __init__(self, delay=0.0):
        self.calls = []
        self.delay = delay
        self.lock = threading.Lock()

    def score_pairs(self, pairs):
        with self.lock:
            self.calls.append(list(pairs))
        time.sleep(self.delay)
        return [float(len(t)) + 100.0 * len(q) for q, t in pairs]

    def score(self, query, texts):
        return self.score_pairs([(query, t) for t in texts])


def test_batcher_merges_concurrent_requests_and_returns_each_its_share():
    inner = Recording()
    with PairBatcher(inner, wait_ms=200) as batcher:
        results = {}

        def request(q, texts):
            results[q] = BatchedReranker(batcher).score(q, texts)

        threads = [threading.Thread(target=request, args=(q, [q * n for n in range(1, 4)])) for q in ("a", "bb", "ccc")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(inner.calls) == 1 and len(inner.calls[0]) == 9  # one model call for three requests
    for q, scores in results.items():
        assert scores == inner.score(q, [q * n for n in range(1, 4)])  # each got exactly its own scores


def test_a_lone_request_does_not_wait_for_company():
    inner = Recording()
    in_flight = [1]
    with PairBatcher(inner, wait_ms=2000, in_flight=lambda: in_flight[0]) as batcher:
        t0 = time.perf_counter()
        assert BatchedReranker(batcher).score("q", ["ab"]) == [102.0]
        assert time.perf_counter() - t0 < 0.5  # not the 2 s wait: nobody else is in progress
        in_flight[0] = 2  # another request is in progress: the first waits for its pairs
        results = {}
        first = threading.Thread(target=lambda: results.update(a=BatchedReranker(batcher).score("a", ["x"])))
        first.start()
        time.sleep(0.2)
        results["b"] = BatchedReranker(batcher).score("b", ["yy"])
        first.join()
    assert results == {"a": [101.0], "b": [102.0]}
    assert inner.calls[-1] == [("a", "x"), ("b", "yy")]  # one call for both


def test_batcher_respects_max_pairs_and_keeps_requests_whole():
    inner = Recording(delay=0.05)
    with PairBatcher(inner, wait_ms=0, max_pairs=4) as batcher:
        first = batcher.submit([("q", "x")])  # occupies the worker for 50 ms
        time.sleep(0.01)
        futures = [batcher.submit([("q", "y" * n)] * 3) for n in range(1, 4)]
        assert first.result(5) == [101.0]
        assert [f.result(5) for f in futures] == [[101.0] * 3, [102.0] * 3, [103.0] * 3]
    assert [len(c) for c in inner.calls] == [1, 3, 3, 3]  # 3 + 3 > 4: never split a request


def test_batcher_failure_reaches_every_waiting_request_and_it_keeps_working():
    class Flaky(Recording):
        def score_pairs(self, pairs):
            if any(t == "boom" for _, t in pairs):
                raise RuntimeError("model broke on boom")
            return super().score_pairs(pairs)

    with PairBatcher(Flaky(), wait_ms=0) as batcher:
        with pytest.raises(RuntimeError, match="model broke"):
            batcher.submit([("q", "boom")]).result(5)
        assert batcher.submit([("q", "ok")]).result(5) == [102.0]


def test_batcher_drops_pairs_whose_request_gave_up():
    inner = Recording(delay=0.1)
    with PairBatcher(inner, wait_ms=0) as batcher:
        busy = batcher.submit([("q", "a")])
        time.sleep(0.02)
        late = batcher.submit([("q", "b")], deadline=time.monotonic() + 0.01)
        with pytest.raises(TimeoutError, match="time ran out|dropped unscored"):
            late.result(5)
        busy.result(5)
    assert inner.calls == [[("q", "a")]]


def test_batches_respect_deadlines_and_hopeless_requests_are_dropped():
    class Timed(Recording):
        """0.05 s per pair, like a model on a slow CPU."""

        def score_pairs(self, pairs):
            with self.lock:
                self.calls.append(list(pairs))
            time.sleep(0.05 * len(pairs))
            return [float(len(t)) for _, t in pairs]

    inner = Timed()
    with PairBatcher(inner, wait_ms=0) as batcher:
        batcher.submit([("q", "warm")] * 2).result(5)  # measures the time per pair
        blocker = batcher.submit([("q", "b")] * 4)  # keeps the worker busy for 0.2 s while jobs queue
        time.sleep(0.02)
        deadline = time.monotonic() + 0.75
        jobs = [batcher.submit([("q", str(i))] * 4, deadline=deadline) for i in range(5)]
        blocker.result(5)
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(job.result(5))
            except TimeoutError as e:
                outcomes.append(str(e))
    # after the blocker about 0.5 s are left: two requests (8 pairs, 0.4 s) fit in one call
    assert outcomes[:2] == [[1.0] * 4, [1.0] * 4]
    assert all("dropped unscored" in o or "time ran out" in o for o in outcomes[2:]), outcomes
    assert [len(c) for c in inner.calls] == [2, 4, 8]  # nothing was computed for requests already lost


def test_batched_reranker_times_out_and_closed_batcher_refuses():
    with PairBatcher(Recording(delay=0.3), wait_ms=0) as batcher:
        with pytest.raises(TimeoutError, match="did not score in time"):
            BatchedReranker(batcher, deadline=time.monotonic() + 0.05).score("q", ["a"])
    with pytest.raises(RerankerError, match="closed"):
        batcher.submit([("q", "a")])
    assert batcher.submit([]).result(1) == []


def test_admission_bounds_and_retry_after():
    adm = Admission(2, Metrics())
    assert adm.try_acquire() and adm.try_acquire() and not adm.try_acquire()
    adm.release(3.2)
    assert adm.try_acquire() and adm.in_flight == 2 and adm.retry_after == 4
    text = adm.metrics.render()[0].decode()
    assert "es_rerank_queue_depth 2.0" in text and "es_rerank_queue_capacity 2.0" in text


def test_serve_command_resolves_settings_and_marks_a_public_bind(monkeypatch):
    """The CLI hands Settings (options over environment) to the server; the server loop itself is not run."""
    from click.testing import CliRunner

    import es_rerank.server as server_module
    from es_rerank.cli import cli

    seen = {}
    monkeypatch.setattr(server_module, "serve", lambda settings, **kw: seen.update(settings=settings, **kw))
    env = {"ES_URL": "http://elastic:pw@127.0.0.1:9", "ES_RERANK_SERVE_QUEUE": "5", "ES_RERANK_SERVE_TIMEOUT": "7"}
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "9333", "--queue", "3",
                                      "--batch-wait-ms", "0", "--no-warm-up"], env=env)
    assert result.exit_code == 0, result.output
    s = seen["settings"]
    assert (s.serve_host, s.serve_port, s.serve_queue, s.serve_timeout, s.serve_batch_wait_ms) == \
        ("0.0.0.0", 9333, 3, 7.0, 0.0)
    assert seen["warm_up"] is False
    assert "[NOT loopback]" in result.output and "pw" not in result.output
    help_text = CliRunner().invoke(cli, ["serve", "--help"]).output
    for option in ("--host", "--port", "--queue", "--timeout", "--max-body", "--batch-wait-ms", "--reranker"):
        assert option in help_text
