"""The reranker interface every backend implements, and a small base class for them.

Any object with a ``name`` and ``score(query, texts) -> list[float]`` can rerank
(:class:`Reranker`). Backends in this package derive from :class:`BaseReranker`, which
adds a no-op :meth:`~BaseReranker.load`, per-call usage (:meth:`~BaseReranker.score_with_usage`:
LLM requests and tokens of *this* call, exact under concurrency) and
:meth:`~BaseReranker.score_pairs` for batching pairs of several queries together.
:func:`as_reranker` adapts a plain object to the same surface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from ..types import Usage


@runtime_checkable
class Reranker(Protocol):
    """Scores candidates against a query; a higher score means more relevant.

    ``score`` returns one float per text, in the order given. Scores are on the
    backend's own scale (raw logits for cross-encoders); only their order matters
    to the pipeline.
    """

    name: str

    def score(self, query: str, texts: Sequence[str]) -> list[float]: ...


@dataclass(frozen=True)
class Scored:
    """Scores of one call, in input order, and what the call cost.

    Attributes:
        scores: One float per text.
        usage: LLM requests, tokens and fallbacks of this call; None for rerankers that
            call no metered service (cross-encoders).
    """

    scores: tuple[float, ...]
    usage: Usage | None = None


class BaseReranker:
    """Base for rerankers: override :meth:`score` or :meth:`score_with_usage` (or both).

    Constructors only store and validate configuration; models load lazily on first
    use or when :meth:`load` is called.
    """

    name: str = "reranker"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.score is BaseReranker.score and cls.score_with_usage is BaseReranker.score_with_usage:
            raise TypeError(f"{cls.__name__} must override score() or score_with_usage()")

    def load(self) -> None:
        """Load models or open connections now rather than at the first call (no-op here)."""

    def close(self) -> None:
        """Release threads, sessions or connections (no-op here)."""

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """One score per text, in the order given."""
        return list(self.score_with_usage(query, texts).scores)

    def score_with_usage(self, query: str, texts: Sequence[str]) -> Scored:
        """Scores and this call's usage (None unless the backend meters anything)."""
        return Scored(tuple(float(s) for s in self.score(query, texts)))

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Scores of (query, text) pairs that may belong to different queries, in input order.

        The default groups the pairs by query and calls :meth:`score` once per query;
        backends that read pairs independently (cross-encoders) score them in one batch.
        """
        groups: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            groups.setdefault(query, []).append(i)
        out = [0.0] * len(pairs)
        for query, positions in groups.items():
            for i, s in zip(positions, self.score(query, [pairs[i][1] for i in positions])):
                out[i] = float(s)
        return out


class _Adapted(BaseReranker):
    """A plain :class:`Reranker` object behind the :class:`BaseReranker` surface."""

    def __init__(self, inner: Reranker):
        self.inner = inner
        self.name = str(getattr(inner, "name", type(inner).__name__))

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return list(self.inner.score(query, texts))

    def load(self) -> None:
        load = getattr(self.inner, "load", None)
        if callable(load):
            load()


def as_reranker(obj: Reranker) -> BaseReranker:
    """``obj`` itself when it is a :class:`BaseReranker`, else an adapter around it.

    Raises:
        TypeError: ``obj`` has no callable ``score``.
    """
    if isinstance(obj, BaseReranker):
        return obj
    if not callable(getattr(obj, "score", None)):
        raise TypeError(f"a reranker needs a score(query, texts) method; got {type(obj).__name__}")
    return _Adapted(obj)
