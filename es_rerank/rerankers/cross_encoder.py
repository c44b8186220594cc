"""Cross-encoder reranking with sentence-transformers' ``CrossEncoder``."""

from __future__ import annotations

import logging
import math
import threading
from typing import Sequence

from ..config import DEFAULT_RERANKER_MODEL
from ..errors import ConfigError, RerankerError

logger = logging.getLogger(__name__)


class CrossEncoderReranker:
    """Reads the query and each candidate together and returns the model's score.

    The model loads on first use. Scores are raw logits (the model's own scale)
    unless ``normalize=True``, which applies a sigmoid (monotonic: the order is the same).

    Args:
        model: Hub name or local folder. Defaults to ``cross-encoder/ms-marco-MiniLM-L-6-v2``.
        device: Torch device; None lets sentence-transformers choose.
        batch_size: Pairs per forward pass. Defaults to 32.
        max_length: Token limit of a pair; None keeps the model's configured limit.
        normalize: Return sigmoid(logit) in [0, 1] instead of the logit. Defaults to False.
        bf16: Run the model in bfloat16 (about 1.7x faster on CPUs with AVX512-BF16/AMX,
            rankings nearly unchanged; see benchmarks/). Defaults to False.

    Example:
        >>> ce = CrossEncoderReranker("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
        >>> ce.score("close account", ["How to close your account", "Pricing"])  # doctest: +SKIP
        [7.1, -10.9]
    """

    def __init__(self, model: str = DEFAULT_RERANKER_MODEL, *, device: str | None = None,
                 batch_size: int = 32, max_length: int | None = None, normalize: bool = False,
                 bf16: bool = False):
        if batch_size < 1:
            raise ConfigError(f"rerank batch_size must be >= 1, got {batch_size}")
        if max_length is not None and max_length < 8:
            raise ConfigError(f"rerank max_length must be >= 8, got {max_length}")
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.normalize = normalize
        self.bf16 = bf16
        self.name = f"cross-encoder:{model}" + (" (bf16)" if bf16 else "")
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def load(self) -> None:
        """Load the model now rather than at the first score."""
        _ = self.model

    def _load(self):
        try:
            import torch
            from sentence_transformers import CrossEncoder

            # Identity activation: keep raw logits (a model's config may ask for a sigmoid).
            model = CrossEncoder(self.model_name, device=self.device, max_length=self.max_length,
                                 activation_fn=torch.nn.Identity())
            if self.bf16:
                model.model.to(torch.bfloat16)
            return model
        except Exception as e:  # the library raises OSError, ValueError, HF errors...
            raise RerankerError(
                f"could not load cross-encoder {self.model_name!r}: {e}. Offline, set "
                "ES_RERANK_RERANKER_MODEL to a local model folder and HF_HUB_OFFLINE=1"
            ) from e

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        pairs = [(query, t) for t in texts]
        raw = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False,
                                 convert_to_numpy=True)
        scores = [float(x) for x in raw.reshape(len(texts), -1)[:, 0]]
        if self.normalize:
            scores = [1.0 / (1.0 + math.exp(-s)) if s > -700 else 0.0 for s in scores]
        return scores
