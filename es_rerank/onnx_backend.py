"""ONNX Runtime backends for the cross-encoder and the embedder, and the export that makes them.

``export_onnx`` turns a sentence-transformers model folder into ``model.onnx`` (fp32) and,
with ``quantize="int8"``, ``model_int8.onnx`` (ONNX Runtime dynamic quantization: int8
weights, activations quantized on the fly). Inference then needs only ``onnxruntime`` and
``tokenizers``: no torch at query time.

Example:
    >>> export_onnx("path/to/cross-encoder", "ce-onnx", kind="cross-encoder", quantize="int8")  # doctest: +SKIP
    >>> OnnxCrossEncoder("ce-onnx", file_name="model_int8.onnx").score("q", ["a", "b"])        # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ConfigError, RerankerError

logger = logging.getLogger(__name__)

KINDS = ("cross-encoder", "embedder")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def export_onnx(model: str, out_dir: str | Path, *, kind: str = "cross-encoder", quantize: str | None = None,
                opset: int = 17) -> list[Path]:
    """Export a model folder (or hub name) to ONNX, optionally with an int8 copy.

    Args:
        model: A sentence-transformers CrossEncoder or SentenceTransformer folder or hub name.
        out_dir: Where ``model.onnx``, ``model_int8.onnx`` and the tokenizer files go.
        kind: ``cross-encoder`` (sequence-classification logits) or ``embedder``
            (token embeddings; mean pooling happens at inference).
        quantize: None or ``int8`` (dynamic quantization of the fp32 export).
        opset: ONNX opset. Defaults to 17.

    Returns:
        The ONNX files written.

    Raises:
        ConfigError: Unknown kind or quantization.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize must be None or 'int8', got {quantize!r}")
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from .embedding import resolve_model

    source = resolve_model(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cls = AutoModelForSequenceClassification if kind == "cross-encoder" else AutoModel
    # Eager attention exports as plain MatMul/Softmax, which runtimes fuse into one attention
    # kernel; the SDPA export adds IsNaN/Select nodes that OpenVINO left unfused (28% of the
    # time of a depth-50 rerank, measured). The scores are the same either way.
    hf = cls.from_pretrained(source, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.save_pretrained(out)
    if Path(source).is_dir():
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file() and not (out / name).exists():
                shutil.copy(Path(source) / name, out / name)
    hf.config.save_pretrained(out)
    sample = tokenizer(["a query"], ["a passage of text"], return_tensors="pt") if kind == "cross-encoder" \
        else tokenizer(["a passage of text"], return_tensors="pt")
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in sample else [])

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            outputs = self.inner(**dict(zip(names, args)))
            return outputs.logits if kind == "cross-encoder" else outputs.last_hidden_state

    fp32 = out / "model.onnx"
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
    dynamic["output"] = {0: "batch"} if kind == "cross-encoder" else {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(Wrapped(hf), tuple(sample[n] for n in names), str(fp32), input_names=names,
                          output_names=["output"], dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    (out / "es_rerank_onnx.json").write_text(json.dumps({"kind": kind, "inputs": names, "source": model}))
    return [fp32] + ([quantize_onnx(out)] if quantize == "int8" else [])


def quantize_onnx(out_dir: str | Path) -> Path:
    """Write ``model_int8.onnx`` beside an exported ``model.onnx``: dynamic int8, per-channel weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = Path(out_dir) / "model_int8.onnx"
    quantize_dynamic(str(Path(out_dir) / "model.onnx"), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    return int8


class _OnnxModel:
    """Shared loading: a tokenizer.json, an ONNX session, thread settings."""

    export_hint = "es-rerank export-onnx MODEL [--quantize int8]"

    def __init__(self, model_dir: str | Path, *, file_name: str = "model.onnx", max_length: int | None = None,
                 batch_size: int = 32, threads: int | None = None):
        self.model_dir = Path(model_dir)
        self.file_name = file_name
        self.max_length = max_length
        self.batch_size = batch_size
        self.threads = threads
        self._session = None
        self._tokenizer = None
        self._inputs: list[str] = []
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the session and tokenizer now rather than at the first call."""
        self._load()

    def _load(self):
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            path = self.model_dir / self.file_name
            if not path.is_file():
                raise RerankerError(f"{path} not found: create it with `{self.export_hint}`")
            self._load_tokenizer()
            self._session = self._open(path)

    def _load_tokenizer(self) -> None:
        """The fast tokenizer from ``tokenizer.json``; no runtime needed (export uses it alone)."""
        if self._tokenizer is not None:
            return
        from tokenizers import Tokenizer

        if self.max_length is None:
            self.max_length = self._configured_max_length()
        tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()
        self._tokenizer = tok

    def _open(self, path: Path):
        """Start the runtime on ``path``; return ``infer(feed) -> first output``. Sets ``self._inputs``."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RerankerError("the ONNX backend needs onnxruntime: pip install 'es-rerank[onnx]'") from e
        opts = ort.SessionOptions()
        # one intra-op pool sized to the cores; no inter-op pool (sequential graph)
        opts.intra_op_num_threads = self.threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in session.get_inputs()]
        return lambda feed: session.run(None, feed)[0]

    def _configured_max_length(self) -> int:
        """The model's own limit, as sentence-transformers would use it (capped at 512)."""
        for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
            path = self.model_dir / name
            if path.is_file():
                value = json.loads(path.read_text()).get(key)
                if isinstance(value, int) and 0 < value:
                    return min(value, 512)
        return 512

    def _feed(self, encodings) -> dict[str, np.ndarray]:
        """One batch as model inputs, padded to its longest member."""
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {k: feed[k] for k in self._inputs}

    def _batches(self, encodings, batch_size: int | None = None):
        """(positions, feed) per batch, longest first, so that a batch holds similar lengths."""
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        size = batch_size or self.batch_size
        if self.parallel_batches > 1 and len(order) > 1:
            # as many equal batches as there are parallel runners (or a multiple): none idles at the end
            n = -(-len(order) // size)
            n = -(-n // self.parallel_batches) * self.parallel_batches
            size = -(-len(order) // min(n, len(order)))
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            yield idx, self._feed([encodings[i] for i in idx])

    parallel_batches = 1  # batches the runtime runs at once (see _run_batches)

    def _run_batches(self, batches):
        """(positions, feed, first output) for each batch; ONNX Runtime runs them one by one."""
        for idx, feed in batches:
            yield idx, feed, self._session(feed)

    def _encode(self, inputs: list) -> list:
        """Tokenize texts (embedder) or (query, text) pairs (cross-encoder, candidate truncated)."""
        self._load_tokenizer()
        tok = self._tokenizer
        tok.enable_truncation(self.max_length, strategy="only_second" if inputs and isinstance(inputs[0], tuple)
                              else "longest_first")
        return tok.encode_batch(inputs)


class OnnxCrossEncoder(_OnnxModel):
    """A cross-encoder on ONNX Runtime: raw logits, candidates batched by length.

    Pairs longer than ``max_length`` (default: the model's configured limit) lose tokens
    from the candidate, never the query.
    """

    def __init__(self, model_dir: str | Path, *, file_name: str = "model.onnx", max_length: int | None = None,
                 batch_size: int = 32, threads: int | None = None):
        super().__init__(model_dir, file_name=file_name, max_length=max_length, batch_size=batch_size,
                         threads=threads)
        self.name = f"cross-encoder-onnx:{Path(model_dir).name}/{file_name}"

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        self._load()
        encodings = self._encode([(query, t) for t in texts])
        scores = np.empty(len(texts), dtype=np.float64)
        for idx, _, logits in self._run_batches(self._batches(encodings)):
            scores[idx] = np.asarray(logits).reshape(len(idx), -1)[:, 0]
        return [float(x) for x in scores]


class OnnxEmbedder(_OnnxModel):
    """A sentence-transformers bi-encoder on ONNX Runtime: mean pooling, L2-normalized."""

    def __init__(self, model_dir: str | Path, *, file_name: str = "model.onnx", max_length: int | None = None,
                 batch_size: int = 32, threads: int | None = None):
        super().__init__(model_dir, file_name=file_name, max_length=max_length, batch_size=batch_size,
                         threads=threads)
        self.model_name = str(model_dir)

    @property
    def dimensions(self) -> int:
        return int(self.embed_documents(["x"]).shape[1])

    @property
    def tokenizer(self):
        """A Hugging Face tokenizer for the chunker (offsets), loaded from the same folder."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.model_dir))

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        self._load()
        encodings = self._encode(list(texts))
        out = None
        for idx, feed, hidden in self._run_batches(self._batches(encodings)):
            m = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[idx] = pooled
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)

    def embed_query(self, text: str) -> list[float]:
        return [float(x) for x in self.embed_documents([text])[0]]


def runtime_model(backend: str, kind: str):
    """The class and file for an exported backend: ``onnx``, ``onnx-int8``, ``openvino``, ``openvino-int8``."""
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if backend in ("onnx", "onnx-int8"):
        cls = OnnxCrossEncoder if kind == "cross-encoder" else OnnxEmbedder
        return cls, "model_int8.onnx" if backend == "onnx-int8" else "model.onnx"
    if backend in ("openvino", "openvino-int8"):
        from . import openvino_backend as ovb

        cls = ovb.OpenVinoCrossEncoder if kind == "cross-encoder" else ovb.OpenVinoEmbedder
        return cls, ovb.INT8_FILE if backend == "openvino-int8" else ovb.FP_FILE
    raise ConfigError(f"{backend!r} is not an exported-model backend (onnx, onnx-int8, openvino, openvino-int8)")
