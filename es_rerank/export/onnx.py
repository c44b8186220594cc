"""Export a sentence-transformers model folder (or hub name) to ONNX, and quantize it.

``export_onnx`` writes ``model.onnx`` (fp32) and, with ``quantize="int8"``, ``model_int8.onnx``
(ONNX Runtime dynamic quantization: int8 weights, activations quantized on the fly). The
files run on the ``onnx`` / ``onnx-int8`` backends with only ``onnxruntime`` and
``tokenizers``: no torch at query time.

Example:
    >>> export_onnx("path/to/cross-encoder", "ce-onnx", kind="cross-encoder", quantize="int8")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..errors import ConfigError

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

    from ..runtime.files import resolve_model

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
