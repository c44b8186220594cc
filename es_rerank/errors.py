"""Exceptions raised by es-rerank. The CLI turns them into one-line messages."""

from __future__ import annotations


class EsRerankError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(EsRerankError, ValueError):
    """A setting or argument has a value that cannot work."""


class ValidationError(EsRerankError, ValueError):
    """A search request is invalid (empty query, final_k > depth, ...)."""


class ClusterError(EsRerankError):
    """Elasticsearch is unreachable, or the local cluster could not be managed."""


class MappingMismatchError(EsRerankError):
    """An existing index does not fit the configured embedder or the expected fields."""


class IndexMissingError(EsRerankError):
    """The index to search does not exist."""


class RerankerError(EsRerankError):
    """A reranker failed to load or to score."""


class InputError(EsRerankError):
    """A document source cannot be read at all (missing path, unknown format)."""


class IndexingError(EsRerankError):
    """Indexing stopped part-way; ``report`` says how far it got (what was acknowledged stays)."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report
