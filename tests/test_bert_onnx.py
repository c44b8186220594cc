"""The torch-free BERT-to-ONNX converter against transformers and sentence-transformers.

References are the torch models themselves (torch is installed for the tests; the module under
test must not need it): cross-encoder logits within 1e-4, embeddings with cosine > 0.99999, on
batches with padding, pairs, inputs truncated at the model's limit, and unicode.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="pip install 'es-rerank[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="pip install 'es-rerank[onnx]'")

from es_rerank.errors import ConfigError  # noqa: E402
from es_rerank.runtime.bert_onnx import build_bert_onnx, open_bert_session, read_bert_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED_CE = ROOT.parent / "shared" / "models" / "minilm-l6-scifact-ce"

LONG = " ".join(["Cells divide by mitosis, and the daughter cells inherit the same chromosomes."] * 60)
QUERIES = ["what do cells inherit", "Ünïcödé façade — 東京の細胞 🧬 مرحبا", "a", LONG[:300]]
PASSAGES = [
    "Mitosis yields two daughter cells with identical chromosomes.",
    "",
    "Les cellules héritent des chromosomes; 细胞分裂 produces naïve résumé 😀 text.",
    LONG,  # longer than any model limit: truncated
    "short",
]
PAIRS = [(q, p) for q in QUERIES for p in PASSAGES]


def _session(proto):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _feed(tokenizer, first, second=None, max_length=512) -> dict[str, np.ndarray]:
    enc = tokenizer(first, second, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


def _torch_out(model, feed):
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


def _onnx_folder(model_dir: str | Path, proto, dest: Path) -> Path:
    """A folder the existing runtime classes open: the built model.onnx beside the tokenizer files."""
    from es_rerank.export.onnx import TOKENIZER_FILES

    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(model_dir) / name).is_file():
            shutil.copy(Path(model_dir) / name, dest / name)
    (dest / "model.onnx").write_bytes(proto.SerializeToString())
    return dest


@pytest.fixture(scope="session")
def shared_ce() -> str:
    if not SHARED_CE.is_dir():
        pytest.skip(f"{SHARED_CE} not found (the shared learned cross-encoder)")
    return str(SHARED_CE)


@pytest.fixture(scope="session", params=["shared", "random-head"])
def ce_dir(request) -> str:
    """Both cross-encoders: the learned one (fp16 weights) and the random-head one (fp32)."""
    name = "shared_ce" if request.param == "shared" else "cross_encoder_path"
    return request.getfixturevalue(name)


# --- numerics against torch ----------------------------------------------------------------------

@pytest.mark.parametrize("max_length", [512, 64])
def test_cross_encoder_logits_match_transformers(ce_dir, max_length):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ce_dir)
    reference = AutoModelForSequenceClassification.from_pretrained(ce_dir).eval()
    session = _session(build_bert_onnx(ce_dir, kind="cross-encoder"))
    firsts, seconds = [q for q, _ in PAIRS], [p for _, p in PAIRS]
    # padded batches (LONG is pair 3, truncated), a single pair of the full length
    for start, stop in ((0, 8), (3, 4), (15, 20)):  # the last: a long query with each passage
        feed = _feed(tokenizer, firsts[start:stop], seconds[start:stop], max_length)
        got = session.run(None, feed)[0]
        want = _torch_out(reference, feed)
        assert got.shape == want.shape == (stop - start, 1)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert _feed(tokenizer, firsts, seconds, max_length)["input_ids"].shape[1] == max_length  # truncation reached


def test_cross_encoder_through_runtime_class_matches_cross_encoder_predict(ce_dir, tmp_path):
    """The built graph in the runtime class (its tokenizer, batching, truncation) vs CrossEncoder.predict."""
    import torch
    from sentence_transformers import CrossEncoder

    from es_rerank.runtime import load_cross_encoder

    # the default backend on the plain folder (graph built in memory), and on the graph saved as a file
    folder = _onnx_folder(ce_dir, build_bert_onnx(ce_dir, kind="cross-encoder"), tmp_path / "onnx")
    models = [load_cross_encoder(str(ce_dir), backend="onnx", batch_size=4),
              load_cross_encoder(str(folder), backend="onnx", batch_size=4)]
    assert [m.description for m in models] == ["onnx:model.safetensors", "onnx:model.onnx"]
    torch_model = CrossEncoder(ce_dir, device="cpu", activation_fn=torch.nn.Identity())
    # short queries: the runtime truncates the passage only, CrossEncoder the longest; both cut the passage
    for query in QUERIES[:3]:
        want = torch_model.predict([(query, p) for p in PASSAGES], show_progress_bar=False)
        for onnx_model in models:
            got = onnx_model.score_pairs([(query, p) for p in PASSAGES])
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert len(set(np.round(got, 4))) == len(PASSAGES)  # distinct scores: the head is not constant


def test_shared_cross_encoder_ranks_a_relevant_passage_first(shared_ce):
    """A sanity check of meaning, not only of equality: the learned model prefers the on-topic passage."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(shared_ce) / "tokenizer.json"))
    tok.enable_padding()
    session = _session(build_bert_onnx(shared_ce, kind="cross-encoder"))
    query = "Mitosis produces daughter cells with identical chromosomes."
    passages = ["During mitosis a cell divides into two daughter cells that receive identical sets of chromosomes.",
                "The stock market fell sharply on Tuesday after the interest rate announcement."]
    enc = tok.encode_batch([(query, p) for p in passages])
    feed = {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
    logits = session.run(None, feed)[0][:, 0]
    assert logits[0] > logits[1] + 1.0


def test_embedder_hidden_states_match_transformers(embedding_model_path):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedding_model_path)
    reference = AutoModel.from_pretrained(embedding_model_path).eval()
    session = _session(build_bert_onnx(embedding_model_path, kind="embedder"))
    texts = QUERIES + PASSAGES
    feed = _feed(tokenizer, texts, max_length=512)
    got = session.run(None, feed)[0]
    want = _torch_out(reference, feed)
    assert got.shape == want.shape == (len(texts), 512, 384)
    # the states of real tokens; those of padding (which pooling ignores) differ by up to 2e-4 even
    # between transformers' own eager and SDPA attention
    real = feed["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


def test_embedder_through_runtime_class_matches_sentence_transformer(embedding_model_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    from es_rerank.runtime import load_embedder

    texts = QUERIES + PASSAGES  # LONG exceeds max_seq_length 256: both truncate
    got = load_embedder(embedding_model_path, backend="onnx", batch_size=3).embed(texts)
    want = SentenceTransformer(embedding_model_path, device="cpu").encode(texts, convert_to_numpy=True)
    cosine = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() > 0.99999, cosine


@pytest.mark.parametrize("kind", ["cross-encoder", "embedder"])
def test_open_bert_session_equals_the_serialized_graph(shared_ce, embedding_model_path, kind):
    """Weights handed over as arrays: the same outputs, also once the caller's references are gone.

    (ONNX Runtime 1.32 happens to copy them; its documented contract says they must outlive the
    session, so the session holds them.)
    """
    import gc

    from transformers import AutoTokenizer

    model_dir = shared_ce if kind == "cross-encoder" else embedding_model_path
    feed = _feed(AutoTokenizer.from_pretrained(model_dir), [q for q, _ in PAIRS[:6]], [p for _, p in PAIRS[:6]],
                 max_length=128)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = open_bert_session(model_dir, kind=kind, options=options)
    gc.collect()
    litter = [np.full(1_000_000, 7.0) for _ in range(40)]  # reuse any memory freed too early
    got = session.run(None, feed)[0]
    del litter
    want = _session(build_bert_onnx(model_dir, kind=kind)).run(None, feed)[0]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert [o.name for o in session.get_outputs()] == ["output"]


def test_module_builds_and_runs_with_torch_blocked(shared_ce):
    """Import, build and score in a process where importing torch (or transformers) fails."""
    from transformers import AutoModelForSequenceClassification

    script = f"""
import json, sys
sys.modules["torch"] = None
sys.modules["transformers"] = None
sys.modules["sentence_transformers"] = None
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
from es_rerank.runtime.bert_onnx import build_bert_onnx, open_bert_session
model = {shared_ce!r}
session = ort.InferenceSession(build_bert_onnx(model, kind="cross-encoder").SerializeToString(),
                               providers=["CPUExecutionProvider"])
in_memory = open_bert_session(model, kind="cross-encoder")
tok = Tokenizer.from_file(model + "/tokenizer.json")
tok.enable_padding()
tok.enable_truncation(192)
enc = tok.encode_batch({[tuple(p) for p in PAIRS[:5]]!r})
feed = {{"input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}}
print(json.dumps({{"logits": session.run(None, feed)[0][:, 0].tolist(), "torch": sys.modules["torch"] is None,
                  "in_memory": in_memory.run(None, feed)[0][:, 0].tolist(),
                  "feed": {{k: v.tolist() for k, v in feed.items()}}}}))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] is True  # nothing replaced the blocked module
    # the same inputs through transformers give the same logits
    feed = {k: np.array(v, np.int64) for k, v in result["feed"].items()}
    want = _torch_out(AutoModelForSequenceClassification.from_pretrained(shared_ce).eval(), feed)[:, 0]
    np.testing.assert_allclose(result["logits"], want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(result["in_memory"], want, atol=1e-4, rtol=0)


# --- weight layouts ------------------------------------------------------------------------------

def _copy_model(src: str | Path, dest: Path, rename=None, transform=None) -> Path:
    """A copy of a model folder with its weights renamed or converted (numpy only)."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dest)
    tensors = load_file(str(Path(src) / "model.safetensors"))
    if rename is not None:
        tensors = {rename(k): v for k, v in tensors.items()}
    if transform is not None:
        tensors = transform(tensors)
    (dest / "model.safetensors").unlink()
    if tensors is not None:
        save_file(tensors, str(dest / "model.safetensors"))
    return dest


def _run(proto, tokenizer_dir, texts=("a short text", "Ünïcödé 東京 🧬 and a somewhat longer second text")):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tok.enable_padding()
    enc = tok.encode_batch(list(texts))
    feed = {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
    return _session(proto).run(None, feed)[0]


@pytest.fixture(scope="module")
def embedder_reference(embedding_model_path):
    return _run(build_bert_onnx(embedding_model_path, kind="embedder"), embedding_model_path)


def test_legacy_layer_norm_names(embedding_model_path, embedder_reference, tmp_path):
    def legacy(name: str) -> str:
        if ".LayerNorm." in name:
            return name.replace(".weight", ".gamma").replace(".bias", ".beta")
        return name

    folder = _copy_model(embedding_model_path, tmp_path / "legacy", rename=legacy)
    np.testing.assert_array_equal(_run(build_bert_onnx(folder, kind="embedder"), folder), embedder_reference)


def test_bert_prefix_and_sharded_weights(embedding_model_path, embedder_reference, tmp_path):
    """``bert.``-prefixed weights split across two shards with an index, as transformers writes them."""
    from safetensors.numpy import save_file

    folder = tmp_path / "sharded"

    def shard(tensors):
        names = sorted(tensors)
        halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for file, part in halves.items():
            save_file({n: tensors[n] for n in part}, str(folder / file))
        index = {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        return None

    _copy_model(embedding_model_path, folder, rename=lambda n: "bert." + n, transform=shard)
    assert [f.name for f in read_bert_spec(folder, kind="embedder").weight_files] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    np.testing.assert_array_equal(_run(build_bert_onnx(folder, kind="embedder"), folder), embedder_reference)


def test_sentence_transformers_folder_with_transformer_in_a_subfolder(embedding_model_path, embedder_reference,
                                                                     tmp_path):
    src = Path(embedding_model_path)
    root = tmp_path / "st"
    shutil.copytree(src / "1_Pooling", root / "1_Pooling")
    inner = root / "0_Transformer"
    inner.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(src / name, inner / name)
    modules = json.loads((src / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (root / "modules.json").write_text(json.dumps(modules))
    assert read_bert_spec(root, kind="embedder").transformer_dir == inner
    np.testing.assert_array_equal(_run(build_bert_onnx(root, kind="embedder"), inner), embedder_reference)


def test_bf16_weights_match_transformers_loading_them(embedding_model_path, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoTokenizer

    folder = tmp_path / "bf16"
    shutil.copytree(embedding_model_path, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()},
              str(folder / "model.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    feed = _feed(tokenizer, QUERIES + PASSAGES, max_length=128)
    got = _session(build_bert_onnx(folder, kind="embedder")).run(None, feed)[0]
    want = _torch_out(AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval(), feed)
    real = feed["attention_mask"].astype(bool)  # padding's states are noise (see above)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)
    original = _session(build_bert_onnx(embedding_model_path, kind="embedder")).run(None, feed)[0]
    assert np.abs(got - original).max() > 1e-3  # the bf16 weights were really read, not the originals


# --- the graph -----------------------------------------------------------------------------------

def test_graph_interface_and_ops(shared_ce, embedding_model_path, tmp_path):
    import onnx

    for model_dir, kind, out_dims in ((shared_ce, "cross-encoder", ["batch", 1]),
                                      (embedding_model_path, "embedder", ["batch", "sequence", 384])):
        proto = build_bert_onnx(model_dir, kind=kind)
        onnx.checker.check_model(proto, full_check=True)
        assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
        assert [(i.name, i.type.tensor_type.elem_type, [d.dim_param for d in i.type.tensor_type.shape.dim])
                for i in proto.graph.input] == [(n, onnx.TensorProto.INT64, ["batch", "sequence"])
                                               for n in ("input_ids", "attention_mask", "token_type_ids")]
        (out,) = proto.graph.output
        assert out.name == "output"
        assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == out_dims
        ops = {n.op_type for n in proto.graph.node}
        assert {"LayerNormalization", "Softmax", "Erf", "MatMul"} <= ops
        assert all(i.data_type == onnx.TensorProto.FLOAT for i in proto.graph.initializer
                   if i.name.endswith((".weight", ".bias")))
    # ONNX Runtime's online optimizer recognises the GELU and the scaled attention product
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(build_bert_onnx(shared_ce, kind="cross-encoder").SerializeToString(), opts,
                         providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused.count("BiasGelu") == 6 and fused.count("FusedMatMul") == 6 and "Erf" not in fused


def test_spec_reads_the_config(shared_ce, embedding_model_path):
    ce = read_bert_spec(shared_ce, kind="cross-encoder")
    assert (ce.hidden_size, ce.num_heads, ce.num_layers, ce.intermediate_size, ce.max_positions, ce.num_labels) == \
        (384, 12, 6, 1536, 512, 1)
    emb = read_bert_spec(embedding_model_path, kind="embedder")
    assert (emb.num_labels, emb.layer_norm_eps, emb.transformer_dir) == (0, 1e-12, Path(embedding_model_path))


# --- what is refused -----------------------------------------------------------------------------

@pytest.fixture
def small_model(embedding_model_path, tmp_path) -> Path:
    """A writable copy of the embedder folder (config and files edited per test)."""
    dest = tmp_path / "model"
    shutil.copytree(embedding_model_path, dest)
    return dest


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


HINT = r"pip install 'es-rerank\[torch\]'.*es-rerank export-onnx"


@pytest.mark.parametrize("changes, kind, match", [
    ({"model_type": "roberta"}, "embedder", r"model_type 'roberta' is not 'bert'.*" + HINT),
    ({"hidden_act": "gelu_new"}, "embedder", r"hidden_act 'gelu_new'.*supports BERT.*" + HINT),
    ({"position_embedding_type": "relative_key"}, "embedder", r"position_embedding_type 'relative_key'"),
    ({}, "cross-encoder", r"must be BertForSequenceClassification, architectures is \['BertModel'\]"),
    ({"architectures": ["DistilBertModel"]}, "embedder", r"architectures \['DistilBertModel'\] are not all BERT"),
    ({"is_decoder": True}, "embedder", r"is_decoder"),
    ({"num_attention_heads": 5}, "embedder", r"hidden_size 384 is not a multiple of num_attention_heads 5"),
    ({"num_hidden_layers": 0}, "embedder", r"num_hidden_layers must be a positive integer, got 0"),
])
def test_unsupported_configs_are_refused(small_model, changes, kind, match):
    (small_model / "modules.json").unlink()  # a plain transformers folder: the config decides
    _edit_config(small_model, **changes)
    with pytest.raises(ConfigError, match=match):
        build_bert_onnx(small_model, kind=kind)


def test_weights_that_disagree_with_the_config_are_named(small_model):
    _edit_config(small_model, intermediate_size=1024)
    with pytest.raises(ConfigError, match=r"'encoder.layer.0.intermediate.dense.weight' has shape \[1536, 384\], "
                                          r"config.json implies \[1024, 384\]"):
        build_bert_onnx(small_model, kind="embedder")
    _edit_config(small_model, intermediate_size=1536, num_hidden_layers=5)
    with pytest.raises(ConfigError, match="num_hidden_layers is 5 but the weights hold more layers"):
        build_bert_onnx(small_model, kind="embedder")


def test_a_cross_encoder_without_a_classifier_is_named(small_model):
    (small_model / "modules.json").unlink()
    _edit_config(small_model, architectures=["BertForSequenceClassification"])
    with pytest.raises(ConfigError, match=r"weight 'classifier.weight' not found in model.safetensors"):
        build_bert_onnx(small_model, kind="cross-encoder")


def test_pytorch_bin_only_is_refused(small_model):
    (small_model / "model.safetensors").rename(small_model / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"no model.safetensors \(found pytorch_model.bin\).*safetensors weights "
                                          r"only.*" + HINT):
        read_bert_spec(small_model, kind="embedder")


def test_sentence_transformers_modules_the_runtime_cannot_reproduce(small_model):
    with pytest.raises(ConfigError, match=r"module types \['Pooling', 'Normalize'\] are not supported for kind "
                                          r"'cross-encoder'"):
        read_bert_spec(small_model, kind="cross-encoder")  # an embedder folder is no cross-encoder
    pooling = small_model / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"1_Pooling/config.json: pooling \['cls_token'\] is not supported"):
        read_bert_spec(small_model, kind="embedder")
    pooling.write_text(json.dumps({"embedding_dimension": 384, "pooling_mode": "mean"}))  # the v6 format
    assert read_bert_spec(small_model, kind="embedder").hidden_size == 384
    modules = json.loads((small_model / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (small_model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match=r"module types \['Dense'\] are not supported for kind 'embedder'"):
        read_bert_spec(small_model, kind="embedder")


def test_bad_arguments_and_files(small_model, tmp_path):
    with pytest.raises(ConfigError, match="kind must be one of cross-encoder, embedder, got 'reranker'"):
        read_bert_spec(small_model, kind="reranker")
    with pytest.raises(ConfigError, match="not found"):
        read_bert_spec(tmp_path / "missing", kind="embedder")
    (small_model / "config.json").write_text('{\n  "model_type": "bert",\n  oops\n}')
    with pytest.raises(ConfigError, match=r"config.json:3: invalid JSON"):
        read_bert_spec(small_model, kind="embedder")
    (small_model / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"config.json not found"):
        read_bert_spec(small_model, kind="embedder")
