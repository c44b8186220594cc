"""OpenSearch: ``knn_vector`` chunks on the Lucene HNSW engine, ``knn`` queries, fusion in Python.

The k-NN plugin from Maven Central carries no native libraries: a ``knn_vector`` whose
``method`` names no engine defaults to faiss, and the first write to it kills the node.
The mapping therefore always sets ``engine: lucene``. The ``hybrid`` query and its RRF
(``score-ranker-processor``) come with the neural-search plugin, which many clusters lack;
where it is installed es-rerank uses it with a temporary search pipeline in the request,
so nothing is written to the cluster.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from ..errors import ClusterError, ValidationError
from ..types import Knn, Rrf, Standard
from .base import VECTOR_FIELD, Engine, invalid_url_message, resolved, with_source

logger = logging.getLogger(__name__)

NEURAL_SEARCH_PLUGIN = "opensearch-neural-search"
MAX_HYBRID_QUERIES = 5  # the hybrid query's limit on sub-queries


class OpenSearchEngine(Engine):
    """OpenSearch 2.x/3.x through ``opensearch-py`` (the Elasticsearch client refuses OpenSearch)."""

    name = "opensearch"
    mapping_file = "opensearch.json"
    vector_type = "knn_vector"
    dims_key = "dimension"
    master_timeout_param = "cluster_manager_timeout"  # master_timeout is deprecated (warned once per node)
    _client_once: Any = None

    def _make_client(self, *, retries: bool = True) -> Any:
        from opensearchpy import OpenSearch

        s = self.settings
        kwargs = s.client_kwargs()
        kwargs["timeout"] = kwargs.pop("request_timeout")
        if retries:
            kwargs.update(max_retries=3, retry_on_timeout=True, retry_on_status=(429, 502, 503, 504))
        else:
            kwargs.update(max_retries=0, retry_on_timeout=False, retry_on_status=())
        if s.api_key is not None:
            kwargs["headers"] = {"authorization": f"ApiKey {s.api_key}"}
        if s.username is not None:
            kwargs["http_auth"] = (s.username, s.password)
        try:
            return OpenSearch(**kwargs)
        except (ValueError, TypeError):
            raise ClusterError(invalid_url_message(s.safe_url),
                               url=s.safe_url) from None

    def _perform(self, method: str, path: str, *, body: Any, params: Mapping[str, Any] | None,
                 headers: Mapping[str, str], retry: bool = True) -> Any:
        if isinstance(body, str):
            body = body.encode("utf-8")
        client = self.client if retry or not self._own_client else self._once_client()
        # the client's own timeout, stated: else opensearch-py takes a `timeout` query parameter (the
        # server-side wait of _cluster/health, say) for it
        return client.transport.perform_request(method, path, params=params, body=body, headers=headers,
                                                timeout=self.settings.request_timeout)

    def _once_client(self) -> Any:
        """A second client that never retries (opensearch-py has no per-request retry option)."""
        if self._client_once is None:
            with self._lock:
                if self._client_once is None:
                    self._client_once = self._make_client(retries=False)
        return self._client_once

    def close(self) -> None:
        super().close()
        if self._client_once is not None:
            self._client_once.close()
            self._client_once = None

    def _translate(self, error: Exception) -> Exception | None:
        from opensearchpy import exceptions as ex

        if isinstance(error, ex.ConnectionTimeout):
            return self._unreachable(error, timeout=True)
        if isinstance(error, ex.ConnectionError):
            return self._unreachable(error, timeout=False)
        if isinstance(error, ex.TransportError):
            status = error.status_code if isinstance(error.status_code, int) else 500
            body = error.info if isinstance(error.info, dict) else {"error": error.error}
            return self._api_error(status, body)
        return None

    # -- capabilities -----------------------------------------------------------------------

    def _detect_server_fusion(self) -> bool:
        try:
            nodes = self.request("GET", "/_nodes/_local/plugins", params={"filter_path": "nodes.*.plugins.name"})
        except ClusterError as e:
            if e.status in (401, 403):
                logger.info("cannot read the node's plugins (%s); fusing in Python", e.status)
                return False
            raise
        names = {p.get("name") for n in (nodes.get("nodes") or {}).values() for p in (n.get("plugins") or [])}
        return NEURAL_SEARCH_PLUGIN in names

    @property
    def server_fusion_hint(self) -> str:
        return ("server-side fusion on OpenSearch needs the neural-search plugin (the hybrid query and its RRF "
                "processor), which this cluster lacks: use --fusion client or --fusion auto")

    # -- request bodies ----------------------------------------------------------------------

    @staticmethod
    def knn_query(vector: Sequence[float], *, k: int, clauses: Sequence[Mapping[str, Any]] = (),
                  field: str = VECTOR_FIELD) -> dict[str, Any]:
        """The ``knn`` query over a vector field (by default the chunks'); filters apply during the search."""
        spec: dict[str, Any] = {"vector": [float(x) for x in vector], "k": k}
        if clauses:
            spec["filter"] = {"bool": {"filter": [dict(c) for c in clauses]}}
        return {"knn": {field: spec}}

    def knn_search_body(self, vector: Sequence[float], *, size: int, k: int, field: str = VECTOR_FIELD,
                        num_candidates: int | None = None, clauses: Sequence[Mapping[str, Any]] = (),
                        similarity: float | None = None, source: Any = None) -> dict[str, Any]:
        # num_candidates has no counterpart: the Lucene engine searches max(k, 100) candidates
        if similarity is not None:
            raise ValidationError("[knn.similarity] is not supported on OpenSearch: leave it out", field="similarity")
        body: dict[str, Any] = {"size": size, "query": self.knn_query(vector, k=k, clauses=clauses, field=field)}
        if source is not None:
            body["_source"] = source
        return body

    def can_fuse(self, node: Rrf) -> bool:
        """The ``hybrid`` query takes 1 to 5 plain queries: no nested ``rrf``, ``min_score`` or ``similarity``."""
        return 1 <= len(node.children) <= MAX_HYBRID_QUERIES and all(
            (isinstance(c, Standard) and c.min_score is None) or (isinstance(c, Knn) and c.similarity is None)
            for c in node.children)

    def fused_body(self, node: Rrf, *, size: int, source: Any = None) -> dict[str, Any]:
        """The neural-search ``hybrid`` query with an RRF score-ranker in a temporary pipeline."""
        if not self.can_fuse(node):
            raise ValidationError(f"OpenSearch's hybrid query takes 1 to {MAX_HYBRID_QUERIES} standard or knn "
                                  "retrievers without min_score or similarity; this rrf is fused in Python",
                                  field="retriever")
        queries = [self.standard_query(c) if isinstance(c, Standard)
                   else self.knn_query(resolved(c), k=c.k, clauses=c.filters, field=c.field) for c in node.children]
        return with_source({
            "size": size,
            "query": {"hybrid": {"queries": queries, "pagination_depth": node.window}},
            "search_pipeline": {"phase_results_processors": [
                {"score-ranker-processor": {"combination": {"technique": "rrf",
                                                            "rank_constant": node.rank_constant}}}]},
        }, source)

    # -- bulk ---------------------------------------------------------------------------------

    @staticmethod
    def _bulk_helper() -> Any:
        from opensearchpy import helpers

        return helpers.streaming_bulk
