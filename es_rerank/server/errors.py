"""Errors of the HTTP server, answered in Elasticsearch's error JSON.

Elasticsearch answers ``{"error": {"root_cause": [...], "type": ..., "reason": ...}, "status": N}``;
its clients read ``error.type`` and ``status``. :class:`ApiError` carries one such answer
(status, type, reason, extra headers); :func:`from_exception` maps the library's errors
onto it, keeping the cluster's own status and body where the cluster answered.

Example:
    >>> ApiError(400, "illegal_argument_exception", "[size] must be >= 0, got -1").body()["error"]["type"]
    'illegal_argument_exception'
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from ..errors import ClusterError, ConfigError, IndexMissingError, RerankerError, ValidationError
from ..redact import redact

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """One error answer: HTTP status, Elasticsearch error ``type`` and ``reason``.

    Args:
        status: HTTP status.
        type: Elasticsearch's error type (``illegal_argument_exception`` ...).
        reason: What is wrong, naming the field or value at fault.
        headers: Extra response headers (``Retry-After`` ...); a list value repeats the header.
            Defaults to none.
        body: A complete error body to answer instead of one built from type and reason
            (the cluster's own answer, relayed: ``relayed`` is then True). Defaults to None.
        extra: Additional keys of the ``error`` object (``index`` ...).
    """

    def __init__(self, status: int, type: str, reason: str, *, headers: Mapping[str, str | list[str]] | None = None,
                 body: Mapping[str, Any] | None = None, **extra: Any):
        super().__init__(reason)
        self.status = status
        self.type = type
        self.reason = reason
        self.headers = dict(headers or {})
        self._body = dict(body) if body is not None else None
        self.relayed = body is not None
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body Elasticsearch would answer."""
        if self._body is not None:
            return self._body
        cause = {"type": self.type, "reason": self.reason, **self.extra}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


def bad_request(reason: str, *, type: str = "illegal_argument_exception") -> ApiError:
    """A 400 answer (the reason names the field, e.g. ``[text_similarity_reranker.field] ...``)."""
    return ApiError(400, type, reason)


def index_not_found(index: str) -> ApiError:
    """The 404 Elasticsearch answers for a missing index."""
    return ApiError(404, "index_not_found_exception", f"no such index [{index}]", index=index,
                    **{"resource.type": "index_or_alias", "resource.id": index, "index_uuid": "_na_"})


def relayed_headers(body: Mapping[str, Any]) -> dict[str, list[str]]:
    """The headers an Elasticsearch error names in its body (``error.header``: ``WWW-Authenticate`` ...).

    The cluster sends them as response headers too; relaying them keeps a refusal whole.
    """
    error = body.get("error")
    named = error.get("header") if isinstance(error, Mapping) else None
    if not isinstance(named, Mapping):
        return {}
    out = {}
    for name, values in named.items():
        items = values if isinstance(values, list) else [values]
        if isinstance(name, str) and all(isinstance(v, str) for v in items):
            out[name] = list(items)
    return out


def _is_timeout(error: BaseException) -> bool:
    cause = error.__cause__
    return cause is not None and "Timeout" in type(cause).__name__


def from_exception(error: BaseException, *, secrets: tuple[str, ...] = ()) -> ApiError:
    """The answer for an exception raised while serving a request.

    * the cluster answered an error: its status and body, unchanged (a 401 stays the
      cluster's 401: the caller learns exactly what the cluster told it);
    * the cluster is unreachable: 502; it did not answer in time: 504;
    * a missing index: 404 ``index_not_found_exception``;
    * an invalid request (:class:`~es_rerank.errors.ValidationError`): 400;
    * a reranker failure: 500; a reranker (or anything) that gave up for lack of time: 504;
    * anything else: 500, with the exception's type and message (secrets masked).
    """
    if isinstance(error, ApiError):
        return error
    cause: BaseException | None = error
    while cause is not None:  # a reranker that gave up for lack of time is a timeout, not a fault
        if isinstance(cause, TimeoutError):
            return ApiError(504, "es_rerank_timeout_exception", redact(str(cause) or "the request took too long",
                                                                       secrets))
        cause = cause.__cause__
    if isinstance(error, ClusterError):
        if error.status is not None and isinstance(error.body, Mapping):
            return ApiError(error.status, error.error_type or "status_exception", str(error), body=error.body,
                            headers=relayed_headers(error.body))
        if error.status is not None:
            return ApiError(error.status, error.error_type or "status_exception", redact(str(error), secrets))
        if _is_timeout(error):
            return ApiError(504, "es_rerank_cluster_timeout_exception", redact(str(error), secrets))
        return ApiError(502, "es_rerank_cluster_unreachable_exception", redact(str(error), secrets))
    if isinstance(error, IndexMissingError):
        return index_not_found(error.index)
    if isinstance(error, ValidationError):
        field = f"[{error.field}] " if error.field else ""
        return bad_request(f"{field}{error}")
    if isinstance(error, RerankerError):
        return ApiError(500, "es_rerank_reranker_exception", redact(str(error), secrets))
    if isinstance(error, ConfigError):
        return ApiError(500, "es_rerank_config_exception", redact(str(error), secrets))
    logger.error("unexpected error while serving a request", exc_info=error)
    return ApiError(500, "es_rerank_exception", redact(f"{type(error).__name__}: {error}", secrets))
