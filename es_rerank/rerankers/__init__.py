"""Rerankers behind one interface, created by name from a registry.

Example:
    >>> from es_rerank.config import Settings
    >>> from es_rerank.rerankers import build_reranker
    >>> build_reranker("cross-encoder", Settings(reranker_model="path/to/model"), cache=False).name  # loads lazily
    'cross-encoder:path/to/model'
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError
from .base import BaseReranker, Reranker, Scored, as_reranker
from .cache import CachedReranker
from .cross_encoder import CrossEncoderReranker
from .llm import ListwiseReranker, LLMConfig, LLMPointwiseReranker


def llm_config(settings: Any) -> LLMConfig:
    return LLMConfig(base_url=settings.llm_base_url, model=settings.llm_model, api_key=settings.llm_api_key,
                     timeout=settings.llm_timeout, concurrency=settings.llm_concurrency, api=settings.llm_api)


def _cross_encoder(settings: Any, *, normalize: bool, instructions: str | None, cache: bool) -> BaseReranker:
    reranker: BaseReranker = CrossEncoderReranker(
        settings.reranker_model, backend=settings.reranker_backend, device=settings.device,
        batch_size=settings.rerank_batch_size, max_length=settings.rerank_max_length, normalize=normalize)
    if cache and settings.rerank_cache_size:
        reranker = CachedReranker(reranker, max_entries=settings.rerank_cache_size)
    return reranker


def _llm(settings: Any, *, normalize: bool, instructions: str | None, cache: bool) -> BaseReranker:
    return LLMPointwiseReranker(llm_config(settings), instructions=instructions)


def _listwise(settings: Any, *, normalize: bool, instructions: str | None, cache: bool) -> BaseReranker:
    return ListwiseReranker(llm_config(settings), window=settings.listwise_window, step=settings.listwise_step,
                            instructions=instructions)


# name -> factory(settings, normalize=, instructions=, cache=); constructors only store configuration
REGISTRY: dict[str, Callable[..., BaseReranker]] = {
    "cross-encoder": _cross_encoder,
    "llm": _llm,
    "listwise": _listwise,
}
KINDS = tuple(REGISTRY)


def build_reranker(kind: str, settings: Any, *, normalize: bool = False,
                   instructions: str | None = None, cache: bool = True) -> BaseReranker:
    """Create a reranker of ``kind`` configured from settings (nothing loads yet).

    Args:
        kind: ``cross-encoder``, ``llm`` or ``listwise``.
        settings: :class:`es_rerank.config.Settings`.
        normalize: Cross-encoder only: sigmoid scores instead of raw logits.
        instructions: LLM rerankers: overrides ``settings.llm_instructions``.
        cache: Cross-encoder: put the bounded score cache (``settings.rerank_cache_size``)
            in front. Benchmarks and sweeps turn it off so that latency is real.

    Raises:
        ConfigError: Unknown kind (the message lists the known ones), or ``normalize`` for
            a reranker whose scores are already in their own range.
    """
    factory = REGISTRY.get(kind)
    if factory is None:
        raise ConfigError(f"unknown reranker {kind!r}; choose one of: {', '.join(REGISTRY)}, none", setting="reranker")
    if normalize and kind != "cross-encoder":
        raise ConfigError(f"--normalize applies to the cross-encoder only; the {kind} reranker's scores are already "
                          "in its own range")
    instructions = settings.llm_instructions if instructions is None else instructions
    return factory(settings, normalize=normalize, instructions=instructions, cache=cache)


__all__ = ["Reranker", "BaseReranker", "Scored", "as_reranker", "CachedReranker", "CrossEncoderReranker",
           "LLMPointwiseReranker", "ListwiseReranker", "LLMConfig", "build_reranker", "REGISTRY"]
