"""Search engines behind one small interface: Elasticsearch and OpenSearch.

Example:
    >>> from es_rerank.config import Settings
    >>> from es_rerank.engines import engine_class
    >>> engine_class("opensearch").vector_type
    'knn_vector'
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ClusterError, ConfigError
from .base import MARKER, Engine, FieldInfo, IndexState, validate_index_name
from .elasticsearch import ElasticsearchEngine
from .opensearch import OpenSearchEngine

logger = logging.getLogger(__name__)

ENGINES: dict[str, type[Engine]] = {cls.name: cls for cls in (ElasticsearchEngine, OpenSearchEngine)}
"""The query engine of each name in :data:`es_rerank.config.ENGINE_NAMES` (tests/test_versions.py
checks the two agree)."""


def engine_class(name: str) -> type[Engine]:
    """The engine class for ``elasticsearch`` or ``opensearch``.

    Raises:
        ConfigError: Another name.
    """
    try:
        return ENGINES[name]
    except KeyError:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {name!r}", setting="engine") from None


def detect_engine(settings: Any) -> str:
    """Ask the cluster at ``settings.url`` which engine it is (one ``GET /``).

    OpenSearch names itself in ``version.distribution``; anything else that answers is
    taken as Elasticsearch (its integ-test build does not serve ``GET /`` at all).

    Raises:
        ClusterError: The cluster cannot be reached.
    """
    probe = OpenSearchEngine(settings)
    transport_log = logging.getLogger("opensearch")
    level = transport_log.level
    transport_log.setLevel(logging.CRITICAL)  # a 405 from Elasticsearch's test build is an answer, not a warning
    try:
        root = probe.request("GET", "/")
        distribution = (root.get("version") or {}).get("distribution") if isinstance(root, dict) else None
    except ClusterError as e:
        if e.status is None:  # unreachable or too slow: say so without guessing the engine
            raise ClusterError(str(e).replace("OpenSearch at", "Elasticsearch/OpenSearch at", 1),
                               url=settings.safe_url) from None
        distribution = None
    finally:
        transport_log.setLevel(level)
        probe.close()
    name = "opensearch" if distribution == "opensearch" else "elasticsearch"
    logger.info("detected %s at %s", name, settings.safe_url)
    return name


def open_engine(settings: Any, *, client: Any = None) -> Engine:
    """The engine ``settings.engine`` names (``auto``: detected from the cluster, or from ``client``).

    Args:
        settings: :class:`es_rerank.config.Settings`.
        client: An existing ``elasticsearch.Elasticsearch`` or ``opensearchpy.OpenSearch`` client.

    Raises:
        ClusterError: ``auto`` and the cluster cannot be reached.
        ConfigError: An unknown engine name.
    """
    name = settings.engine
    if name == "auto":
        if client is not None:
            name = "opensearch" if type(client).__module__.startswith("opensearchpy") else "elasticsearch"
        else:
            name = detect_engine(settings)
    return engine_class(name)(settings, client=client)


__all__ = ["Engine", "ElasticsearchEngine", "OpenSearchEngine", "IndexState", "FieldInfo", "MARKER", "open_engine",
           "detect_engine", "engine_class", "validate_index_name"]
