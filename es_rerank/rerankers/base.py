"""The reranker protocol every backend implements."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable


@runtime_checkable
class Reranker(Protocol):
    """Scores candidates against a query; a higher score means more relevant.

    ``score`` returns one float per text, in the order given. Scores are on the
    backend's own scale (raw logits for cross-encoders); only their order matters
    to the pipeline.
    """

    name: str

    def score(self, query: str, texts: Sequence[str]) -> list[float]: ...
