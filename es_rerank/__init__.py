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

from ._versions import ES_VERSION, PACKAGE_VERSION
from .client import Searcher
from .config import Settings
from .errors import EsRerankError
from .types import Document, Hit, SearchResult, Timings, Usage

__all__ = ["ES_VERSION", "Searcher", "Settings", "EsRerankError", "Document", "Hit", "SearchResult", "Timings",
           "Usage"]
__version__ = PACKAGE_VERSION
