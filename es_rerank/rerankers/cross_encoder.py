"""Cross-encoder reranking: the query and each candidate read together by one model."""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

from ..config import DEFAULT_RERANKER_MODEL
from ..errors import ConfigError, ModelError, RerankerError
from ..runtime import LazyModel, load_cross_encoder
from .base import BaseReranker

logger = logging.getLogger(__name__)


class CrossEncoderReranker(BaseReranker):
    """Scores (query, candidate) pairs with a cross-encoder on one of the runtimes.

    The model loads on first use (or :meth:`load`). Scores are raw logits (the model's own
    scale) unless ``normalize=True``, which applies a sigmoid (monotonic: same order).

    Args:
        model: Hub name or local folder. Defaults to ``cross-encoder/ms-marco-MiniLM-L-6-v2``.
        backend: ``onnx`` (default), ``onnx-int8``, ``openvino``, ``openvino-int8``, ``torch``
            or ``torch-bf16`` (see :mod:`es_rerank.runtime`).
        device: Torch device for the torch backends; None lets sentence-transformers choose.
        batch_size: Pairs per forward pass. Defaults to 32.
        max_length: Token limit of a pair; None keeps the model's configured limit.
        normalize: Return sigmoid(logit) in [0, 1] instead of the logit. Defaults to False.

    Example:
        >>> ce = CrossEncoderReranker("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
        >>> ce.score("close account", ["How to close your account", "Pricing"])  # doctest: +SKIP
        [7.1, -10.9]
    """

    def __init__(self, model: str = DEFAULT_RERANKER_MODEL, *, backend: str = "onnx", device: str | None = None,
                 batch_size: int = 32, max_length: int | None = None, normalize: bool = False):
        if batch_size < 1:
            raise ConfigError(f"rerank batch_size must be >= 1, got {batch_size}")
        if max_length is not None and max_length < 8:
            raise ConfigError(f"rerank max_length must be >= 8, got {max_length}")
        self.model_name = model
        self.backend = backend
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.normalize = normalize
        self.name = f"cross-encoder:{model}" + ("" if backend == "onnx" else f" ({backend})")
        self._lazy = LazyModel(self._load, f"cross-encoder {model} ({backend})")

    def _load(self) -> Any:
        try:
            return load_cross_encoder(self.model_name, backend=self.backend, batch_size=self.batch_size,
                                      max_length=self.max_length, device=self.device)
        except ModelError as e:
            raise RerankerError(f"could not load cross-encoder {self.model_name!r}: {e}", reranker=self.name,
                                model=self.model_name) from e

    @property
    def model(self) -> Any:
        """The runtime model (loaded on first use, once, under a lock)."""
        return self._lazy.get()

    @property
    def load_seconds(self) -> float | None:
        return self._lazy.load_seconds

    def load(self) -> None:
        """Load the model now rather than at the first score."""
        _ = self.model

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        scores = [float(x) for x in self.model.score_pairs(list(pairs))]
        if self.normalize:
            scores = [1.0 / (1.0 + math.exp(-s)) if s > -700 else 0.0 for s in scores]
        return scores

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return self.score_pairs([(query, t) for t in texts])
