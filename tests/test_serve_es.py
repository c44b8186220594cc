"""es-rerank serve against the real local cluster, driven by the official clients, unmodified.

The server runs in a thread (uvicorn, the real ASGI stack) in front of the cluster at
ES_URL. Indexing goes through its passthrough; reranked searches are compared with
:meth:`es_rerank.Searcher.search` talking to the cluster directly.
"""

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from elasticsearch import ApiError as EsApiError
from elasticsearch import Elasticsearch

from es_rerank.client import Searcher
from es_rerank.config import Settings
from es_rerank.rerankers.base import BaseReranker
from es_rerank.server import ServerThread, create_app

from conftest import BACKEND, SAMPLE, drop
from serve_requests import CHUNK_OVERLAP, CHUNK_TOKENS, hybrid_retriever, sample_chunks

pytestmark = pytest.mark.es

QUERIES = ["what happens to my data if I close my account", "refund for a double charge", "reset my password"]
MAX_BODY = 200_000


def server_settings(es_url, embedding_model_path, cross_encoder_path, **changes):
    return Settings(url=es_url, embedding_model=embedding_model_path, reranker_model=cross_encoder_path,
                    device="cpu", reranker_backend=BACKEND, embedding_backend=BACKEND, serve_max_body=MAX_BODY,
                    **changes)


@pytest.fixture(scope="module")
def server(es_url, embedding_model_path, cross_encoder_path, embedder, reranker):
    """One server for the module, sharing the session's embedder and cross-encoder."""
    settings = server_settings(es_url, embedding_model_path, cross_encoder_path)
    app = create_app(settings, embedder=embedder, rerankers={"cross-encoder": reranker})
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def es_via(server):
    """The official client, pointed at es-rerank instead of the cluster."""
    with Elasticsearch(server.url, request_timeout=60, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def served_index(es_via, engine, embedder):
    """An es-rerank index created and bulk-loaded with the official client through the passthrough.

    Chunks (several per document, so collapsing matters), embeddings and the ``_meta`` marker
    are what ``es-rerank index`` writes; the requests are the client's own.
    """
    from elasticsearch import helpers

    from es_rerank.lifecycle import marker

    name = f"test-serve-{uuid.uuid4().hex[:10]}"
    body = engine.index_body(embedder.dimensions)
    body["mappings"]["_meta"] = marker(alias=name, state="ready", engine="elasticsearch",
                                       embedder=embedder.model_name, embedding_backend=embedder.backend,
                                       dims=embedder.dimensions, chunk_tokens=CHUNK_TOKENS,
                                       chunk_overlap=CHUNK_OVERLAP, analyzer="standard")
    es_via.indices.create(index=name, **body)
    actions, n_docs = sample_chunks(embedder, name)
    ok, errors = helpers.bulk(es_via, actions, chunk_size=50, refresh=True)
    assert ok == len(actions) > n_docs and not errors  # several chunks per document: collapse matters
    yield name, len(actions)
    drop(engine, name)


def searcher_for(index, es_url, embedding_model_path, cross_encoder_path, engine, embedder, reranker):
    s = server_settings(es_url, embedding_model_path, cross_encoder_path, index=index)
    return Searcher(s, engine=engine, embedder=embedder, reranker=reranker)


# -- the drop-in ------------------------------------------------------------------------------------------

def test_official_client_reranked_search_equals_searcher(es_via, served_index, es_url, embedding_model_path,
                                                         cross_encoder_path, engine, embedder, reranker):
    index, _ = served_index
    searcher = searcher_for(index, es_url, embedding_model_path, cross_encoder_path, engine, embedder, reranker)
    for query in QUERIES:
        resp = es_via.search(index=index, retriever=hybrid_retriever(query, 20), size=3)
        hits = resp["hits"]["hits"]
        assert len(hits) == 3
        scores = [h["_score"] for h in hits]
        assert scores == sorted(scores, reverse=True) and resp["hits"]["max_score"] == scores[0]
        expected = searcher.search(query, depth=20, final_k=3)
        assert expected.fusion == "client" and expected.reranked
        assert [h["_id"] for h in hits] == [h.chunk_id for h in expected.hits]
        assert scores == pytest.approx([h.rerank_score for h in expected.hits], rel=1e-6)
        assert {h["_index"] for h in hits} == {index}
        assert all(h["_source"]["doc_id"] == e.doc_id for h, e in zip(hits, expected.hits))
        assert resp["es_rerank"] == {"reranked": True, "inference_id": "cross-encoder", "fusion": "client"}
        assert resp["hits"]["total"]["relation"] == "gte" and resp["timed_out"] is False


def test_compressed_requests(server, served_index, es):
    """Clients with http_compress gzip their bodies: reranked and passed-through searches both work."""
    index, chunks = served_index
    with Elasticsearch(server.url, http_compress=True, request_timeout=60, max_retries=0) as client:
        resp = client.search(index=index, retriever=hybrid_retriever(QUERIES[2], 10), size=2)
        assert resp["es_rerank"]["reranked"] and len(resp["hits"]["hits"]) == 2
        plain = client.search(index=index, query={"match_all": {}}, size=1)
        assert plain["hits"]["total"]["value"] == chunks and "es_rerank" not in plain


def test_paging_source_explain_and_min_score(es_via, served_index, es_url, embedding_model_path, cross_encoder_path,
                                              engine, embedder, reranker):
    index, _ = served_index
    query = QUERIES[1]
    searcher = searcher_for(index, es_url, embedding_model_path, cross_encoder_path, engine, embedder, reranker)
    all_docs = searcher.search(query, depth=20, final_k=8).hits
    page = es_via.search(index=index, retriever=hybrid_retriever(query, 20), size=3, from_=2,
                         source_includes=["title"], explain=True)["hits"]["hits"]
    assert [h["_id"] for h in page] == [h.chunk_id for h in all_docs[2:5]]
    assert all(set(h["_source"]) == {"title"} for h in page)
    for h, e in zip(page, all_docs[2:5]):
        detail = h["_explanation"]["details"][0]
        assert detail["value"] == pytest.approx(e.retrieval_score)
        assert detail["description"] == f"retrieval rank {e.retrieval_rank}, retrieval score"
    cut = all_docs[3].rerank_score
    kept = es_via.search(index=index, retriever=hybrid_retriever(query, 20, min_score=cut), size=8, source=False)
    assert [h["_id"] for h in kept["hits"]["hits"]] == [h.chunk_id for h in all_docs[:4]]
    assert all("_source" not in h for h in kept["hits"]["hits"])


def test_standard_and_knn_children_alone(es_via, served_index, embedder):
    index, _ = served_index
    query = QUERIES[0]
    std = es_via.search(index=index, size=5, retriever={"text_similarity_reranker": {
        "retriever": {"standard": {"query": {"match": {"text": query}}}}, "field": "text", "inference_text": query,
        "rank_window_size": 10}})
    assert len(std["hits"]["hits"]) == 5 and std["es_rerank"]["fusion"] is None
    vector = embedder.embed_query(query)
    by_vector = es_via.search(index=index, size=5, retriever={"text_similarity_reranker": {
        "retriever": {"knn": {"field": "embedding", "k": 10, "num_candidates": 100, "query_vector": vector}},
        "field": "text", "inference_text": query, "rank_window_size": 10}})
    by_text = es_via.search(index=index, size=5, retriever={"text_similarity_reranker": {
        "retriever": {"knn": {"field": "embedding", "k": 10, "num_candidates": 100,
                              "query_vector_builder": {"text_embedding": {"model_text": query, "model_id": "any"}}}},
        "field": "text", "inference_text": query, "rank_window_size": 10}})
    assert [h["_id"] for h in by_vector["hits"]["hits"]] == [h["_id"] for h in by_text["hits"]["hits"]]


def test_any_index_reranks_the_named_field(es_via, engine, reranker):
    """On an index es-rerank did not build, the reranker reads _source[field]; a hit without it reads ''."""
    name = f"test-plain-{uuid.uuid4().hex[:10]}"
    docs = {"1": {"body": {"text": "refunds arrive within five days"}, "kind": "a"},
            "2": {"body": {"text": "reset your password from the login page"}, "kind": "a"},
            "3": {"kind": "a"},
            "4": {"body": {"text": "double charges are refunded automatically"}, "kind": "a"}}
    try:
        es_via.indices.create(index=name, mappings={"properties": {"kind": {"type": "keyword"}}})
        for doc_id, doc in docs.items():
            es_via.index(index=name, id=doc_id, document=doc)
        es_via.indices.refresh(index=name)
        query = "refund for a double charge"
        resp = es_via.search(index=name, size=4, retriever={"text_similarity_reranker": {
            "retriever": {"standard": {"query": {"term": {"kind": "a"}}}}, "field": "body.text",
            "inference_text": query, "rank_window_size": 4}})
        hits = resp["hits"]["hits"]
        texts = [docs[h["_id"]].get("body", {}).get("text", "") for h in hits]
        expected = reranker.score(query, texts)
        assert [h["_score"] for h in hits] == pytest.approx(expected, rel=1e-6)
        assert [h["_score"] for h in hits] == sorted(expected, reverse=True)
        assert hits[[h["_id"] for h in hits].index("3")]["_source"] == {"kind": "a"}
    finally:
        engine.request("DELETE", f"/{name}")


def test_root_answers_the_banner_with_the_version(es_via, server, es_url, engine):
    """``GET /`` (curl, ``info()``) and ``HEAD /`` (``ping()``) work on every cluster, also one with no root handler.

    Elasticsearch's Maven integ-test build answers ``GET /`` with 405; es-rerank then builds
    the banner from the node's own info. A cluster that answers it is relayed unchanged.
    """
    info = es_via.info()
    assert info["version"]["number"] == engine.info()["version"]
    assert info["name"] and info["cluster_name"] and info["tagline"] == "You Know, for Search"
    assert es_via.ping() is True
    ours, theirs = httpx.get(f"{server.url}/"), httpx.get(f"{es_url}/")
    assert ours.status_code == 200 and ours.headers["x-elastic-product"] == "Elasticsearch"
    if theirs.status_code == 200:
        assert ours.json() == theirs.json()
    else:  # built here, and saying so
        assert theirs.status_code == 405 and "GET /_nodes/_local" in ours.json()["es_rerank"]["banner"]
        nodes = httpx.get(f"{es_url}/_nodes/_local").json()
        assert ours.json()["cluster_name"] == nodes["cluster_name"]
    assert httpx.head(f"{server.url}/").status_code == 200
    assert httpx.get(f"{server.url}/?pretty").text.startswith("{\n")


def test_passthrough_apis(es_via, served_index, es):
    index, chunks = served_index
    assert es_via.count(index=index)["count"] == chunks == es.count(index=index)["count"]
    mapping = es_via.indices.get_mapping(index=index)
    assert mapping.body == es.indices.get_mapping(index=index).body
    plain = es_via.search(index=index, query={"match": {"text": "password"}}, size=2)
    assert [h["_id"] for h in plain["hits"]["hits"]] == \
        [h["_id"] for h in es.search(index=index, query={"match": {"text": "password"}}, size=2)["hits"]["hits"]]
    assert "es_rerank" not in plain
    assert es_via.indices.exists(index=index) and not es_via.indices.exists(index=f"missing-{uuid.uuid4().hex}")
    cat = es_via.cat.indices(index=index, format="json")
    assert cat[0]["index"] == index and int(cat[0]["docs.count"]) == chunks
    with pytest.raises(EsApiError) as info:
        es_via.search(index=f"missing-{uuid.uuid4().hex}", query={"match_all": {}})
    assert info.value.meta.status == 404


def test_es_rerank_index_command_works_through_the_passthrough(server, engine, embedder, es):
    """es-rerank's own indexer (create, bulk, settings, refresh, forcemerge, alias swap) through the server."""
    from es_rerank.engines import ElasticsearchEngine
    from es_rerank.indexing import index_paths

    name = f"test-serve-ix-{uuid.uuid4().hex[:8]}"
    via = ElasticsearchEngine(Settings(url=server.url, request_timeout=60))
    try:
        report = index_paths(via, [str(SAMPLE)], settings=Settings(index=name), embedder=embedder)
        assert report.documents_indexed == 32 and not report.rejected
        assert list(es.indices.get_alias(name=name)) == [report.concrete]
        assert es.count(index=name)["count"] == report.chunks_indexed
    finally:
        via.close()
        drop(engine, name)


def test_passthrough_keeps_status_headers_and_streams_past_the_body_limit(server, es_url, engine):
    direct = httpx.get(f"{es_url}/_cluster/health")
    proxied = httpx.get(f"{server.url}/_cluster/health")
    assert proxied.status_code == direct.status_code == 200
    assert proxied.headers["x-elastic-product"] == "Elasticsearch"
    assert proxied.json()["cluster_name"] == direct.json()["cluster_name"]
    bad = httpx.get(f"{server.url}/_cluster/health", params={"level": "nonsense"})
    assert bad.status_code == httpx.get(f"{es_url}/_cluster/health", params={"level": "nonsense"}).status_code == 400
    name = f"test-bulk-{uuid.uuid4().hex[:10]}"
    lines = []
    for i in range(600):
        lines.append(json.dumps({"index": {"_index": name, "_id": str(i)}}))
        lines.append(json.dumps({"text": f"document {i} " + "x" * 400}))
    payload = ("\n".join(lines) + "\n").encode()
    assert len(payload) > MAX_BODY  # the limit is for reranking requests; bulk streams through

    def chunks():
        for start in range(0, len(payload), 16_384):
            yield payload[start:start + 16_384]

    try:
        resp = httpx.post(f"{server.url}/_bulk", params={"refresh": "true"}, content=chunks(),
                          headers={"content-type": "application/x-ndjson"}, timeout=60)
        assert resp.status_code == 200 and resp.json()["errors"] is False and len(resp.json()["items"]) == 600
        assert httpx.get(f"{server.url}/{name}/_count").json()["count"] == 600
    finally:
        engine.request("DELETE", f"/{name}")


# -- the inference endpoint ----------------------------------------------------------------------------------

def test_inference_scores_equal_the_rerankers(server, es_via, reranker):
    query = "refund for a double charge"
    docs = ["Refunds are issued within 5 days.", "Reset your password.", "Double charges are refunded.", ""]
    expected = reranker.score(query, docs)
    resp = httpx.post(f"{server.url}/_inference/rerank/cross-encoder", json={"query": query, "input": docs})
    assert resp.status_code == 200 and resp.headers["x-elastic-product"] == "Elasticsearch"
    ranked = resp.json()["rerank"]
    assert sorted(r["index"] for r in ranked) == [0, 1, 2, 3]
    assert {r["index"]: r["relevance_score"] for r in ranked} == {i: s for i, s in enumerate(expected)}
    assert [r["relevance_score"] for r in ranked] == sorted(expected, reverse=True)
    top = es_via.inference.rerank(inference_id="cross-encoder", query=query, input=docs,
                                  task_settings={"return_documents": True, "top_n": 2})
    best = sorted(range(4), key=lambda i: -expected[i])[:2]
    assert top["rerank"] == [{"index": i, "relevance_score": expected[i], "text": docs[i]} for i in best]


# -- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, make, status, reason", [
    ("missing field", lambda q: {"retriever": {"text_similarity_reranker": {
        k: v for k, v in hybrid_retriever(q, 10)["text_similarity_reranker"].items() if k != "field"}}},
     400, "text_similarity_reranker.field] is required"),
    ("unknown child", lambda q: {"retriever": {"text_similarity_reranker": {
        **hybrid_retriever(q, 10)["text_similarity_reranker"], "retriever": {"linear": {"retrievers": []}}}}},
     400, "unknown retriever type [linear]"),
    ("negative window", lambda q: {"retriever": hybrid_retriever(q, 10, rank_window_size=-5)}, 400,
     "rank_window_size] must be between 1 and 1000, got -5"),
    ("huge window", lambda q: {"retriever": hybrid_retriever(q, 10, rank_window_size=100_000)}, 400,
     "rank_window_size] must be between 1 and 1000, got 100000"),
    ("size above window", lambda q: {"retriever": hybrid_retriever(q, 10), "size": 11}, 400,
     "[size] from + size must be <= [retriever.text_similarity_reranker.rank_window_size] (10)"),
    ("non-JSON body", lambda q: b"{not json", 400, "request body is not valid JSON"),
    ("oversized body", lambda q: {"retriever": hybrid_retriever(q, 10), "pad": "x" * (MAX_BODY + 1)}, 413,
     f"larger than the limit of {MAX_BODY} bytes"),
])
def test_bad_input_is_an_elasticsearch_error_and_serving_goes_on(server, served_index, name, make, status, reason):
    index, _ = served_index
    payload = make("reset my password")
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    resp = httpx.post(f"{server.url}/{index}/_search", content=content, headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    err = resp.json()
    assert err["status"] == status and reason in err["error"]["reason"]
    assert err["error"]["root_cause"][0]["type"] == err["error"]["type"]
    good = httpx.post(f"{server.url}/{index}/_search", json={"retriever": hybrid_retriever("reset my password", 10),
                                                             "size": 2}, timeout=60)
    assert good.status_code == 200 and len(good.json()["hits"]["hits"]) == 2


def test_an_inference_id_that_is_not_ours_goes_to_the_cluster(server, served_index, es_url):
    """The cluster's own inference endpoints (Elastic Rerank, Cohere ...) stay the cluster's to answer."""
    index, _ = served_index
    body = {"retriever": hybrid_retriever("reset my password", 10, inference_id="my-elastic-rerank"), "size": 2}
    via = httpx.post(f"{server.url}/{index}/_search", json=body, timeout=60)
    direct = httpx.post(f"{es_url}/{index}/_search", json=body, timeout=60)
    assert via.status_code == direct.status_code and via.content == direct.content
    assert "es_rerank" not in via.text
    request = {"query": "q", "input": ["a"]}
    inference_via = httpx.post(f"{server.url}/_inference/rerank/my-elastic-rerank", json=request)
    inference_direct = httpx.post(f"{es_url}/_inference/rerank/my-elastic-rerank", json=request)
    assert inference_via.status_code == inference_direct.status_code
    assert inference_via.content == inference_direct.content


def test_official_client_sees_errors_as_api_errors(es_via, served_index):
    index, _ = served_index
    with pytest.raises(EsApiError) as info:
        es_via.search(index=index, retriever=hybrid_retriever("x", 10), size=50)
    assert info.value.meta.status == 400 and "rank_window_size" in str(info.value)
    with pytest.raises(EsApiError) as info:
        es_via.search(index=f"missing-{uuid.uuid4().hex}", retriever=hybrid_retriever("x", 10))
    assert info.value.meta.status == 404 and info.value.error == "index_not_found_exception"


# -- failures, load shedding, timeouts, metrics -------------------------------------------------------------

class Failing(BaseReranker):
    name = "failing"

    def score(self, query, texts):
        raise RuntimeError("the model fell over")


class Slow(BaseReranker):
    """Sleeps, then scores by text length: stands in for a model busy on a slow CPU."""

    name = "slow"

    def __init__(self, seconds):
        self.seconds = seconds
        self.calls = []
        self.lock = threading.Lock()

    def score_pairs(self, pairs):
        with self.lock:
            self.calls.append(len(pairs))
        time.sleep(self.seconds)
        return [float(len(t)) for _, t in pairs]

    def score(self, query, texts):
        return self.score_pairs([(query, t) for t in texts])


def test_reranker_failure_is_a_5xx_unless_failures_are_allowed(served_index, es_url, embedding_model_path,
                                                               cross_encoder_path, embedder):
    index, _ = served_index
    body = {"retriever": hybrid_retriever("reset my password", 10), "size": 3}
    settings = server_settings(es_url, embedding_model_path, cross_encoder_path)
    with ServerThread(create_app(settings, embedder=embedder, rerankers={"cross-encoder": Failing()})) as strict:
        resp = httpx.post(f"{strict.url}/{index}/_search", json=body, timeout=60)
    assert resp.status_code == 500 and resp.json()["error"]["type"] == "es_rerank_reranker_exception"
    assert "the model fell over" in resp.json()["error"]["reason"]
    lenient = settings.replace(allow_reranker_failures=True)
    with ServerThread(create_app(lenient, embedder=embedder, rerankers={"cross-encoder": Failing()})) as running:
        resp = httpx.post(f"{running.url}/{index}/_search", json=body, timeout=60)
        metrics = httpx.get(f"{running.url}/_es_rerank/metrics").text
    assert resp.status_code == 200
    flag = resp.json()["es_rerank"]
    assert flag["reranked"] is False and "the model fell over" in flag["error"]
    scores = [h["_score"] for h in resp.json()["hits"]["hits"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)  # the child's (RRF) order
    assert "es_rerank_reranker_fallbacks_total 1.0" in metrics


def test_full_queue_answers_429_fast_and_timeouts_hold(es_url, embedding_model_path, cross_encoder_path, embedder):
    settings = server_settings(es_url, embedding_model_path, cross_encoder_path, serve_queue=2, serve_timeout=2.0,
                               serve_batch_wait_ms=0)
    slow = Slow(4.0)
    with ServerThread(create_app(settings, embedder=embedder, rerankers={"cross-encoder": slow})) as running:
        def call(_):
            t0 = time.perf_counter()
            r = httpx.post(f"{running.url}/_inference/rerank/cross-encoder", json={"query": "q", "input": ["a"]},
                           timeout=30)
            return r, time.perf_counter() - t0

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(8)))
        statuses = sorted(r.status_code for r, _ in results)
        assert statuses == [429] * 6 + [504] * 2
        for r, seconds in results:
            if r.status_code == 429:
                assert seconds < 1.0 and int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["type"] == "es_rejected_execution_exception"
            else:
                assert 1.9 < seconds < 3.0  # answered at its timeout, not when the model finished
        # the timed-out work still holds its slots: new requests are turned away until it ends
        assert httpx.post(f"{running.url}/_inference/rerank/cross-encoder",
                          json={"query": "q", "input": ["a"]}).status_code == 429
        time.sleep(2.5)
        slow.seconds = 0.0
        ok = httpx.post(f"{running.url}/_inference/rerank/cross-encoder", json={"query": "q", "input": ["abc"]})
        assert ok.status_code == 200 and ok.json()["rerank"] == [{"index": 0, "relevance_score": 3.0}]
        metrics = httpx.get(f"{running.url}/_es_rerank/metrics").text
    assert 'es_rerank_requests_total{endpoint="inference",outcome="rejected"} 7.0' in metrics
    assert 'es_rerank_requests_total{endpoint="inference",outcome="timeout"} 2.0' in metrics
    assert "es_rerank_queue_capacity 2.0" in metrics


def test_a_batched_rerank_that_runs_out_of_time_is_a_504(served_index, es_url, embedding_model_path,
                                                          cross_encoder_path, embedder):
    index, _ = served_index
    settings = server_settings(es_url, embedding_model_path, cross_encoder_path, serve_timeout=1.5,
                               serve_batch_wait_ms=5)
    with ServerThread(create_app(settings, embedder=embedder, rerankers={"cross-encoder": Slow(3.0)})) as running:
        t0 = time.perf_counter()
        body = {"retriever": hybrid_retriever("reset my password", 10), "size": 2}
        resp = httpx.post(f"{running.url}/{index}/_search", json=body, timeout=30)
        seconds = time.perf_counter() - t0
    assert resp.status_code == 504 and resp.json()["error"]["type"] == "es_rerank_timeout_exception", resp.text
    assert seconds < 2.5


def test_concurrent_requests_share_model_calls(es_url, embedding_model_path, cross_encoder_path, embedder):
    settings = server_settings(es_url, embedding_model_path, cross_encoder_path, serve_batch_wait_ms=300)
    slow = Slow(0.5)  # a busy model: requests that arrive meanwhile are scored together next
    with ServerThread(create_app(settings, embedder=embedder, rerankers={"cross-encoder": slow})) as running:
        def call(n):
            docs = ["x" * (n + i) for i in range(5)]
            return httpx.post(f"{running.url}/_inference/rerank/cross-encoder", json={"query": "q", "input": docs},
                              timeout=30).json(), n

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(call, [1, 10, 20, 30]))
        metrics = httpx.get(f"{running.url}/_es_rerank/metrics").text
    assert sum(slow.calls) == 20 and len(slow.calls) < 4, slow.calls  # concurrent requests shared calls
    for answer, n in results:
        assert [r["relevance_score"] for r in answer["rerank"]] == [float(n + i) for i in reversed(range(5))]
    assert 'es_rerank_pairs_scored_total{inference_id="cross-encoder"} 20.0' in metrics
    assert "es_rerank_batch_pairs_count" in metrics


def test_health_and_metrics(server, es_via, served_index):
    index, _ = served_index
    es_via.search(index=index, retriever=hybrid_retriever("reset my password", 10), size=2)
    health = httpx.get(f"{server.url}/_es_rerank/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["cluster"]["reachable"] and body["engine"] == "elasticsearch"
    assert body["queue"]["capacity"] == 8 and "cross-encoder" in body["rerankers"]["available"]
    text = httpx.get(f"{server.url}/_es_rerank/metrics").text
    for needle in ('es_rerank_requests_total{endpoint="search",outcome="ok"}', "es_rerank_retrieval_seconds_bucket",
                   "es_rerank_rerank_seconds_bucket", 'es_rerank_requests_total{endpoint="passthrough",outcome="ok"}',
                   "es_rerank_queue_depth 0.0"):
        assert needle in text


def test_cluster_down_is_a_fast_502(embedding_model_path, cross_encoder_path, embedder, reranker):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    settings = server_settings(dead, embedding_model_path, cross_encoder_path)
    with ServerThread(create_app(settings, embedder=embedder, rerankers={"cross-encoder": reranker})) as running:
        for method, path, body in [("POST", "/docs/_search", {"retriever": hybrid_retriever("q", 10)}),
                                   ("GET", "/_cat/indices", None), ("POST", "/_inference/rerank/cross-encoder",
                                                                    {"query": "q", "input": ["a"]})]:
            t0 = time.perf_counter()
            resp = httpx.request(method, running.url + path, json=body, timeout=30)
            assert resp.status_code == 502, (path, resp.text)
            assert resp.json()["error"]["type"] == "es_rerank_cluster_unreachable_exception"
            assert time.perf_counter() - t0 < 3.0
        assert httpx.get(f"{running.url}/_es_rerank/health").status_code == 503


def test_llm_reranker_through_the_server(served_index, es_url, embedding_model_path, cross_encoder_path, embedder,
                                         llm_url):
    """inference_id "llm" picks the pointwise LLM reranker (one call per request, not batched)."""
    index, _ = served_index
    settings = server_settings(es_url, embedding_model_path, cross_encoder_path, llm_base_url=llm_url,
                               llm_model="gemma3-270m", llm_timeout=120.0, llm_api="completions")
    docs = ["To close your account open Settings > Account > Close account.", "We do not sell your personal data."]
    with ServerThread(create_app(settings, embedder=embedder)) as running:
        answer = httpx.post(f"{running.url}/_inference/rerank/llm", json={"query": "close my account", "input": docs},
                            timeout=300)
        assert answer.status_code == 200, answer.text
        assert sorted(r["index"] for r in answer.json()["rerank"]) == [0, 1]
        assert all(0.0 < r["relevance_score"] < 1.0 for r in answer.json()["rerank"])
        body = {"retriever": hybrid_retriever("close my account", 3, inference_id="llm"), "size": 2}
        resp = httpx.post(f"{running.url}/{index}/_search", json=body, timeout=300)
        metrics = httpx.get(f"{running.url}/_es_rerank/metrics").text
    assert resp.status_code == 200, resp.text
    assert resp.json()["es_rerank"] == {"reranked": True, "inference_id": "llm", "fusion": "client"}
    assert 'es_rerank_pairs_scored_total{inference_id="llm"} 5.0' in metrics
    assert "es_rerank_batch_pairs_count 0.0" in metrics  # never through the cross-encoder's batcher
