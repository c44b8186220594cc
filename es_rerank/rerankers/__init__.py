"""Rerankers behind one interface, created by name.

Example:
    >>> from es_rerank.rerankers import create_reranker
    >>> ce = create_reranker("cross-encoder", model="path/to/model")  # loads lazily
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError
from .base import Reranker
from .cross_encoder import CrossEncoderReranker

_REGISTRY: dict[str, Callable[..., Reranker]] = {
    "cross-encoder": CrossEncoderReranker,
}


def available() -> list[str]:
    """Names accepted by :func:`create_reranker` (besides ``none``)."""
    return sorted(_REGISTRY)


def create_reranker(kind: str, **options: Any) -> Reranker:
    """Create a reranker by name.

    Raises:
        ConfigError: Unknown name (the message lists the known ones).
    """
    try:
        factory = _REGISTRY[kind]
    except KeyError:
        raise ConfigError(f"unknown reranker {kind!r}; choose one of: {', '.join(available())}") from None
    return factory(**options)


__all__ = ["Reranker", "CrossEncoderReranker", "create_reranker", "available"]
