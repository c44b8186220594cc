"""es-rerank: two-stage retrieval for Elasticsearch and OpenSearch.

Stage one fetches ``depth`` candidates with hybrid BM25 + kNN retrieval fused by
reciprocal rank fusion; stage two reads the query with each candidate through a
cross-encoder and returns the best ``final_k``.

Example:
    >>> from es_rerank import Searcher, Settings
    >>> searcher = Searcher(Settings.from_env(index="help-centre"))  # doctest: +SKIP
    >>> for hit in searcher.search("close my account", final_k=3).hits:  # doctest: +SKIP
    ...     print(hit.rerank_score, hit.retrieval_rank, hit.title)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._versions import ES_VERSION, PACKAGE_VERSION

if TYPE_CHECKING:
    from .client import Searcher
    from .config import Settings
    from .errors import EsRerankError
    from .types import Document, Hit, SearchResult, Timings, Usage

# Loaded on first use, so that the stdlib-only parts (es_rerank.cluster: the local node) run from
# the source tree before the install (the quick start starts the node beside `pip install`).
_LAZY = {"Searcher": ".client", "Settings": ".config", "EsRerankError": ".errors", "Document": ".types",
         "Hit": ".types", "SearchResult": ".types", "Timings": ".types", "Usage": ".types"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'es_rerank' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = ["ES_VERSION", "Searcher", "Settings", "EsRerankError", "Document", "Hit", "SearchResult", "Timings",
           "Usage"]
__version__ = PACKAGE_VERSION
