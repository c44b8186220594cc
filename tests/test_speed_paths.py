"""The faster paths give the same answers: ONNX export vs torch, and the score cache."""

import numpy as np
import pytest

from es_rerank.rerankers.cache import CachedReranker

QUERY = "what happens to my data if I close my account"
TEXTS = ["When you close your account we keep your files for 30 days.", "Yearly plans can be refunded.",
         "Deleted files go to the trash.", "Two-factor authentication adds a second step when you sign in. " * 20]


class CountingReranker:
    name = "counting"

    def __init__(self):
        self.calls = []

    def score(self, query, texts):
        self.calls.append(list(texts))
        return [float(len(t)) for t in texts]


def test_cache_scores_each_pair_once_and_stays_bounded():
    inner = CountingReranker()
    cached = CachedReranker(inner, max_entries=3)
    assert cached.score("q", ["a", "bb"]) == [1.0, 2.0]
    assert cached.score("q", ["bb", "ccc"]) == [2.0, 3.0]
    assert inner.calls == [["a", "bb"], ["ccc"]]
    assert (cached.hits, cached.misses) == (1, 3)
    cached.score("q", ["dddd"])  # evicts the least recently used ("a")
    cached.score("q", ["a"])
    assert inner.calls[-1] == ["a"]
    assert cached.score("other query", ["a"]) == [1.0] and inner.calls[-1] == ["a"]  # key includes the query


@pytest.fixture(scope="module")
def torch_reranker(cross_encoder_path):
    """The reference: sentence-transformers on torch, raw logits."""
    from es_rerank.rerankers import CrossEncoderReranker

    return CrossEncoderReranker(cross_encoder_path, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def torch_embedder(embedding_model_path):
    from es_rerank.embedding import ModelEmbedder

    return ModelEmbedder(embedding_model_path, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def onnx_ce(cross_encoder_path, tmp_path_factory):
    from es_rerank.export import export_onnx

    out = tmp_path_factory.mktemp("ce-onnx")
    files = export_onnx(cross_encoder_path, out, kind="cross-encoder", quantize="int8")
    assert [f.name for f in files] == ["model.onnx", "model_int8.onnx"]
    return out


def test_onnx_cross_encoder_matches_torch(onnx_ce, torch_reranker):
    from es_rerank.rerankers import CrossEncoderReranker

    torch_scores = np.array(torch_reranker.score(QUERY, TEXTS))
    fp32 = np.array(CrossEncoderReranker(str(onnx_ce), backend="onnx").score(QUERY, TEXTS))
    assert np.allclose(fp32, torch_scores, atol=1e-3)
    int8 = np.array(CrossEncoderReranker(str(onnx_ce), backend="onnx-int8").score(QUERY, TEXTS))
    assert int8.shape == torch_scores.shape and np.all(np.isfinite(int8))


def test_default_runtime_reads_plain_weights_without_export(cross_encoder_path, torch_reranker):
    """The default backend runs a folder with only safetensors weights (no ONNX file, no torch)."""
    from es_rerank.rerankers import CrossEncoderReranker

    got = np.array(CrossEncoderReranker(cross_encoder_path).score(QUERY, TEXTS))
    assert np.allclose(got, np.array(torch_reranker.score(QUERY, TEXTS)), atol=1e-3)


def test_onnx_embedder_matches_sentence_transformers(embedding_model_path, torch_embedder, tmp_path):
    from es_rerank.embedding import ModelEmbedder
    from es_rerank.export import export_onnx

    export_onnx(embedding_model_path, tmp_path, kind="embedder")
    onnx = ModelEmbedder(str(tmp_path), backend="onnx")
    ref = torch_embedder.embed_documents(TEXTS)
    got = onnx.embed_documents(TEXTS)
    assert got.shape == ref.shape == (4, 384)
    assert np.min(np.sum(got * ref, axis=1)) > 0.9999  # cosine of unit vectors
    assert onnx.dimensions == 384


def test_build_reranker_uses_onnx_backend(settings, onnx_ce):
    from es_rerank.rerankers import build_reranker

    r = build_reranker("cross-encoder", settings.replace(reranker_model=str(onnx_ce), reranker_backend="onnx-int8"))
    assert isinstance(r, CachedReranker) and r.name.endswith("(onnx-int8)")
    assert len(r.score(QUERY, TEXTS)) == 4
    assert r.inner.model.description == "onnx-int8:model_int8.onnx"


def test_prefetch_keeps_order_and_reraises():
    from es_rerank.streaming import _prefetch

    assert list(_prefetch(iter(range(100)), maxsize=3)) == list(range(100))

    def broken():
        yield 1
        raise ValueError("boom in producer")

    got = []
    with pytest.raises(ValueError, match="boom in producer"):
        for x in _prefetch(broken(), maxsize=2):
            got.append(x)
    assert got == [1]


# -- OpenVINO ------------------------------------------------------------------------

WORDS = ("account data refund plan storage file trash password sign close delete export invoice team "
         "share folder sync device backup restore").split()


def _sentences(n, seed):
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))) for _ in range(n)]


def _sample_texts():
    """Real help-centre texts (the sample corpus) for calibration; TEXTS are not among them."""
    import json

    from conftest import SAMPLE

    return [json.loads(line)["text"] for line in SAMPLE.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ov_ce(cross_encoder_path, tmp_path_factory):
    from es_rerank.export import export_openvino

    out = tmp_path_factory.mktemp("ce-ov")
    queries = ["how do I delete my account", "refund for a yearly plan", "recover a deleted file", "share a folder"]
    calibration = [(q, t) for q in queries for t in _sample_texts()]
    files = export_openvino(cross_encoder_path, out, kind="cross-encoder", quantize="int8", calibration=calibration)
    assert [f.name for f in files] == ["openvino_model.xml", "openvino_model_int8.xml"]
    return out


def _ov_head(folder, file_name, kind="cross-encoder", precision=None):
    from es_rerank.runtime.heads import CrossEncoderHead, EmbedderHead
    from es_rerank.runtime.sessions import OpenVinoSession

    head = CrossEncoderHead if kind == "cross-encoder" else EmbedderHead
    return head(OpenVinoSession(folder / file_name, precision=precision), folder)


def test_openvino_cross_encoder_matches_torch(ov_ce, torch_reranker):
    from scipy.stats import spearmanr

    from es_rerank.export import FP_FILE, INT8_FILE

    texts = TEXTS + _sentences(20, 3)
    pairs = [(QUERY, t) for t in texts]
    ref = np.array(torch_reranker.score(QUERY, texts))
    fp32 = _ov_head(ov_ce, FP_FILE, precision="f32").score_pairs(pairs)
    assert np.allclose(fp32, ref, atol=1e-3)
    fast = _ov_head(ov_ce, FP_FILE).score_pairs(pairs)  # bf16 where the CPU has it
    assert spearmanr(fast, ref).statistic > 0.98
    int8 = _ov_head(ov_ce, INT8_FILE).score_pairs(pairs)
    assert int8.shape == ref.shape and np.all(np.isfinite(int8))
    assert spearmanr(int8, ref).statistic > 0.8


def test_openvino_embedder_matches_sentence_transformers(embedding_model_path, torch_embedder, tmp_path):
    from es_rerank.export import FP_FILE, INT8_FILE, export_openvino

    export_openvino(embedding_model_path, tmp_path, kind="embedder", quantize="int8", calibration=_sample_texts())
    ref = torch_embedder.embed_documents(TEXTS)
    fp32 = _ov_head(tmp_path, FP_FILE, "embedder", precision="f32").embed(TEXTS)
    assert fp32.shape == ref.shape == (4, 384)
    assert np.min(np.sum(fp32 * ref, axis=1)) > 0.9999
    int8 = _ov_head(tmp_path, INT8_FILE, "embedder").embed(TEXTS)
    assert np.min(np.sum(int8 * ref, axis=1)) > 0.98


def test_openvino_int8_needs_enough_calibration(cross_encoder_path, tmp_path):
    from es_rerank.errors import ConfigError
    from es_rerank.export import export_openvino

    with pytest.raises(ConfigError, match="at least 16 calibration"):
        export_openvino(cross_encoder_path, tmp_path, quantize="int8", calibration=[("q", "t")] * 3)
    with pytest.raises(ConfigError, match=r"\(query, text\) pairs"):
        export_openvino(cross_encoder_path, tmp_path, quantize="int8", calibration=["just text"] * 20)


def test_build_reranker_uses_openvino_backend(settings, ov_ce):
    from es_rerank.embedding import build_embedder
    from es_rerank.errors import ModelError
    from es_rerank.rerankers import build_reranker

    r = build_reranker("cross-encoder", settings.replace(reranker_model=str(ov_ce), reranker_backend="openvino-int8"))
    assert r.name.endswith("(openvino-int8)") and len(r.score(QUERY, TEXTS)) == 4
    assert r.inner.model.description == "openvino-int8:openvino_model_int8.xml"
    missing = build_embedder(settings.replace(embedding_model=str(ov_ce.parent), embedding_backend="openvino"))
    with pytest.raises(ModelError, match="export-onnx MODEL --out DIR --openvino"):
        missing.embed_documents(["x"])


def test_read_queries_formats_and_errors(tmp_path):
    from es_rerank.errors import ConfigError
    from es_rerank.export import read_queries

    f = tmp_path / "q.txt"
    f.write_text('plain query\n\n{"_id": "1", "text": "beir style"}\n{"query": "other style"}\n')
    assert read_queries(f) == ["plain query", "beir style", "other style"]
    f.write_text('ok\n{"text": ""}\n')
    with pytest.raises(ConfigError, match=r"q.txt:2: a JSON line needs"):
        read_queries(f)
    f.write_text("")
    with pytest.raises(ConfigError, match="no queries"):
        read_queries(f)


@pytest.mark.parametrize("n,parallel,expected", [(50, 1, [32, 18]), (50, 2, [25, 25]), (20, 2, [10, 10]),
                                                 (100, 2, [25, 25, 25, 25]), (70, 2, [18, 18, 18, 16]), (1, 2, [1])])
def test_batches_are_balanced_across_parallel_runners(n, parallel, expected):
    """Every position once, longest first, and equal shares when batches run in parallel."""
    from es_rerank.runtime.sessions import batches

    lengths = [1 + (i * 7) % 13 for i in range(n)]
    out = batches(lengths, 32, parallel)
    assert [len(idx) for idx in out] == expected
    assert sorted(i for idx in out for i in idx) == list(range(n))
    ordered = [lengths[i] for idx in out for i in idx]
    assert ordered == sorted(ordered, reverse=True)


@pytest.mark.es
@pytest.mark.parametrize("backend", ["onnx", "openvino-int8"])
def test_one_searcher_shared_by_8_threads(backend, settings, engine, embedder, sample_index, onnx_ce, ov_ce):
    """8 threads share one Searcher: no errors, and every answer equals the one-thread answer.

    The ONNX/OpenVINO runtimes once changed the shared tokenizer's truncation on every call,
    which raised "Already borrowed" under concurrent use.
    """
    from concurrent.futures import ThreadPoolExecutor

    from es_rerank.client import Searcher

    folder = ov_ce if backend.startswith("openvino") else onnx_ce
    s = settings.replace(reranker_model=str(folder), reranker_backend=backend, rerank_cache_size=0)
    queries = ["close my account", "refund a double charge", "reset my password", "share a folder",
               "recover deleted files", "two-factor authentication", "download invoices", "storage full"]
    with Searcher(s, engine=engine, embedder=embedder) as searcher:
        alone = {q: [(h.chunk_id, round(h.rerank_score, 4)) for h in searcher.search(q, depth=12, final_k=5).hits]
                 for q in queries}
        errors, answers = [], []

        def client(n):
            for i in range(6):
                q = queries[(n + i) % len(queries)]
                try:
                    hits = searcher.search(q, depth=12, final_k=5).hits
                    answers.append((q, [(h.chunk_id, round(h.rerank_score, 4)) for h in hits]))
                except Exception as e:  # noqa: BLE001 - every failure is the finding
                    errors.append(f"{type(e).__name__}: {e}")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(client, range(8)))
    assert errors == []
    assert len(answers) == 48
    # int8/bf16 batches may differ in the last digits with batch composition; the order may not
    for q, got in answers:
        assert [cid for cid, _ in got] == [cid for cid, _ in alone[q]], q
