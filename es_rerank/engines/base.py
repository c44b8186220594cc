"""What every search engine implementation provides: one object owns the client, the chunk
mapping, the request bodies, and what the cluster supports.

:class:`Engine` holds everything Elasticsearch and OpenSearch share (the query DSL for BM25
and filters, index administration through the REST API, hits); a subclass supplies the
client, the vector field and kNN syntax, server-side fusion and error translation. Request
builders are pure (no I/O) and tested by exact equality; everything that talks to the
cluster goes through :meth:`Engine.request`, which turns the client's exceptions into
:class:`~es_rerank.errors.ClusterError` / :class:`~es_rerank.errors.IndexMissingError`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Sequence

from ..errors import (ClusterError, ConfigError, IndexMissingError, MappingMismatchError, PartialResultsError,
                      ValidationError)
from ..types import Hit, Knn, Rrf, Standard

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("text", "title")
VECTOR_FIELD = "embedding"
SOURCE_FIELDS = ("doc_id", "chunk", "title", "text", "metadata")
TOP_LEVEL_FILTER_FIELDS = ("doc_id", "chunk", "title")
MAX_NUM_CANDIDATES = 10_000
DEFAULT_MAX_RESULT_WINDOW = 10_000
MARKER = "es_rerank"  # the _meta key of indices es-rerank created
LEGACY_MARKER = "es_rerank_bulk_load"  # _meta key written by es-rerank 0.1

_INVALID_NAME_CHARS = re.compile(r'[\\/*?"<>| ,#:A-Z]')
RANGE_OPERATORS = ("gt", "gte", "lt", "lte")


def validate_index_name(name: str) -> str:
    """Return ``name`` when it is one plain, concrete index or alias name; else raise.

    es-rerank acts only on names it validated: no commas, wildcards, ``_all``, leading
    ``-``/``_``/``+``/``.``, upper case, or characters Elasticsearch forbids, at most 255 bytes.

    Raises:
        ValidationError: The name, and which rule it breaks.
    """
    if not isinstance(name, str) or not name:
        raise ValidationError("index name is empty", field="index")
    problem = None
    if name in ("_all", ".", ".."):
        problem = "it names every index or none"
    elif name[0] in "-_+.":
        problem = "it may not start with '-', '_', '+' or '.'"
    elif (m := _INVALID_NAME_CHARS.search(name)) is not None:
        problem = (f"it contains {m.group(0)!r} (one index per name: no commas, wildcards, spaces, "
                   "upper case or any of \\ / * ? \" < > | , # :)")
    elif len(name.encode("utf-8")) > 255:
        problem = "it is longer than 255 bytes"
    if problem:
        raise ValidationError(f"invalid index name {name!r}: {problem}", field="index")
    return name


def invalid_url_message(safe_url: str) -> str:
    """Why a URL was refused, without the parser's own words (they can quote a piece of a password)."""
    return (f"ES_URL {safe_url!r} is not a valid URL: expected scheme://[user:password@]host[:port]; "
            "percent-encode '/', '#', '?' and '@' in a user name or password (or set ES_USERNAME/ES_PASSWORD)")


def writer_alias(index: str) -> str:
    """The private alias a build of es-rerank writes through (bulk with ``require_alias``).

    Writes through an alias can never create an index: if the build was deleted, its
    writer alias went with it, and the writes fail instead of auto-creating a new index.
    """
    return f"{index}-writer"


def _load_mapping_file(file_name: str) -> dict[str, Any]:
    raw = (resources.files("es_rerank") / "mappings" / file_name).read_text(encoding="utf-8")
    return json.loads(raw)


def _fill(node: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values) for v in node]
    if isinstance(node, str) and node.startswith("{{") and node.endswith("}}"):
        return values[node[2:-2]]
    return node


def num_candidates_for(k: int) -> int:
    """HNSW candidates per shard for a kNN search of ``k``: 2k, at least 100, at most 10,000."""
    return min(max(2 * k, 100), MAX_NUM_CANDIDATES)


def resolved(node: Knn) -> tuple[float, ...]:
    """A knn retriever's vector; a ``ValueError`` while its text is not embedded yet."""
    if node.vector is None:
        raise ValueError("knn vector not resolved: embed query_vector_builder's text first")
    return node.vector


def with_source(body: dict[str, Any], source: Any) -> dict[str, Any]:
    if source is not None:
        body["_source"] = source
    return body


@dataclass(frozen=True)
class IndexState:
    """What a name refers to in the cluster.

    Attributes:
        name: The name asked about.
        kind: ``missing``, ``index`` (a concrete index of that name) or ``alias``.
        indices: The concrete indices behind it (empty when missing).
        metas: Concrete index -> its ``_meta`` (empty dict when none).
    """

    name: str
    kind: str
    indices: tuple[str, ...] = ()
    metas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def other_aliases(self, index: str, *, besides: str) -> tuple[str, ...]:
        """Aliases of ``index`` other than ``besides`` and the index's own build writer."""
        return tuple(a for a in self.aliases.get(index, ()) if a not in (besides, writer_alias(index)))

    def marker(self, index: str) -> Mapping[str, Any] | None:
        """es-rerank's marker of a concrete index (legacy indices get a minimal one), or None."""
        meta = self.metas.get(index) or {}
        if isinstance(meta.get(MARKER), Mapping):
            return meta[MARKER]
        if LEGACY_MARKER in meta:
            return {"legacy": True}
        return None


@dataclass(frozen=True)
class FieldInfo:
    """Fields an index can filter on: name -> type (``keyword``, ``long``, ``date`` ...)."""

    types: Mapping[str, str]
    title_keyword: bool


class Engine(ABC):
    """One search engine: client, chunk mapping, request bodies and capabilities.

    Construct with :func:`es_rerank.engines.open_engine` (detects the engine) or a
    subclass directly. The client is created on first use; request builders need none.
    Thread-safe: the clients are, and capabilities are detected once under a lock.

    Args:
        settings: Connection settings (:class:`es_rerank.config.Settings`).
        client: An existing client of the engine's library. Defaults to one built from settings.
    """

    name: ClassVar[str]
    mapping_file: ClassVar[str]
    vector_type: ClassVar[str]
    dims_key: ClassVar[str]

    def __init__(self, settings: Any, *, client: Any = None):
        self.settings = settings
        self._client = client
        self._own_client = client is None
        self._lock = threading.RLock()  # detecting a capability creates the client under the same lock
        self._server_fusion: bool | None = None
        self._analyzers: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.settings.safe_url!r})"

    # -- client -----------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The engine's Python client (created on first use)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    @abstractmethod
    def _make_client(self) -> Any:
        """A client of the engine's library from ``self.settings``."""

    @abstractmethod
    def _perform(self, method: str, path: str, *, body: Any, params: Mapping[str, Any] | None,
                 headers: Mapping[str, str], retry: bool = True) -> Any:
        """Send one request with the library's transport; return the decoded body.

        ``retry=False``: the transport sends it once (no retry after a timeout, a lost
        connection or a 5xx), for requests that change state and are not idempotent.
        Raises the library's own exceptions; :meth:`request` translates them.
        """

    @abstractmethod
    def _translate(self, error: Exception) -> Exception | None:
        """Our exception for a library exception (None: not a transport/API error)."""

    def close(self) -> None:
        """Close the client when this engine created it."""
        if self._client is not None and self._own_client:
            self._client.close()
            self._client = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def with_client(self, client: Any) -> "Engine":
        """The same engine over another client (e.g. one carrying a caller's credentials)."""
        return type(self)(self.settings, client=client)

    # -- transport ----------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: Any = None, params: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None, index: str | None = None, retry: bool = True) -> Any:
        """Send a REST request; return the decoded JSON body.

        Args:
            method: HTTP method.
            path: Path starting with ``/``.
            body: A JSON-serialisable body, or ndjson text for ``_msearch``/``_bulk``.
            params: Query-string parameters.
            headers: Extra headers (e.g. a caller's ``Authorization``).
            index: The index the request is about, so a 404 becomes ``IndexMissingError``.
            retry: Let the client retry after a timeout or a lost connection. False for
                requests whose outcome must be read back instead (see :mod:`es_rerank.lifecycle`).
                Defaults to True.

        Raises:
            IndexMissingError: ``index`` does not exist.
            ClusterError: Unreachable, too slow, or an error answer (status, type and body kept).
        """
        h = {"accept": "application/json"}
        if body is not None:
            h["content-type"] = "application/x-ndjson" if isinstance(body, str) else "application/json"
        h.update(headers or {})
        for wait in (0.5, 1.0, 2.0, 4.0, 8.0, None):
            try:
                return self._send(method, path, body=body, params=params, headers=h, index=index, retry=retry)
            except ClusterError as e:
                # 429: the cluster refused the request before carrying it out (a full queue), so even a
                # request that is never re-sent blindly may be sent again, after a pause
                if retry or e.status != 429 or wait is None:
                    raise
                logger.info("%s %s: 429, sending it again in %.1f s", method, path, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, *, body: Any, params: Mapping[str, Any] | None,
              headers: Mapping[str, str], index: str | None, retry: bool) -> Any:
        """One :meth:`request`: the library's exceptions translated."""
        h = headers
        try:
            return self._perform(method, path, body=body, params=params, headers=h, retry=retry)
        except Exception as e:  # noqa: BLE001 - translated below, re-raised otherwise
            ours = self._translate(e)
            if ours is None:
                raise
            if index is not None and isinstance(ours, ClusterError) and ours.status == 404 and \
                    ours.error_type in ("index_not_found_exception", None):
                raise IndexMissingError(index) from e
            raise ours from e

    def _api_error(self, status: int, body: Any, what: str = "request") -> ClusterError:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            etype, reason = error.get("type"), error.get("reason")
        else:
            etype, reason = None, error if error is not None else body
        message = f"{self.display_name} answered {status} to the {what}: {etype + ': ' if etype else ''}{reason}"
        return ClusterError(self.settings.redact(message), url=self.settings.safe_url, status=status,
                            error_type=etype, body=body if isinstance(body, dict) else None)

    def _unreachable(self, error: Exception, *, timeout: bool) -> ClusterError:
        if timeout:
            message = (f"{self.display_name} at {self.settings.safe_url} did not answer within "
                       f"{self.settings.request_timeout:g}s (ES_REQUEST_TIMEOUT)")
        else:
            message = (f"cannot reach {self.display_name} at {self.settings.safe_url}: is it running? "
                       "(`es-rerank cluster start` or set ES_URL)")
        return ClusterError(message, url=self.settings.safe_url)

    @property
    def display_name(self) -> str:
        return "OpenSearch" if self.name == "opensearch" else "Elasticsearch"

    # -- capabilities ---------------------------------------------------------------------

    def server_fusion(self) -> bool:
        """Whether the cluster fuses BM25 and kNN itself (detected once, then remembered)."""
        if self._server_fusion is None:
            with self._lock:
                if self._server_fusion is None:
                    self._server_fusion = self._detect_server_fusion()
                    logger.info("%s server-side fusion: %s", self.display_name,
                                "available" if self._server_fusion else "unavailable (fusing in Python)")
        return self._server_fusion

    @abstractmethod
    def _detect_server_fusion(self) -> bool:
        """Ask the cluster (without a failing search) whether server-side hybrid fusion works."""

    @property
    @abstractmethod
    def server_fusion_hint(self) -> str:
        """Why server-side fusion may be missing and what to use instead."""

    def has_analyzer(self, name: str) -> bool:
        """Whether the cluster knows the analyzer ``name`` (asked once per name)."""
        if name not in self._analyzers:
            try:
                self.request("POST", "/_analyze", body={"analyzer": name, "text": "probe"})
                self._analyzers[name] = True
            except ClusterError as e:
                if e.status != 400:
                    raise
                self._analyzers[name] = False
        return self._analyzers[name]

    def resolve_analyzer(self, analyzer: str) -> str:
        """``auto`` -> ``english`` where the cluster has it, else ``standard``; names pass through.

        Raises:
            ConfigError: A named analyzer the cluster does not have.
        """
        if analyzer == "auto":
            return "english" if self.has_analyzer("english") else "standard"
        if not self.has_analyzer(analyzer):
            raise ConfigError(f"the cluster has no analyzer {analyzer!r}; use `standard`, or `english` where "
                              "installed (`es-rerank cluster start` installs it on the local node)",
                              setting="analyzer")
        return analyzer

    def info(self) -> dict[str, Any]:
        """Engine name and server version (``GET /``, else the local node's info)."""
        try:
            root = self.request("GET", "/")
            version = (root.get("version") or {}).get("number")
        except ClusterError as e:
            if e.status is None:
                raise
            nodes = self.request("GET", "/_nodes/_local", params={"filter_path": "nodes.*.version"})
            version = next(iter((nodes.get("nodes") or {}).values()), {}).get("version")
        return {"engine": self.name, "version": version}

    # -- mapping ---------------------------------------------------------------------------

    def index_body(self, dims: int, *, analyzer: str = "standard", hnsw_m: int = 16,
                   hnsw_ef_construction: int = 100) -> dict[str, Any]:
        """The create-index body (settings and mappings) for chunks of an embedder of ``dims``.

        Raises:
            ConfigError: A value is out of range.
        """
        if dims < 1:
            raise ConfigError(f"dims must be >= 1, got {dims}")
        if hnsw_m < 2 or hnsw_ef_construction < 1:
            raise ConfigError(f"HNSW m must be >= 2 and ef_construction >= 1, got {hnsw_m}, {hnsw_ef_construction}")
        values = {"dims": dims, "analyzer": analyzer, "hnsw_m": hnsw_m, "hnsw_ef_construction": hnsw_ef_construction}
        return _fill(_load_mapping_file(self.mapping_file), values)

    def check_mapping(self, index: str, mapping: Mapping[str, Any], *, dims: int) -> None:
        """Check an index's mapping against what es-rerank writes.

        Raises:
            MappingMismatchError: A required field is missing or of another type, or the
                vector dims differ (names the index, the field and both values).
        """
        props = mapping.get("properties", {})
        required = {"doc_id": "keyword", "chunk": "integer", "title": "text", "text": "text",
                    VECTOR_FIELD: self.vector_type}
        problems = []
        for name, expected in required.items():
            got = props.get(name, {}).get("type")
            if got is None:
                problems.append(f"field {name!r} is missing (expected {expected})")
            elif got != expected:
                problems.append(f"field {name!r} is {got}, expected {expected}")
        vector = props.get(VECTOR_FIELD, {})
        if vector.get("type") == self.vector_type and vector.get(self.dims_key) not in (None, dims):
            problems.append(
                f"embedding dims are {vector.get(self.dims_key)} in the index but the configured embedder "
                f"produces {dims}: use the embedder the index was built with, or re-create the index")
        if problems:
            raise MappingMismatchError(index, problems)

    @staticmethod
    def field_info(mapping: Mapping[str, Any]) -> FieldInfo:
        """The filterable fields of an index mapping (top-level ones and ``metadata.*``)."""
        props = mapping.get("properties", {})
        types: dict[str, str] = {}
        for name in TOP_LEVEL_FILTER_FIELDS:
            if name in props:
                types[name] = props[name].get("type", "object")

        def walk(prefix: str, node: Mapping[str, Any]) -> None:
            for key, sub in (node.get("properties") or {}).items():
                path = f"{prefix}.{key}"
                if "properties" in sub:
                    walk(path, sub)
                else:
                    types[path] = sub.get("type", "object")

        walk("metadata", props.get("metadata", {}))
        title_keyword = "keyword" in (props.get("title", {}).get("fields") or {})
        return FieldInfo(types, title_keyword)

    # -- request bodies (pure) --------------------------------------------------------------

    @staticmethod
    def filter_clauses(filters: Mapping[str, Any] | None, fields: FieldInfo | None = None) -> list[dict[str, Any]]:
        """Turn ``{"field": value}`` filters into filter clauses.

        A scalar becomes ``term`` (exact match; ``title`` matches the whole title through
        its keyword sub-field); a list or tuple becomes ``terms`` (any of); a dict with
        ``gt``/``gte``/``lt``/``lte`` becomes ``range``. Names other than ``doc_id``,
        ``chunk`` and ``title`` refer to metadata (``metadata.<name>``). With ``fields``
        (the index's filterable fields) an unknown name, or a range over a text or keyword
        field, is an error naming what exists.

        Raises:
            ValidationError: A filter is empty, of an unsupported kind, or names no field.

        Example:
            >>> Engine.filter_clauses({"category": ["billing", "account"]})
            [{'terms': {'metadata.category': ['billing', 'account']}}]
        """
        clauses: list[dict[str, Any]] = []
        for name, value in (filters or {}).items():
            if not isinstance(name, str) or not name.strip():
                raise ValidationError("a filter needs a field name", field="filters")
            path = name if name in TOP_LEVEL_FILTER_FIELDS or name.startswith("metadata.") else f"metadata.{name}"
            target = path
            if fields is not None:
                if path not in fields.types:
                    known = sorted(k.removeprefix("metadata.") for k in fields.types)
                    raise ValidationError(f"unknown filter field {name!r}; the index has: {', '.join(known)}",
                                          field="filters")
                if path == "title":
                    if not fields.title_keyword:
                        raise ValidationError("this index was built without an exact-match title field; "
                                              "re-create it (`es-rerank index ... --recreate`) to filter on title",
                                              field="filters")
                    target = "title.keyword"
            elif path == "title":
                target = "title.keyword"
            if isinstance(value, (list, tuple)):
                if not value:
                    raise ValidationError(f"filter {name!r} has an empty list of values", field="filters")
                clauses.append({"terms": {target: list(value)}})
            elif isinstance(value, Mapping):
                bounds = {k: v for k, v in value.items() if k in RANGE_OPERATORS}
                if not bounds or len(bounds) != len(value):
                    raise ValidationError(f"filter {name!r}: a range takes only gt/gte/lt/lte, got {sorted(value)}",
                                          field="filters")
                if fields is not None and fields.types.get(path) in ("keyword", "text"):
                    raise ValidationError(f"filter {name!r}: a range needs a numeric or date field; {name!r} is "
                                          f"{fields.types[path]}", field="filters")
                clauses.append({"range": {path: bounds}})
            elif isinstance(value, (str, int, float, bool)):
                clauses.append({"term": {target: value}})
            else:
                raise ValidationError(f"filter {name!r} has an unsupported value of type {type(value).__name__}",
                                      field="filters")
        return clauses

    @staticmethod
    def bm25_query(query: str, clauses: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """The BM25 ``query`` clause: multi_match over text and title, under the filter clauses.

        The query text is always a value inside ``multi_match``, never parsed as query
        syntax, so its content cannot change the request's structure.
        """
        bool_query: dict[str, Any] = {"must": [{"multi_match": {"query": query, "fields": list(TEXT_FIELDS)}}]}
        if clauses:
            bool_query["filter"] = [dict(c) for c in clauses]
        return {"bool": bool_query}

    @staticmethod
    def standard_query(node: Standard) -> dict[str, Any]:
        """The query of a ``standard`` retriever under its filters (unchanged when there are none)."""
        query = dict(node.query) if node.query is not None else {"match_all": {}}
        if not node.filters:
            return query
        return {"bool": {"must": [query], "filter": [dict(f) for f in node.filters]}}

    # -- the retrievers of a plain-text query (Searcher, the comparison page) -------------------

    @classmethod
    def bm25_retriever(cls, query: str, clauses: Sequence[Mapping[str, Any]] = ()) -> Standard:
        """BM25 over text and title (:meth:`bm25_query`); the filter clauses are inside the query."""
        return Standard(cls.bm25_query(query, clauses))

    @staticmethod
    def knn_retriever(k: int, clauses: Sequence[Mapping[str, Any]] = (), *, vector: Sequence[float] | None = None,
                      text: str | None = None) -> Knn:
        """kNN over the chunks' vectors for ``vector`` (or ``text``, embedded later), under the filter clauses."""
        return Knn(VECTOR_FIELD, k, vector=None if vector is None else tuple(float(x) for x in vector), text=text,
                   filters=tuple(dict(c) for c in clauses))

    @classmethod
    def hybrid_retriever(cls, query: str, *, depth: int, rank_constant: int = 60,
                         clauses: Sequence[Mapping[str, Any]] = (), vector: Sequence[float] | None = None,
                         text: str | None = None) -> Rrf:
        """RRF of BM25 and kNN, each taking ``depth`` results (the rank window)."""
        return Rrf((cls.bm25_retriever(query, clauses), cls.knn_retriever(depth, clauses, vector=vector, text=text)),
                   rank_constant, depth)

    # -- request bodies ---------------------------------------------------------------------------

    def leaf_body(self, node: Standard | Knn, *, size: int, source: Any = None) -> dict[str, Any]:
        """The search body of one ``standard`` or ``knn`` retriever, in this engine's syntax.

        Args:
            node: The retriever (a knn's vector resolved).
            size: Hits to fetch.
            source: The ``_source`` to ask for; None leaves it out (the whole ``_source``).

        Raises:
            ValidationError: A kNN option the engine does not take (OpenSearch: ``similarity``).
            ValueError: A knn whose vector is not resolved yet.
        """
        if isinstance(node, Standard):
            body: dict[str, Any] = {"size": size, "query": self.standard_query(node)}
            if node.min_score is not None:
                body["min_score"] = node.min_score
            return with_source(body, source)
        return self.knn_search_body(resolved(node), size=size, k=node.k, field=node.field,
                                    num_candidates=node.num_candidates, clauses=node.filters,
                                    similarity=node.similarity, source=source)

    @abstractmethod
    def can_fuse(self, node: Rrf) -> bool:
        """Whether :meth:`fused_body` can express ``node`` (the cluster's fusion may still be missing)."""

    @abstractmethod
    def fused_body(self, node: Rrf, *, size: int, source: Any = None) -> dict[str, Any]:
        """One search body that fuses ``node``'s retrievers on the server (vectors resolved).

        Raises:
            ValidationError: A tree this engine cannot fuse (see :meth:`can_fuse`).
        """

    def bm25_body(self, query: str, *, size: int, clauses: Sequence[Mapping[str, Any]] = (),
                  source: Sequence[str] = SOURCE_FIELDS) -> dict[str, Any]:
        """Search body for BM25 alone."""
        return self.leaf_body(self.bm25_retriever(query, clauses), size=size, source=list(source))

    def knn_body(self, vector: Sequence[float], *, size: int, clauses: Sequence[Mapping[str, Any]] = (),
                 source: Sequence[str] = SOURCE_FIELDS) -> dict[str, Any]:
        """Search body for approximate kNN alone over the chunks' vectors, under the filter clauses."""
        return self.leaf_body(self.knn_retriever(size, clauses, vector=vector), size=size, source=list(source))

    @abstractmethod
    def knn_search_body(self, vector: Sequence[float], *, size: int, k: int, field: str = VECTOR_FIELD,
                        num_candidates: int | None = None, clauses: Sequence[Mapping[str, Any]] = (),
                        similarity: float | None = None, source: Any = None) -> dict[str, Any]:
        """A kNN search body in this engine's syntax (any vector field; ``source`` None: whole ``_source``).

        Raises:
            ValidationError: An option this engine's kNN search does not take.
        """

    def hybrid_body(self, query: str, vector: Sequence[float], *, depth: int, rank_constant: int = 60,
                    clauses: Sequence[Mapping[str, Any]] = (), source: Sequence[str] = SOURCE_FIELDS) -> dict[str, Any]:
        """Search body that fuses BM25 and kNN with RRF on the server (where supported)."""
        node = self.hybrid_retriever(query, depth=depth, rank_constant=rank_constant, clauses=clauses, vector=vector)
        return self.fused_body(node, size=depth, source=list(source))

    # -- searching ----------------------------------------------------------------------------

    def search(self, index: str, body: Mapping[str, Any], *, headers: Mapping[str, str] | None = None,
               params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``POST /{index}/_search``.

        Raises:
            IndexMissingError, ClusterError: See :meth:`request`.
        """
        return self.request("POST", f"/{index}/_search", body=dict(body), headers=headers, params=params,
                            index=index)

    def msearch(self, index: str, bodies: Sequence[Mapping[str, Any]], *,
                headers: Mapping[str, str] | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Several searches in one round trip; returns the server's ``took`` (ms) and the responses.

        Raises:
            IndexMissingError: The index does not exist.
            ClusterError: A search failed (the first error is reported).
        """
        lines = []
        for body in bodies:
            lines.append(json.dumps({"index": index}))
            lines.append(json.dumps(dict(body), allow_nan=False))
        resp = self.request("POST", "/_msearch", body="\n".join(lines) + "\n", headers=headers, index=index)
        out = []
        for r in resp.get("responses", []):
            if "error" in r:
                err = r["error"]
                if isinstance(err, dict) and err.get("type") == "index_not_found_exception":
                    raise IndexMissingError(index)
                raise self._api_error(int(r.get("status", 500)), r, "multi-search")
            out.append(r)
        return int(resp.get("took", 0)), out

    @staticmethod
    def item_error(error: Any) -> str:
        """Why the cluster refused one bulk item: its reason, and the causes it nests.

        OpenSearch puts the useful part of a document parsing error in ``caused_by`` (its
        reason is just ``failed to parse``); Elasticsearch usually repeats it. A cause whose
        text the message already holds is not repeated.

        Example:
            >>> Engine.item_error({"type": "mapper_parsing_exception", "reason": "failed to parse",
            ...                    "caused_by": {"type": "illegal_argument_exception",
            ...                                  "reason": "field name cannot be an empty string"}})
            'failed to parse: field name cannot be an empty string'
        """
        if not isinstance(error, Mapping):
            return str(error)
        parts: list[str] = []
        node: Any = error
        for _ in range(5):  # causes nest; a few levels say all there is to say
            if not isinstance(node, Mapping):
                break
            reason = node.get("reason")
            text = str(reason) if reason is not None else str(node.get("type", ""))
            if text and not any(text in p for p in parts):
                parts.append(text)
            node = node.get("caused_by")
        return ": ".join(parts) if parts else str(dict(error))

    @staticmethod
    def check_shards(index: str, responses: Sequence[Mapping[str, Any]]) -> None:
        """Refuse responses that some shards did not answer: ``_shards.failed`` > 0, or fewer
        successful and skipped shards than the total (OpenSearch counts a shard with no active
        copy in ``total`` alone, not in ``failed``).

        Raises:
            PartialResultsError: A response counts failed shards; it carries the counts and reasons.

        Example:
            >>> Engine.check_shards("docs", [{"_shards": {"total": 2, "successful": 1, "skipped": 1, "failed": 0}}])
            >>> Engine.check_shards("docs", [{"_shards": {"total": 2, "successful": 1, "failed": 1,
            ...                                    "failures": [{"reason": {"reason": "node left"}}]}}])
            Traceback (most recent call last):
            ...
            es_rerank.errors.PartialResultsError: 1 of 2 shard searches of 'docs' failed, ...
        """
        failed = total = 0
        reasons: list[str] = []
        for resp in responses:
            shards = resp.get("_shards") or {}
            answered = int(shards.get("successful") or 0) + int(shards.get("skipped") or 0)
            failed += max(int(shards.get("failed") or 0), int(shards.get("total") or 0) - answered)
            total += int(shards.get("total") or 0)
            for failure in shards.get("failures") or []:
                reason = failure.get("reason") if isinstance(failure, Mapping) else failure
                text = Engine.item_error(reason)
                if text not in reasons and len(reasons) < 5:
                    reasons.append(text)
        if failed:
            raise PartialResultsError(index, failed=failed, total=total, reasons=reasons)

    @staticmethod
    def hits(resp: Mapping[str, Any]) -> list[Hit]:
        """The hits of a search over an es-rerank index, ranks from 1, scores as floats."""
        hits = []
        for rank, h in enumerate(resp["hits"]["hits"], start=1):
            src = h.get("_source", {})
            hits.append(Hit(
                chunk_id=h["_id"],
                doc_id=str(src.get("doc_id", h["_id"])),
                chunk=int(src.get("chunk", 0)),
                title=src.get("title", ""),
                text=src.get("text", ""),
                metadata=src.get("metadata") or {},
                retrieval_score=float(h.get("_score") or 0.0),
                retrieval_rank=rank,
            ))
        return hits

    # -- administration (names are validated; callers check ownership) -----------------------

    def state(self, name: str, *, headers: Mapping[str, str] | None = None) -> IndexState:
        """Whether ``name`` is missing, a concrete index or an alias, and the ``_meta`` behind it.

        ``headers`` (a caller's ``Authorization``, say) go with the request, so the cluster
        answers what that caller may read.
        """
        validate_index_name(name)
        try:
            resp = self.request("GET", f"/{name}", params={"filter_path": "*.mappings._meta,*.aliases"},
                                headers=headers, index=name)
        except IndexMissingError:
            return IndexState(name, "missing")
        indices = tuple(sorted(resp))
        metas = {i: (resp[i].get("mappings") or {}).get("_meta") or {} for i in indices}
        aliases = {i: tuple(sorted(resp[i].get("aliases") or {})) for i in indices}
        kind = "index" if indices == (name,) else "alias"
        return IndexState(name, kind, indices, metas, aliases)

    def get_mapping(self, index: str) -> dict[str, dict[str, Any]]:
        """Concrete index -> its ``mappings``."""
        resp = self.request("GET", f"/{index}/_mapping", index=index)
        return {k: v.get("mappings", {}) for k, v in resp.items()}

    def max_result_window(self, index: str) -> int:
        """The index's ``index.max_result_window``."""
        resp = self.request("GET", f"/{index}/_settings/index.max_result_window",
                            params={"include_defaults": "true"}, index=index)
        entry = next(iter(resp.values()), {})
        raw = (entry.get("settings", {}).get("index", {}).get("max_result_window")
               or entry.get("defaults", {}).get("index", {}).get("max_result_window")
               or DEFAULT_MAX_RESULT_WINDOW)
        return int(raw)

    #: The parameter bounding a state change's wait on the master (OpenSearch renamed it).
    master_timeout_param = "master_timeout"

    def _master_timeout(self) -> dict[str, str]:
        # a state change still queued on the master when this client gives up would apply later,
        # unseen: bound its wait by the client's own timeout
        return {self.master_timeout_param: f"{max(1, int(self.settings.request_timeout))}s"}

    def create_index(self, name: str, body: Mapping[str, Any]) -> None:
        """Create ONE index, sent once (the caller reads the state back after a timeout)."""
        validate_index_name(name)
        self.request("PUT", f"/{name}", body=dict(body), params=self._master_timeout(), retry=False)

    def delete_index(self, name: str) -> None:
        """Delete ONE concrete index, sent once (the caller checked it is es-rerank's and unserved)."""
        validate_index_name(name)
        self.request("DELETE", f"/{name}", params={"expand_wildcards": "none", **self._master_timeout()},
                     index=name, retry=False)

    def update_aliases(self, actions: Sequence[Mapping[str, Any]]) -> None:
        """Apply alias actions atomically (``add``, ``remove``, ``remove_index``), sent once."""
        for action in actions:
            (op, spec), = action.items()
            for key in ("index", "alias"):
                if key in spec:
                    validate_index_name(spec[key])
        self.request("POST", "/_aliases", body={"actions": [dict(a) for a in actions]},
                     params=self._master_timeout(), retry=False)

    def wait_for_pending(self, *, timeout: float) -> bool:
        """Wait until the master has no queued cluster-state change left; False if it still has after ``timeout``.

        After an unanswered state change, this makes the next read final: a request queued
        on the master has then been applied or has failed.
        """
        # the cluster must answer before this client gives up on the request
        wait = max(0.1, min(timeout, 0.8 * self.settings.request_timeout))
        try:
            resp = self.request("GET", "/_cluster/health", params={"wait_for_events": "languid",
                                                                 "timeout": f"{int(wait * 1000)}ms"})
        except ClusterError as e:
            if e.status == 408:  # the cluster says: timed out waiting
                return False
            raise
        return not resp.get("timed_out", False)

    def put_meta(self, index: str, meta: Mapping[str, Any]) -> None:
        self.request("PUT", f"/{index}/_mapping", body={"_meta": dict(meta)}, index=index)

    def put_settings(self, index: str, settings: Mapping[str, Any]) -> None:
        self.request("PUT", f"/{index}/_settings", body={"index": dict(settings)}, index=index)

    def refresh(self, index: str) -> None:
        self.request("POST", f"/{index}/_refresh", index=index)

    def forcemerge(self, index: str, *, max_num_segments: int = 1) -> None:
        self.request("POST", f"/{index}/_forcemerge", params={"max_num_segments": max_num_segments}, index=index)

    def count(self, index: str, query: Mapping[str, Any] | None = None) -> int:
        body = {"query": dict(query)} if query is not None else None
        return int(self.request("POST", f"/{index}/_count", body=body, index=index)["count"])

    def list_indices(self) -> list[dict[str, Any]]:
        """Every index with its aliases, document count and ``_meta`` (one request each way)."""
        resp = self.request("GET", "/_all", params={"filter_path": "*.mappings._meta,*.aliases,*.settings.index."
                                                                   "creation_date", "expand_wildcards": "open"})
        stats = self.request("GET", "/_stats/docs", params={"expand_wildcards": "open"})
        counts = {k: v["primaries"]["docs"]["count"] for k, v in (stats.get("indices") or {}).items()}
        out = []
        for name, v in sorted(resp.items()):
            out.append({"index": name, "aliases": sorted((v.get("aliases") or {})),
                        "meta": (v.get("mappings") or {}).get("_meta") or {}, "docs": counts.get(name, 0),
                        "created": (v.get("settings") or {}).get("index", {}).get("creation_date")})
        return out

    def iter_ids(self, index: str, query: Mapping[str, Any], *, page: int = 1000) -> Iterator[str]:
        """Ids of every document matching ``query``, paged with ``search_after`` (no 10,000 cap).

        Raises:
            PartialResultsError: A page was missing shards (:meth:`check_shards`).
        """
        after = None
        while True:
            body: dict[str, Any] = {"size": page, "query": dict(query), "_source": False,
                                    "sort": [{"doc_id": "asc"}, {"chunk": "asc"}]}
            if after is not None:
                body["search_after"] = after
            resp = self.search(index, body)
            self.check_shards(index, [resp])  # a page missing shards would miss ids silently
            hits = resp["hits"]["hits"]
            for h in hits:
                yield h["_id"]
            if len(hits) < page:
                return
            after = hits[-1]["sort"]

    # -- bulk -----------------------------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def _bulk_helper() -> Any:
        """The client library's ``helpers.streaming_bulk``."""

    def streaming_bulk(self, actions: Iterable[Mapping[str, Any]], *, chunk_size: int, max_retries: int,
                       initial_backoff: float, max_backoff: float,
                       require_alias: bool = False) -> Iterator[tuple[bool, dict[str, Any]]]:
        """The library's ``streaming_bulk``: per-item results, 429s retried with backoff; errors translated.

        Items retried after a 429 come back after the rest of their chunk: match results by
        operation and ``_id``, never by position. ``require_alias``: every ``_index`` is an
        alias, and an item whose alias is gone fails instead of creating an index.

        Raises:
            ClusterError: An item found its shard without an active primary (503: the node holding
                it left, and no replica took over within the bulk's one-minute wait). Every later
                chunk would wait as long, so the run stops here instead of rejecting item after item.
        """
        extra = {"require_alias": "true"} if require_alias else {}
        results = self._bulk_helper()(self.client, actions, chunk_size=chunk_size, raise_on_error=False,
                                      raise_on_exception=True, max_retries=max_retries,
                                      initial_backoff=initial_backoff, max_backoff=max_backoff, **extra)
        try:
            for ok, item in results:
                result = next(iter(item.values()), {}) if isinstance(item, Mapping) else {}
                if not ok and result.get("status") == 503:
                    raise ClusterError(f"{self.display_name} could not write {result.get('_id')!r} into "
                                       f"{result.get('_index')!r}: {self.item_error(result.get('error', {}))} "
                                       "(a shard has no active copy to write to: is a node down?)",
                                       status=503, error_type="unavailable_shards_exception")
                yield ok, item
        except ClusterError:
            raise
        except Exception as e:  # noqa: BLE001 - translated, else re-raised
            ours = self._translate(e)
            if ours is None:
                raise
            raise ours from e
