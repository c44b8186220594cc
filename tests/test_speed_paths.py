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
def onnx_ce(cross_encoder_path, tmp_path_factory):
    from es_rerank.onnx_backend import export_onnx

    out = tmp_path_factory.mktemp("ce-onnx")
    files = export_onnx(cross_encoder_path, out, kind="cross-encoder", quantize="int8")
    assert [f.name for f in files] == ["model.onnx", "model_int8.onnx"]
    return out


def test_onnx_cross_encoder_matches_torch(onnx_ce, reranker):
    from es_rerank.onnx_backend import OnnxCrossEncoder

    torch_scores = np.array(reranker.score(QUERY, TEXTS))
    fp32 = np.array(OnnxCrossEncoder(onnx_ce).score(QUERY, TEXTS))
    assert np.allclose(fp32, torch_scores, atol=1e-3)
    int8 = np.array(OnnxCrossEncoder(onnx_ce, file_name="model_int8.onnx").score(QUERY, TEXTS))
    assert int8.shape == torch_scores.shape and np.all(np.isfinite(int8))


def test_onnx_embedder_matches_sentence_transformers(embedding_model_path, embedder, tmp_path):
    from es_rerank.onnx_backend import OnnxEmbedder, export_onnx

    export_onnx(embedding_model_path, tmp_path, kind="embedder")
    onnx = OnnxEmbedder(tmp_path)
    ref = embedder.embed_documents(TEXTS)
    got = onnx.embed_documents(TEXTS)
    assert got.shape == ref.shape == (4, 384)
    assert np.min(np.sum(got * ref, axis=1)) > 0.9999  # cosine of unit vectors
    assert onnx.dimensions == 384


def test_build_reranker_uses_onnx_backend(settings, onnx_ce):
    from es_rerank.rerankers import build_reranker

    r = build_reranker("cross-encoder", settings.replace(reranker_model=str(onnx_ce), reranker_backend="onnx-int8"))
    assert isinstance(r, CachedReranker) and r.name.endswith("model_int8.onnx")
    assert len(r.score(QUERY, TEXTS)) == 4


def test_prefetch_keeps_order_and_reraises():
    from es_rerank.indexing import _prefetch

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
    from es_rerank.openvino_backend import export_openvino

    out = tmp_path_factory.mktemp("ce-ov")
    queries = ["how do I delete my account", "refund for a yearly plan", "recover a deleted file", "share a folder"]
    calibration = [(q, t) for q in queries for t in _sample_texts()]
    files = export_openvino(cross_encoder_path, out, kind="cross-encoder", quantize="int8", calibration=calibration)
    assert [f.name for f in files] == ["openvino_model.xml", "openvino_model_int8.xml"]
    return out


def test_openvino_cross_encoder_matches_torch(ov_ce, reranker):
    from scipy.stats import spearmanr

    from es_rerank.openvino_backend import INT8_FILE, OpenVinoCrossEncoder

    texts = TEXTS + _sentences(20, 3)
    ref = np.array(reranker.score(QUERY, texts))
    fp32 = np.array(OpenVinoCrossEncoder(ov_ce, precision="f32").score(QUERY, texts))
    assert np.allclose(fp32, ref, atol=1e-3)
    fast = np.array(OpenVinoCrossEncoder(ov_ce).score(QUERY, texts))  # bf16 where the CPU has it
    assert spearmanr(fast, ref).statistic > 0.98
    int8 = np.array(OpenVinoCrossEncoder(ov_ce, file_name=INT8_FILE).score(QUERY, texts))
    assert int8.shape == ref.shape and np.all(np.isfinite(int8))
    assert spearmanr(int8, ref).statistic > 0.8


def test_openvino_embedder_matches_sentence_transformers(embedding_model_path, embedder, tmp_path):
    from es_rerank.openvino_backend import INT8_FILE, OpenVinoEmbedder, export_openvino

    export_openvino(embedding_model_path, tmp_path, kind="embedder", quantize="int8", calibration=_sample_texts())
    ref = embedder.embed_documents(TEXTS)
    fp32 = OpenVinoEmbedder(tmp_path, precision="f32").embed_documents(TEXTS)
    assert fp32.shape == ref.shape == (4, 384)
    assert np.min(np.sum(fp32 * ref, axis=1)) > 0.9999
    int8 = OpenVinoEmbedder(tmp_path, file_name=INT8_FILE).embed_documents(TEXTS)
    assert np.min(np.sum(int8 * ref, axis=1)) > 0.98
    assert OpenVinoEmbedder(tmp_path).dimensions == 384


def test_openvino_int8_needs_enough_calibration(cross_encoder_path, tmp_path):
    from es_rerank.errors import ConfigError
    from es_rerank.openvino_backend import export_openvino

    with pytest.raises(ConfigError, match="at least 16 calibration"):
        export_openvino(cross_encoder_path, tmp_path, quantize="int8", calibration=[("q", "t")] * 3)
    with pytest.raises(ConfigError, match=r"\(query, text\) pairs"):
        export_openvino(cross_encoder_path, tmp_path, quantize="int8", calibration=["just text"] * 20)


def test_build_reranker_uses_openvino_backend(settings, ov_ce):
    from es_rerank.embedding import build_embedder
    from es_rerank.errors import RerankerError
    from es_rerank.rerankers import build_reranker

    r = build_reranker("cross-encoder", settings.replace(reranker_model=str(ov_ce), reranker_backend="openvino-int8"))
    assert r.name.endswith("openvino_model_int8.xml") and len(r.score(QUERY, TEXTS)) == 4
    missing = build_embedder(settings.replace(embedding_model=str(ov_ce.parent), embedding_backend="openvino"))
    with pytest.raises(RerankerError, match="export-onnx MODEL --openvino"):
        missing.embed_documents(["x"])


def test_read_queries_formats_and_errors(tmp_path):
    from es_rerank.errors import ConfigError
    from es_rerank.openvino_backend import read_queries

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
    from types import SimpleNamespace

    from es_rerank.onnx_backend import OnnxCrossEncoder

    model = OnnxCrossEncoder("unused", batch_size=32)
    model._inputs = ["input_ids", "attention_mask"]
    model.parallel_batches = parallel
    encodings = [SimpleNamespace(ids=[1] * (1 + (i * 7) % 13), type_ids=[0] * (1 + (i * 7) % 13)) for i in range(n)]
    batches = list(model._batches(encodings))
    assert [len(idx) for idx, _ in batches] == expected
    assert sorted(i for idx, _ in batches for i in idx) == list(range(n))
    lengths = [int(feed["attention_mask"][r].sum()) for _, feed in batches for r in range(len(feed["attention_mask"]))]
    assert lengths == sorted(lengths, reverse=True)
