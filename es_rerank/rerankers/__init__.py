"""Rerankers behind one interface, created by name.

Example:
    >>> from es_rerank.config import Settings
    >>> from es_rerank.rerankers import build_reranker
    >>> build_reranker("cross-encoder", Settings(reranker_model="path/to/model")).name  # loads lazily
    'cross-encoder:path/to/model'
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import Reranker
from .cache import CachedReranker
from .cross_encoder import CrossEncoderReranker
from .llm import ListwiseReranker, LLMConfig, LLMPointwiseReranker

KINDS = ("cross-encoder", "llm", "listwise")


def available() -> list[str]:
    """Names accepted by :func:`build_reranker` (besides ``none``)."""
    return list(KINDS)


def llm_config(settings: Any) -> LLMConfig:
    return LLMConfig(base_url=settings.llm_base_url, model=settings.llm_model, api_key=settings.llm_api_key,
                     timeout=settings.llm_timeout, concurrency=settings.llm_concurrency, api=settings.llm_api)


def build_reranker(kind: str, settings: Any, *, normalize: bool = False,
                   instructions: str | None = None, cache: bool = True) -> Reranker:
    """Create a reranker of ``kind`` configured from settings.

    Args:
        kind: ``cross-encoder``, ``llm`` or ``listwise``.
        settings: :class:`es_rerank.config.Settings`.
        normalize: Cross-encoder only: sigmoid scores instead of raw logits.
        instructions: LLM rerankers: overrides ``settings.llm_instructions``.
        cache: Cross-encoder: put the bounded score cache (``settings.rerank_cache_size``)
            in front. Benchmarks and sweeps turn it off so that latency is real.

    Raises:
        ConfigError: Unknown kind (the message lists the known ones).
    """
    instructions = settings.llm_instructions if instructions is None else instructions
    if normalize and kind != "cross-encoder":
        raise ConfigError(f"--normalize applies to the cross-encoder only; the {kind} reranker's scores are already in its own range")
    if kind == "cross-encoder":
        if settings.reranker_backend in ("torch", "torch-bf16"):
            reranker: Reranker = CrossEncoderReranker(
                settings.reranker_model, device=settings.device, batch_size=settings.rerank_batch_size,
                max_length=settings.rerank_max_length, normalize=normalize,
                bf16=settings.reranker_backend == "torch-bf16")
        else:
            if normalize:
                raise ConfigError("--normalize is available with the torch backend only")
            from ..onnx_backend import runtime_model

            cls, file_name = runtime_model(settings.reranker_backend, "cross-encoder")
            reranker = cls(settings.reranker_model, batch_size=settings.rerank_batch_size, file_name=file_name,
                           max_length=settings.rerank_max_length)
        if cache and settings.rerank_cache_size:
            reranker = CachedReranker(reranker, max_entries=settings.rerank_cache_size)
        return reranker
    if kind == "llm":
        return LLMPointwiseReranker(llm_config(settings), instructions=instructions)
    if kind == "listwise":
        return ListwiseReranker(llm_config(settings), window=settings.listwise_window, step=settings.listwise_step,
                                instructions=instructions)
    raise ConfigError(f"unknown reranker {kind!r}; choose one of: {', '.join(KINDS)}, none")


__all__ = ["Reranker", "CachedReranker", "CrossEncoderReranker", "LLMPointwiseReranker", "ListwiseReranker", "LLMConfig",
           "build_reranker", "available"]
