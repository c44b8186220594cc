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
