"""The same search through :meth:`es_rerank.Searcher.search` and through ``es-rerank serve``
sends the same first-stage requests, byte for byte, and gets the same candidates in the same
order, on Elasticsearch and on OpenSearch.

Both talk to the real cluster through a small recording HTTP proxy (the cluster's answers pass
unchanged); every ``_search`` and ``_msearch`` it sees is kept with its body and answer. The
drop-in request is the ``text_similarity_reranker`` a client sends (``serve_requests``), asking
for the ``_source`` fields Searcher reads, so the bodies can be equal in full.
"""

import gzip
import http.client
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest

from es_rerank.client import Searcher
from es_rerank.config import Settings
from es_rerank.engines import engine_class
from es_rerank.engines.base import SOURCE_FIELDS, num_candidates_for
from es_rerank.server import ServerThread, create_app

from conftest import BACKEND
from serve_requests import hybrid_retriever

pytestmark = [pytest.mark.es, pytest.mark.both_engines]

QUERIES = ["what happens to my data if I close my account", "refund for a double charge"]
DEPTH = 20
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade", "te"}


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    body: bytes
    status: int
    answer: bytes

    def answers(self) -> list[dict]:
        """The search responses (one, or each of a multi-search)."""
        decoded = json.loads(self.answer)
        return decoded["responses"] if "responses" in decoded else [decoded]


class RecordingProxy:
    """Forwards every request to ``upstream`` unchanged and records the searches."""

    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        records: list[Exchange] = []
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: the test reads the records
                pass

            def forward(self):
                assert "chunked" not in self.headers.get("transfer-encoding", ""), "chunked bodies not handled"
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    resp_headers = resp.getheaders()
                finally:
                    conn.close()
                path = self.path.split("?", 1)[0]
                if path.endswith(("/_search", "/_msearch")):
                    plain = gzip.decompress(data) if resp.getheader("content-encoding") == "gzip" else data
                    with lock:
                        records.append(Exchange(self.command, self.path, body, resp.status, plain))
                self.send_response(resp.status)
                for k, v in resp_headers:
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = forward

        self.records = records
        self._lock = lock
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="recording-proxy", daemon=True)

    def take(self) -> list[Exchange]:
        """The searches recorded since the last call."""
        with self._lock:
            out = list(self.records)
            self.records.clear()
        return out

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def drop_in(query: str, mode: str) -> dict:
    """The drop-in ``_search`` whose child retriever is what Searcher retrieves in ``mode``."""
    hybrid = hybrid_retriever(query, DEPTH)
    bm25, knn = hybrid["text_similarity_reranker"]["retriever"]["rrf"]["retrievers"]
    if mode == "bm25":
        hybrid["text_similarity_reranker"]["retriever"] = bm25
    elif mode == "knn":
        hybrid["text_similarity_reranker"]["retriever"] = knn
    return {"retriever": hybrid, "size": 3, "_source": list(SOURCE_FIELDS)}


@pytest.fixture
def proxied(es_url):
    with RecordingProxy(es_url) as proxy:
        yield proxy


@pytest.mark.parametrize("mode", ["hybrid", "bm25", "knn"])
def test_searcher_and_serve_send_the_same_first_stage(mode, proxied, engine_name, sample_index, embedding_model_path,
                                                      cross_encoder_path, embedder, reranker):
    settings = Settings(url=proxied.url, index=sample_index, engine=engine_name, embedding_model=embedding_model_path,
                        reranker_model=cross_encoder_path, device="cpu", reranker_backend=BACKEND,
                        embedding_backend=BACKEND)
    assert num_candidates_for(DEPTH) == 100  # the drop-in's knn names what Searcher leaves to the default
    with engine_class(engine_name)(settings) as engine, \
            Searcher(settings, engine=engine, embedder=embedder, reranker=reranker) as searcher, \
            ServerThread(create_app(settings, embedder=embedder, rerankers={"cross-encoder": reranker})) as server:
        searcher.search(QUERIES[0], depth=DEPTH, final_k=3, mode=mode)  # detection and index reads, then clear
        httpx.post(f"{server.url}/{sample_index}/_search", json=drop_in(QUERIES[0], mode), timeout=120)
        proxied.take()
        for query in QUERIES:
            expected = searcher.search(query, depth=DEPTH, final_k=3, mode=mode)
            by_searcher = proxied.take()
            resp = httpx.post(f"{server.url}/{sample_index}/_search", json=drop_in(query, mode), timeout=120)
            assert resp.status_code == 200, resp.text
            by_serve = proxied.take()
            answer = resp.json()

            # one first stage: the same requests, byte for byte
            assert len(by_searcher) == 1 and by_searcher[0].status == 200
            assert [(x.method, x.path, x.body) for x in by_serve] == [(x.method, x.path, x.body)
                                                                       for x in by_searcher]
            sent = by_searcher[0]
            if mode == "hybrid":
                assert expected.fusion == answer["es_rerank"]["fusion"] in ("server", "client")
                assert sent.path.endswith("/_msearch" if expected.fusion == "client" else "/_search")
            else:
                assert expected.fusion is None and answer["es_rerank"]["fusion"] is None
            # ... the same candidates in the same order
            ids = [[h["_id"] for h in r["hits"]["hits"]] for r in by_searcher[0].answers()]
            assert [[h["_id"] for h in r["hits"]["hits"]] for r in by_serve[0].answers()] == ids
            assert all(len(i) > 3 for i in ids)
            assert expected.candidates == len(searcher.retrieve(query, depth=DEPTH, mode=mode).hits)
            proxied.take()
            # ... and the same answer
            assert [h["_id"] for h in answer["hits"]["hits"]] == [h.chunk_id for h in expected.hits]
            assert [h["_score"] for h in answer["hits"]["hits"]] == pytest.approx(
                [h.rerank_score for h in expected.hits], rel=1e-6)
