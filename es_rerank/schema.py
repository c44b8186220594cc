"""Index mappings: stored as JSON in ``mappings/``, filled in, and checked against an index."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Mapping

from .errors import ConfigError, MappingMismatchError

MAPPING_FILE = "chunks.json"

# field -> type every es-rerank index must have, whatever else it holds.
REQUIRED_FIELDS = {
    "doc_id": "keyword",
    "chunk": "integer",
    "title": "text",
    "text": "text",
    "embedding": "dense_vector",
}

VECTOR_INDEX_TYPES = ("hnsw", "int8_hnsw", "int4_hnsw", "bbq_hnsw")


def load_mapping(
    dims: int,
    *,
    analyzer: str = "standard",
    vector_index_type: str = "hnsw",
    hnsw_m: int = 16,
    hnsw_ef_construction: int = 100,
) -> dict[str, Any]:
    """Read ``mappings/chunks.json`` and fill in its placeholders.

    Args:
        dims: Embedding dimensions (from the embedder).
        analyzer: Analyzer for ``title`` and ``text``. Defaults to ``standard``, which
            every distribution has; language analyzers need the analysis-common module.
        vector_index_type: ``hnsw`` (float), ``int8_hnsw``, ``int4_hnsw`` or ``bbq_hnsw``.
        hnsw_m: HNSW graph degree. Defaults to 16.
        hnsw_ef_construction: HNSW build-time candidates. Defaults to 100.

    Returns:
        The create-index body: ``{"settings": ..., "mappings": ...}``.

    Raises:
        ConfigError: A value is out of range.
    """
    if dims < 1:
        raise ConfigError(f"dims must be >= 1, got {dims}")
    if vector_index_type not in VECTOR_INDEX_TYPES:
        raise ConfigError(f"vector_index_type must be one of {', '.join(VECTOR_INDEX_TYPES)}, got {vector_index_type!r}")
    raw = (resources.files("es_rerank") / "mappings" / MAPPING_FILE).read_text(encoding="utf-8")
    body = json.loads(raw)
    values = {"dims": dims, "analyzer": analyzer, "vector_index_type": vector_index_type,
              "hnsw_m": hnsw_m, "hnsw_ef_construction": hnsw_ef_construction}
    return _fill(body, values)


def _fill(node: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values) for v in node]
    if isinstance(node, str) and node.startswith("{{") and node.endswith("}}"):
        return values[node[2:-2]]
    return node


def check_mapping(index: str, actual: Mapping[str, Any], *, dims: int) -> None:
    """Check an existing index's mapping against what es-rerank writes.

    Args:
        index: Index name, for the message.
        actual: The index's ``mappings`` (``properties`` at the top).
        dims: Dimensions of the configured embedder.

    Raises:
        MappingMismatchError: A required field is missing or has another type, or the
            vector dims differ. The message names the index, the field and both values.
    """
    props = actual.get("properties", {})
    problems = []
    for name, expected_type in REQUIRED_FIELDS.items():
        got = props.get(name, {}).get("type")
        if got is None:
            problems.append(f"field {name!r} is missing (expected {expected_type})")
        elif got != expected_type:
            problems.append(f"field {name!r} is {got}, expected {expected_type}")
    vector = props.get("embedding", {})
    if vector.get("type") == "dense_vector" and vector.get("dims") not in (None, dims):
        problems.append(
            f"embedding dims are {vector.get('dims')} in the index but the configured embedder "
            f"produces {dims}: use the embedder the index was built with, or re-create the index"
        )
    if problems:
        raise MappingMismatchError(f"index {index!r} does not fit es-rerank: " + "; ".join(problems))
