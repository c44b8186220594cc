"""es-rerank serve in front of OpenSearch, driven by ``opensearch-py``, unmodified.

It uses the session's OpenSearch node (``ES_RERANK_TEST_OPENSEARCH_URL``, or the local node
the test session starts; see tests/conftest.py). The ``knn`` retriever
becomes OpenSearch's ``knn`` query, fusion runs in Python, and the results equal
:meth:`es_rerank.Searcher.search` on the same node.
"""

import uuid

import httpx
import pytest

from es_rerank.client import Searcher
from es_rerank.config import Settings
from es_rerank.engines import OpenSearchEngine
from es_rerank.server import ServerThread, create_app

from conftest import BACKEND
from serve_requests import CHUNK_OVERLAP, CHUNK_TOKENS, hybrid_retriever, sample_chunks

pytestmark = pytest.mark.es

QUERIES = ["refund for a double charge", "reset my password"]


@pytest.fixture(scope="module")
def os_url(opensearch_url):
    """The session's OpenSearch node (see tests/conftest.py)."""
    return opensearch_url


@pytest.fixture(scope="module")
def os_engine(os_url):
    with OpenSearchEngine(Settings(url=os_url, request_timeout=60)) as engine:
        yield engine


@pytest.fixture(scope="module")
def os_server(os_url, embedding_model_path, cross_encoder_path, embedder, reranker):
    settings = Settings(url=os_url, embedding_model=embedding_model_path, reranker_model=cross_encoder_path,
                        device="cpu", reranker_backend=BACKEND, embedding_backend=BACKEND)
    with ServerThread(create_app(settings, embedder=embedder, rerankers={"cross-encoder": reranker})) as running:
        yield running


@pytest.fixture(scope="module")
def os_index(os_server, os_engine, embedder):
    """An es-rerank index on OpenSearch, created and bulk-loaded with opensearch-py through the server."""
    from opensearchpy import OpenSearch, helpers

    from es_rerank.lifecycle import marker

    name = f"test-serve-os-{uuid.uuid4().hex[:8]}"
    body = os_engine.index_body(embedder.dimensions)
    body["mappings"]["_meta"] = marker(alias=name, state="ready", engine="opensearch", embedder=embedder.model_name,
                                       embedding_backend=embedder.backend, dims=embedder.dimensions,
                                       chunk_tokens=CHUNK_TOKENS, chunk_overlap=CHUNK_OVERLAP, analyzer="standard")
    client = OpenSearch(os_server.url, timeout=60)
    client.indices.create(index=name, body=body)
    actions, n_docs = sample_chunks(embedder, name)
    ok, errors = helpers.bulk(client, actions, chunk_size=50, refresh=True)
    assert ok == len(actions) > n_docs and not errors
    yield name, client, len(actions)
    client.close()
    os_engine.request("DELETE", f"/{name}")


def test_reranked_search_equals_searcher_on_opensearch(os_index, os_url, os_engine, embedding_model_path,
                                                       cross_encoder_path, embedder, reranker):
    name, client, _ = os_index
    settings = Settings(url=os_url, index=name, embedding_model=embedding_model_path,
                        reranker_model=cross_encoder_path, device="cpu", reranker_backend=BACKEND,
                        embedding_backend=BACKEND)
    searcher = Searcher(settings, engine=os_engine, embedder=embedder, reranker=reranker)
    for query in QUERIES:
        resp = client.search(index=name, body={"retriever": hybrid_retriever(query, 20), "size": 3})
        expected = searcher.search(query, depth=20, final_k=3)
        assert expected.fusion == "client"
        assert [h["_id"] for h in resp["hits"]["hits"]] == [h.chunk_id for h in expected.hits]
        assert [h["_score"] for h in resp["hits"]["hits"]] == pytest.approx([h.rerank_score for h in expected.hits],
                                                                            rel=1e-6)
        assert resp["es_rerank"]["fusion"] == "client"


def test_passthrough_and_headers_on_opensearch(os_index, os_server, os_url):
    name, client, chunks = os_index
    assert client.count(index=name)["count"] == chunks
    assert client.indices.get_mapping(index=name) == httpx.get(f"{os_url}/{name}/_mapping").json()
    ours = httpx.post(f"{os_server.url}/{name}/_search", json={"retriever": hybrid_retriever("reset my password", 10),
                                                                "size": 2}, timeout=60)
    assert ours.status_code == 200 and "x-elastic-product" not in ours.headers  # not Elasticsearch: not claimed
    theirs = httpx.get(f"{os_server.url}/")
    assert theirs.json()["version"]["distribution"] == "opensearch"
    similarity = hybrid_retriever("x", 10)
    similarity["text_similarity_reranker"]["retriever"]["rrf"]["retrievers"][1]["knn"]["similarity"] = 0.5
    refused = httpx.post(f"{os_server.url}/{name}/_search", json={"retriever": similarity}, timeout=60)
    assert refused.status_code == 400 and "not supported on OpenSearch" in refused.json()["error"]["reason"]
