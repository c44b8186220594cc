"""Model runtimes: load a cross-encoder or an embedder on a backend, behind one surface.

Ground-floor code: it imports nothing above :mod:`es_rerank.config`, :mod:`es_rerank.errors`
and :mod:`es_rerank.types`. Export, quantization and calibration (build-time tools) live in
:mod:`es_rerank.export`.

Backends (a registry, :data:`BACKENDS`):

- ``onnx`` (default): ONNX Runtime, fp32, with only ``onnxruntime`` and ``tokenizers``
  installed. Reads an exported or hub-published ``model.onnx``, or builds the graph of a
  BERT folder's safetensors weights in memory.
- ``onnx-int8``: ONNX Runtime on a dynamically quantized copy (``export-onnx --quantize int8``).
- ``openvino`` / ``openvino-int8``: OpenVINO IR (``export-onnx --openvino [--quantize int8]``).
- ``torch`` / ``torch-bf16``: sentence-transformers (``pip install 'es-rerank[torch]'``).

A loaded cross-encoder has ``score_pairs(pairs) -> ndarray``; an embedder has
``embed(texts) -> ndarray``, ``offsets(text)`` (token spans for chunking) and ``dimensions``.

Example:
    >>> ce = load_cross_encoder("cross-encoder/ms-marco-MiniLM-L-6-v2")    # doctest: +SKIP
    >>> ce.score_pairs([("close account", "How to close your account")])  # doctest: +SKIP
    array([7.1])
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError, ModelError
from .files import model_folder, model_source, resolve_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """How a backend loads a head of each kind."""

    name: str
    load: Callable[..., Any]
    kinds: tuple[str, ...] = ("cross-encoder", "embedder")


def _load_exported(backend: str, model: str, kind: str, *, batch_size: int, max_length: int | None,
                   device: str | None = None):
    from .heads import CrossEncoderHead, EmbedderHead
    from .sessions import OnnxSession, OpenVinoSession

    folder = model_folder(model, backend)
    source, label = model_source(folder, backend, kind)
    try:
        if backend.startswith("openvino"):
            session = OpenVinoSession(source)
        elif source is None:
            session = OnnxSession.from_bert_weights(folder, kind=kind)
        else:
            session = OnnxSession(source)
    except (ModelError, ConfigError):
        raise
    except Exception as e:  # a runtime rejecting the file
        raise ModelError(f"{backend} could not load {folder}/{label}: {e}") from e
    head_cls = CrossEncoderHead if kind == "cross-encoder" else EmbedderHead
    head = head_cls(session, folder, batch_size=batch_size, max_length=max_length)
    head.description = f"{backend}:{label}"
    return head


def _load_torch(backend: str, model: str, kind: str, *, batch_size: int, max_length: int | None,
                device: str | None = None):
    from .torch_models import TorchCrossEncoder, TorchEmbedder

    if kind == "cross-encoder":
        return TorchCrossEncoder(resolve_model(model), device=device, batch_size=batch_size, max_length=max_length,
                                 bf16=backend == "torch-bf16")
    return TorchEmbedder(resolve_model(model), device=device, batch_size=batch_size)


BACKENDS: dict[str, Backend] = {
    "onnx": Backend("onnx", _load_exported),
    "onnx-int8": Backend("onnx-int8", _load_exported),
    "openvino": Backend("openvino", _load_exported),
    "openvino-int8": Backend("openvino-int8", _load_exported),
    "torch": Backend("torch", _load_torch),
    "torch-bf16": Backend("torch-bf16", _load_torch, kinds=("cross-encoder",)),
}


def _backend(name: str, kind: str) -> Backend:
    backend = BACKENDS.get(name)
    if backend is None or kind not in backend.kinds:
        allowed = [b.name for b in BACKENDS.values() if kind in b.kinds]
        raise ConfigError(f"{kind} backend must be one of {', '.join(allowed)}, got {name!r}")
    return backend


def load_cross_encoder(model: str, *, backend: str = "onnx", batch_size: int = 32, max_length: int | None = None,
                       device: str | None = None):
    """Load a cross-encoder on ``backend``.

    Raises:
        ConfigError: Unknown backend.
        ModelError: The model or its runtime cannot be loaded (the message says what to do).
    """
    b = _backend(backend, "cross-encoder")
    try:
        return b.load(backend, model, "cross-encoder", batch_size=batch_size, max_length=max_length, device=device)
    except (ModelError, ConfigError):
        raise
    except Exception as e:  # libraries raise OSError, ValueError, hub errors ...
        raise ModelError(f"the {backend} backend failed to load {model!r}: {e}. Offline, set "
                            "ES_RERANK_RERANKER_MODEL to a local model folder and HF_HUB_OFFLINE=1") from e


def load_embedder(model: str, *, backend: str = "onnx", batch_size: int = 32, device: str | None = None):
    """Load an embedder on ``backend``.

    Raises:
        ConfigError: Unknown backend.
        ModelError: The model or its runtime cannot be loaded.
    """
    b = _backend(backend, "embedder")
    try:
        return b.load(backend, model, "embedder", batch_size=batch_size, max_length=None, device=device)
    except (ModelError, ConfigError):
        raise
    except Exception as e:
        raise ModelError(f"the {backend} backend failed to load embedder {model!r}: {e}. Offline, set "
                            "ES_RERANK_EMBEDDING_MODEL to a local model folder and HF_HUB_OFFLINE=1") from e


__all__ = ["BACKENDS", "LazyModel", "load_cross_encoder", "load_embedder", "resolve_model", "model_folder",
           "model_source", "timed_load"]


class LazyModel:
    """A model loaded on first use: once, under a lock (threads share it), timed and logged.

    Args:
        load: Builds the model (e.g. ``lambda: load_embedder(name)``).
        what: Named in the log line ("embedder all-MiniLM-L6-v2 (onnx)").

    Example:
        >>> lazy = LazyModel(lambda: object(), "a model")
        >>> lazy.get() is lazy.get(), lazy.load_seconds is not None
        (True, True)
    """

    def __init__(self, load: Callable[[], Any], what: str):
        self._load = load
        self.what = what
        self.load_seconds: float | None = None
        self._model: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    started = time.perf_counter()
                    logger.info("loading %s", self.what)
                    self._model = self._load()
                    self.load_seconds = time.perf_counter() - started
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None


def timed_load(model: Any) -> float:
    """Call ``model.load()`` when it has one (loading it now); returns the seconds it took."""
    started = time.perf_counter()
    load = getattr(model, "load", None)
    if callable(load):
        load()
    return time.perf_counter() - started
