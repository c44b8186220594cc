"""Export models to OpenVINO IR, optionally with calibrated static int8 quantization.

``export_openvino`` exports a model folder to ONNX (see :mod:`es_rerank.export.onnx`), converts
it to OpenVINO IR (``openvino_model.xml``) and, with ``quantize="int8"``, writes
``openvino_model_int8.xml``: static int8 quantization by NNCF, calibrated on real
(query, candidate) pairs or texts. Static quantization fixes each activation's scale from the
calibration data, so no time is spent quantizing at run time, and OpenVINO fuses attention into
one kernel. The files run on the ``openvino`` / ``openvino-int8`` backends
(:class:`es_rerank.runtime.sessions.OpenVinoSession`).

Which layers stay in floating point: the feed-forward output projections of the first half of
the encoder. Their inputs (GELU outputs) have the widest ranges, and on the SciFact cross-encoder
keeping layers 0-2 of 6 unquantized raised top-5 overlap with fp32 from 0.93 to 0.97 over 60
queries, for about 10% of the int8 speed (see benchmarks/ and results/speed/).

Example:
    >>> export_openvino("path/to/cross-encoder", "ce-ov", quantize="int8",
    ...                 calibration=[("a query", "a passage")] * 64)         # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from ..client import Searcher
from ..errors import ConfigError, ModelError
from ..runtime.heads import CrossEncoderHead, EmbedderHead
from .onnx import KINDS, export_onnx

logger = logging.getLogger(__name__)

FP_FILE = "openvino_model.xml"
INT8_FILE = "openvino_model_int8.xml"
MIN_CALIBRATION = 16


class _InputsOnly:
    """Stands in for a session where only tokenization and padding are needed (calibration)."""

    parallel_batches = 1

    def __init__(self, input_names: Sequence[str]):
        self.input_names = list(input_names)


def _keep_in_float(n_layers: int) -> list[str]:
    """Name patterns of the layers int8 leaves alone: the first half's FFN output projections."""
    keep = "|".join(str(i) for i in range(max(1, n_layers // 2)))
    return [rf".*layer\.({keep})/output/dense/MatMul.*"]


def export_openvino(model: str, out_dir: str | Path, *, kind: str = "cross-encoder", quantize: str | None = None,
                    calibration: Sequence | None = None, batch_size: int = 8) -> list[Path]:
    """Export a model to OpenVINO IR, optionally with a statically quantized int8 copy.

    Args:
        model: A sentence-transformers CrossEncoder or SentenceTransformer folder or hub name.
        out_dir: Where the ``.xml``/``.bin`` files, ``model.onnx`` and the tokenizer go.
        kind: ``cross-encoder`` or ``embedder``.
        quantize: None or ``int8``.
        calibration: With int8: (query, text) pairs for a cross-encoder, texts for an
            embedder, like those the model will see (at least 16; a few hundred is plenty).
        batch_size: Calibration batch size. Defaults to 8.

    Returns:
        The IR files written (``.xml``; each has a ``.bin`` beside it).

    Raises:
        ConfigError: Unknown kind or quantization, or too little calibration data.
        ModelError: OpenVINO or NNCF is not installed.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize must be None or 'int8', got {quantize!r}")
    calibration = list(calibration or [])
    if quantize == "int8" and len(calibration) < MIN_CALIBRATION:
        raise ConfigError(f"int8 quantization needs at least {MIN_CALIBRATION} calibration "
                          f"{'(query, text) pairs' if kind == 'cross-encoder' else 'texts'}, got {len(calibration)}")
    if quantize == "int8" and kind == "cross-encoder" and not all(
            isinstance(c, (tuple, list)) and len(c) == 2 for c in calibration):
        raise ConfigError("cross-encoder calibration items must be (query, text) pairs")
    ov, nncf = _import(need_nncf=quantize == "int8")
    out = Path(out_dir)
    onnx_path = export_onnx(model, out, kind=kind)[0]
    fp = out / FP_FILE
    ov.save_model(ov.convert_model(onnx_path), fp, compress_to_fp16=False)
    files = [fp]
    if quantize == "int8":
        # the runtime's own tokenization and padding, without starting a runtime
        inputs = json.loads((out / "es_rerank_onnx.json").read_text())["inputs"]
        reader = (CrossEncoderHead if kind == "cross-encoder" else EmbedderHead)(_InputsOnly(inputs), out)
        items = [tuple(c) for c in calibration] if kind == "cross-encoder" else [str(c) for c in calibration]
        feeds = [feed for _, feed in reader.feeds(items, batch_size)]
        n_layers = json.loads((out / "config.json").read_text()).get("num_hidden_layers", 6)
        logging.getLogger("nncf").setLevel(logging.WARNING)  # its INFO lines list every node it skips
        quantized = nncf.quantize(
            ov.Core().read_model(fp), nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(feeds), ignored_scope=nncf.IgnoredScope(patterns=_keep_in_float(n_layers), validate=False))
        int8 = out / INT8_FILE
        ov.save_model(quantized, int8, compress_to_fp16=False)
        files.append(int8)
        meta = out / "es_rerank_onnx.json"
        info = json.loads(meta.read_text())
        info["openvino_int8"] = {"calibration_items": len(items), "kept_in_float": _keep_in_float(n_layers)}
        meta.write_text(json.dumps(info))
    return files


def read_queries(path: str | Path) -> list[str]:
    """Queries from a file: one per line, or JSONL lines with ``text`` (BEIR) or ``query``."""
    queries = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{n}: invalid JSON: {e.msg}") from e
                text = obj.get("text", obj.get("query")) if isinstance(obj, dict) else None
                if not isinstance(text, str) or not text.strip():
                    raise ConfigError(f"{path}:{n}: a JSON line needs a non-empty 'text' or 'query'")
                line = text.strip()
            queries.append(line)
    if not queries:
        raise ConfigError(f"{path}: no queries")
    return queries


def calibration_from_index(settings, queries: Sequence[str], *, kind: str = "cross-encoder",
                           depth: int = 10) -> list:
    """Calibration data from real retrieval: (query, candidate) pairs, or texts for an embedder.

    Each query's top ``depth`` hybrid candidates come from ``settings.index``, so the pairs look
    like what the reranker will score. For an embedder the queries and the chunk texts are used.
    """
    items: list = []
    with Searcher(settings.replace(reranker="none")) as searcher:
        for query in queries:
            texts = [h.passage for h in searcher.retrieve(query, depth=depth).hits]
            items += [(query, t) for t in texts] if kind == "cross-encoder" else [query, *texts]
    return items


def _import(*, need_nncf: bool = False):
    try:
        import openvino as ov

        nncf = None
        if need_nncf:
            import nncf
    except ImportError as e:
        raise ModelError("exporting to OpenVINO needs openvino (and nncf to quantize): "
                            "pip install 'es-rerank[openvino]'") from e
    return ov, nncf
