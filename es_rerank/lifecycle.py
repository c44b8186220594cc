"""Index lifecycle: what es-rerank owns, and how an index is replaced without a gap.

The name a user gives (``--index docs``) is an alias. A full build (the first run, or
``--recreate``) fills a new concrete index (``docs-20261127t154501-3fa2``) with refresh off,
turns refresh back on, and only then points the alias at it and deletes the index the alias
pointed to, in one atomic ``_aliases`` request. A failed or interrupted build leaves the
previous index serving untouched; its unfinished index is deleted at once or by the next run.

Every index es-rerank creates carries a ``_meta.es_rerank`` marker (tool version, alias,
state, engine, embedder, dims, chunking, analyzer, corpus fingerprint). es-rerank deletes or
writes into only indices that carry it, and only single names it validated.
"""

from __future__ import annotations

import datetime as _dt
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._versions import PACKAGE_VERSION
from .engines import MARKER, Engine, IndexState, validate_index_name
from .errors import ClusterError, IndexMissingError, NotOwnedError

logger = logging.getLogger(__name__)

BUILDING, READY = "building", "ready"


def new_index_name(alias: str) -> str:
    """A fresh concrete name for a build of ``alias``: the alias, a UTC timestamp and 4 random hex digits."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dt%H%M%S")
    suffix = f"-{stamp}-{secrets.token_hex(2)}"
    # keep the whole name within Elasticsearch's 255 bytes
    base = alias.encode("utf-8")[:255 - len(suffix)].decode("utf-8", "ignore")
    return validate_index_name(base + suffix)


def marker(*, alias: str, state: str, engine: str, embedder: str, embedding_backend: str, dims: int,
           chunk_tokens: int, chunk_overlap: int, analyzer: str, fingerprint: str | None = None,
           extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``_meta`` of an index es-rerank creates."""
    return {MARKER: {
        "tool": "es-rerank", "version": PACKAGE_VERSION, "alias": alias, "state": state, "engine": engine,
        "embedder": embedder, "embedding_backend": embedding_backend, "dims": dims,
        "chunk_tokens": chunk_tokens, "chunk_overlap": chunk_overlap, "analyzer": analyzer,
        "fingerprint": fingerprint,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **dict(extra or {}),
    }}


def require_owned(state: IndexState) -> None:
    """Raise unless every index behind ``state`` carries es-rerank's marker.

    Raises:
        NotOwnedError: Names the index without the marker.
    """
    for index in state.indices:
        if state.marker(index) is None:
            what = f"alias {state.name!r} points at {index!r}, which" if state.kind == "alias" else f"{index!r}"
            raise NotOwnedError(state.name, f"{what} was not created by es-rerank (no _meta.{MARKER} marker); "
                                            "es-rerank writes into and deletes only its own indices: choose another "
                                            "--index")


@dataclass(frozen=True)
class Target:
    """Where an indexing run writes.

    Attributes:
        alias: The name the user gave.
        index: The concrete index written.
        build: True for a new index to be swapped in at the end; False to write into a serving one.
        replaces: Concrete indices the alias swap removes (es-rerank's own, checked).
        marker: The target's marker (a serving index's), for consistency checks.
    """

    alias: str
    index: str
    build: bool
    replaces: tuple[str, ...] = ()
    marker: Mapping[str, Any] | None = None


def plan_target(engine: Engine, alias: str, *, recreate: bool) -> Target:
    """Decide where a run writes, before anything is written.

    Raises:
        ValidationError: An invalid name (commas, wildcards, ``_all`` ...).
        NotOwnedError: The name refers to an index es-rerank did not create.
    """
    state = engine.state(alias)
    if state.kind == "missing":
        return Target(alias, new_index_name(alias), True)
    require_owned(state)
    if recreate:
        return Target(alias, new_index_name(alias), True, replaces=state.indices)
    if len(state.indices) != 1:
        raise NotOwnedError(alias, f"alias {alias!r} points at {len(state.indices)} indices "
                                   f"({', '.join(state.indices)}); index with --recreate to replace them with one")
    index = state.indices[0]
    return Target(alias, index, False, marker=state.marker(index))


def leftovers(engine: Engine, alias: str, *, keep: tuple[str, ...] = ()) -> list[str]:
    """Unfinished builds of ``alias``: es-rerank's indices marked ``building`` that nothing serves."""
    validate_index_name(alias)
    try:
        resp = engine.request("GET", f"/{alias}-*", params={"filter_path": "*.mappings._meta,*.aliases",
                                                            "expand_wildcards": "open,closed"})
    except (IndexMissingError, ClusterError) as e:
        if isinstance(e, ClusterError) and e.status not in (404,):
            raise
        return []
    out = []
    for index, v in (resp or {}).items():
        meta = ((v.get("mappings") or {}).get("_meta") or {}).get(MARKER)
        if not isinstance(meta, Mapping) or meta.get("alias") != alias or meta.get("state") != BUILDING:
            continue
        if v.get("aliases") or index in keep:
            continue
        out.append(index)
    return sorted(out)


def drop_leftovers(engine: Engine, alias: str, *, keep: tuple[str, ...] = ()) -> list[str]:
    """Delete unfinished builds of ``alias`` (see :func:`leftovers`); returns their names."""
    dropped = []
    for index in leftovers(engine, alias, keep=keep):
        logger.info("deleting %s, left over from an interrupted build of %s", index, alias)
        engine.delete_index(index)
        dropped.append(index)
    return dropped


def swap(engine: Engine, target: Target) -> None:
    """Point the alias at the new index and delete what it replaces, in one atomic request."""
    actions: list[dict[str, Any]] = [{"add": {"index": target.index, "alias": target.alias}}]
    actions += [{"remove_index": {"index": old}} for old in target.replaces]
    engine.update_aliases(actions)


def set_state(engine: Engine, index: str, meta: Mapping[str, Any], state: str, **extra: Any) -> dict[str, Any]:
    """Write the marker with a new state (``_meta`` is replaced whole); returns it."""
    new = {MARKER: {**dict(meta[MARKER]), "state": state, **extra}}
    engine.put_meta(index, new)
    return new


@dataclass(frozen=True)
class IndexInfo:
    """One es-rerank index as ``es-rerank indices`` lists it."""

    name: str
    index: str
    documents: int
    chunks: int
    embedder: str | None
    dims: int | None
    created: str | None
    state: str | None
    meta: Mapping[str, Any] = field(default_factory=dict)


def list_owned(engine: Engine) -> list[IndexInfo]:
    """es-rerank's indices (those with its marker), by alias, with document and chunk counts."""
    out = []
    for entry in engine.list_indices():
        meta = entry["meta"]
        mark = meta.get(MARKER) if isinstance(meta.get(MARKER), Mapping) else ({"legacy": True}
                                                                               if "es_rerank_bulk_load" in meta
                                                                               else None)
        if mark is None:
            continue
        index = entry["index"]
        docs = engine.search(index, {"size": 0, "aggs": {"d": {"cardinality": {"field": "doc_id",
                                                                                 "precision_threshold": 40000}}}})
        out.append(IndexInfo(
            name=entry["aliases"][0] if entry["aliases"] else index, index=index,
            documents=int(docs["aggregations"]["d"]["value"]), chunks=int(entry["docs"]),
            embedder=mark.get("embedder"), dims=mark.get("dims"), created=mark.get("created"),
            state=mark.get("state") if "state" in mark else "ready", meta=mark))
    return out


def delete(engine: Engine, name: str) -> list[str]:
    """Delete an es-rerank index by its alias or concrete name; returns the concrete indices deleted.

    Raises:
        ValidationError: An invalid name.
        IndexMissingError: Nothing of that name.
        NotOwnedError: Anything behind the name lacks es-rerank's marker (nothing is deleted).
    """
    state = engine.state(name)
    if state.kind == "missing":
        raise IndexMissingError(name)
    require_owned(state)
    for index in state.indices:
        engine.delete_index(index)
    return list(state.indices)
