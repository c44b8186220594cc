"""Elasticsearch: ``dense_vector`` chunks, top-level ``knn`` search, the ``rrf`` retriever."""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from ..errors import ClusterError
from ..types import Knn, Node, Rrf, Standard
from .base import VECTOR_FIELD, Engine, invalid_url_message, num_candidates_for, resolved, with_source

logger = logging.getLogger(__name__)

# The rrf retriever comes with the rank-rrf module and needs an Enterprise (or trial) license.
RRF_MODULE = "rank-rrf"
RRF_LICENSES = ("enterprise", "trial")


class ElasticsearchEngine(Engine):
    """Elasticsearch 9 through the official ``elasticsearch`` client."""

    name = "elasticsearch"
    mapping_file = "elasticsearch.json"
    vector_type = "dense_vector"
    dims_key = "dims"

    def _make_client(self) -> Any:
        from elasticsearch import Elasticsearch

        s = self.settings
        kwargs = s.client_kwargs()
        # transient failures (connection reset, 429/502/503/504, timeouts) are retried by the client
        kwargs.update(max_retries=3, retry_on_timeout=True)
        if s.api_key is not None:
            kwargs["api_key"] = s.api_key
        if s.username is not None:
            kwargs["basic_auth"] = (s.username, s.password)
        try:
            return Elasticsearch(**kwargs)
        except ValueError:  # a URL that does not parse (bad port, stray characters)
            raise ClusterError(invalid_url_message(s.safe_url),
                               url=s.safe_url) from None

    def _perform(self, method: str, path: str, *, body: Any, params: Mapping[str, Any] | None,
                 headers: Mapping[str, str], retry: bool = True) -> Any:
        client = self.client if retry else self.client.options(max_retries=0, retry_on_timeout=False)
        resp = client.perform_request(method, path, params=params, headers=headers, body=body)
        return resp.body

    def _translate(self, error: Exception) -> Exception | None:
        from elastic_transport import ConnectionError as TransportConnectionError
        from elastic_transport import ConnectionTimeout, TransportError
        from elasticsearch import ApiError

        if isinstance(error, ConnectionTimeout):
            return self._unreachable(error, timeout=True)
        if isinstance(error, TransportConnectionError):
            return self._unreachable(error, timeout=False)
        if isinstance(error, ApiError):
            return self._api_error(error.meta.status, error.body)
        if isinstance(error, TransportError):
            return ClusterError(self.settings.redact(f"Elasticsearch request failed: {error.message}"),
                                url=self.settings.safe_url)
        return None

    # -- capabilities -----------------------------------------------------------------------

    def _detect_server_fusion(self) -> bool:
        try:
            nodes = self.request("GET", "/_nodes/_local/plugins",
                                 params={"filter_path": "nodes.*.modules.name,nodes.*.plugins.name"})
            lic = self.request("GET", "/_license")
        except ClusterError as e:
            if e.status in (401, 403):  # not allowed to look: fuse in Python, which always works
                logger.info("cannot read the node's modules or license (%s); fusing in Python", e.status)
                return False
            raise
        names = {m.get("name") for n in (nodes.get("nodes") or {}).values()
                 for m in (n.get("modules") or []) + (n.get("plugins") or [])}
        license_ = lic.get("license") or {}
        return RRF_MODULE in names and license_.get("type") in RRF_LICENSES and license_.get("status") == "active"

    @property
    def server_fusion_hint(self) -> str:
        return ("server-side RRF needs Elasticsearch's rank-rrf module and an Enterprise or trial license "
                "(the docker compose cluster has both; the local Maven node has neither): use --fusion client "
                "or --fusion auto")

    # -- request bodies ----------------------------------------------------------------------

    @staticmethod
    def knn_clause(vector: Sequence[float], *, k: int, clauses: Sequence[Mapping[str, Any]] = (),
                   field: str = VECTOR_FIELD, num_candidates: int | None = None,
                   similarity: float | None = None) -> dict[str, Any]:
        """The ``knn`` clause (a vector field, by default the chunks'), under the filter clauses."""
        clause: dict[str, Any] = {
            "field": field,
            "query_vector": [float(x) for x in vector],
            "k": k,
            "num_candidates": num_candidates_for(k) if num_candidates is None else num_candidates,
        }
        if clauses:
            clause["filter"] = [dict(c) for c in clauses]
        if similarity is not None:
            clause["similarity"] = similarity
        return clause

    def knn_search_body(self, vector: Sequence[float], *, size: int, k: int, field: str = VECTOR_FIELD,
                        num_candidates: int | None = None, clauses: Sequence[Mapping[str, Any]] = (),
                        similarity: float | None = None, source: Any = None) -> dict[str, Any]:
        body: dict[str, Any] = {"size": size, "knn": self.knn_clause(vector, k=k, clauses=clauses, field=field,
                                                                     num_candidates=num_candidates,
                                                                     similarity=similarity)}
        if source is not None:
            body["_source"] = source
        return body

    def can_fuse(self, node: Rrf) -> bool:
        return True  # the rrf retriever nests and takes every standard/knn option

    def retriever_json(self, node: Node) -> dict[str, Any]:
        """The retriever JSON of a tree (vectors resolved)."""
        if isinstance(node, Standard):
            spec: dict[str, Any] = {"query": self.standard_query(node)}
            if node.min_score is not None:
                spec["min_score"] = node.min_score
            return {"standard": spec}
        if isinstance(node, Knn):
            return {"knn": self.knn_clause(resolved(node), k=node.k, clauses=node.filters, field=node.field,
                                           num_candidates=node.num_candidates, similarity=node.similarity)}
        return {"rrf": {"retrievers": [self.retriever_json(c) for c in node.children],
                        "rank_constant": node.rank_constant, "rank_window_size": node.window}}

    def fused_body(self, node: Rrf, *, size: int, source: Any = None) -> dict[str, Any]:
        """The ``rrf`` retriever (rank-rrf module, licensed), nested as the tree is."""
        return with_source({"size": size, "retriever": self.retriever_json(node)}, source)

    # -- bulk ---------------------------------------------------------------------------------

    @staticmethod
    def _bulk_helper() -> Any:
        from elasticsearch import helpers

        return helpers.streaming_bulk
