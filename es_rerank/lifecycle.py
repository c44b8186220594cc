"""Index lifecycle: what es-rerank owns, and how an index is replaced without a gap or a loss.

The name a user gives (``--index docs``) is an alias. A full build (the first run, or
``--recreate``) fills a new concrete index (``docs-20261127t154501-3fa2``) through its private
writer alias (``docs-20261127t154501-3fa2-writer``; bulk requests say ``require_alias``), checks
it, marks it ready, and only then points the alias at it, removes the writer alias and deletes
the index the alias pointed to, in one atomic ``_aliases`` request (the swap).

Invariants (tests/test_lifecycle_faults.py injects a fault at every request and checks them):

1. After any interruption, timeout, lost answer or crash, at any point, an alias es-rerank
   manages points at exactly one complete index (marker state ``ready``): the old one or the
   new one. Never at none once it existed, never at two, never at an unfinished build.
2. No index is deleted while an alias points at it, except the index a swap replaces, in the
   same atomic request that moves the alias away (and only when no other alias serves it),
   and the index ``delete NAME`` names, when NAME is its only alias.
3. A build that did not meet its acceptance rule (at least one document; no rejected record
   unless the user allowed them; every acknowledged chunk searchable) is never swapped in.
4. One run at a time changes a name: every build, write or delete holds the name's lease
   (:mod:`es_rerank.leases`). Clean-up deletes only builds whose name has the build pattern of
   that alias, whose marker names that very index, that nothing serves, while holding the lease.
5. A state change whose answer did not arrive is settled by reading, not by retrying or undoing
   blindly: wait until the master has no queued change left, read the alias, and continue from
   what is true. Such requests are sent once (no client retry); a swap is sent again only after
   the read proved it was not applied. When the truth cannot be read, nothing is deleted and the
   message says so.

Every index es-rerank creates carries a ``_meta.es_rerank`` marker (tool version, alias, its own
name, state, engine, embedder, dims, chunking, analyzer, corpus fingerprint). es-rerank deletes or
writes into only indices that carry it, and only single names it validated.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._versions import PACKAGE_VERSION
from .engines import MARKER, Engine, IndexState, validate_index_name
from .engines.base import writer_alias
from .errors import ClusterError, IndexMissingError, NotOwnedError, UncertainStateError
from .leases import held

logger = logging.getLogger(__name__)

BUILDING, READY = "building", "ready"
SWITCHED, NOT_SWITCHED, UNKNOWN = "switched", "not switched", "unknown"


def new_index_name(alias: str) -> str:
    """A fresh concrete name for a build of ``alias``: the alias, a UTC timestamp and 4 random hex digits."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dt%H%M%S")
    suffix = f"-{stamp}-{secrets.token_hex(2)}"
    # keep the whole name (and its writer alias) within Elasticsearch's 255 bytes
    room = 255 - len(suffix) - len(writer_alias(""))
    base = alias.encode("utf-8")[:room].decode("utf-8", "ignore")
    return validate_index_name(base + suffix)


def is_build_of(index: str, alias: str) -> bool:
    """Whether ``index`` has the name :func:`new_index_name` gives builds of ``alias``."""
    room = 255 - len("-20260101t000000-0000") - len(writer_alias(""))
    base = alias.encode("utf-8")[:room].decode("utf-8", "ignore")
    return re.fullmatch(re.escape(base) + r"-\d{8}t\d{6}-[0-9a-f]{4}", index) is not None


def marker(*, alias: str, state: str, engine: str, embedder: str, embedding_backend: str, dims: int,
           chunk_tokens: int, chunk_overlap: int, analyzer: str, fingerprint: str | None = None,
           index: str | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``_meta`` of an index es-rerank creates (``index``: the index's own name, for builds)."""
    own = {"index": index} if index is not None else {}
    return {MARKER: {
        "tool": "es-rerank", "version": PACKAGE_VERSION, "alias": alias, **own, "state": state, "engine": engine,
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


def require_sole_alias(state: IndexState, *, action: str) -> None:
    """Raise when an index behind ``state`` is also served by another alias (it would go with it).

    Raises:
        NotOwnedError: Names the index and every other alias that serves it.
    """
    for index in state.indices:
        others = state.other_aliases(index, besides=state.name)
        if others:
            raise NotOwnedError(state.name, f"{index!r} is also served by {', '.join(repr(a) for a in others)}; "
                                            f"{action} would take it from them too. Nothing was changed: remove "
                                            "those aliases first, or use another --index")


@dataclass(frozen=True)
class Target:
    """Where an indexing run writes.

    Attributes:
        alias: The name the user gave.
        index: The concrete index written.
        build: True for a new index to be swapped in at the end; False to write into a serving one.
        replaces: Concrete indices the alias swap removes (es-rerank's own, checked).
        marker: The serving index's marker: for consistency checks, and (a rebuild) what the build carries over.
        through_alias: Write through ``alias`` (True) or the concrete ``index`` (a legacy index named directly).
    """

    alias: str
    index: str
    build: bool
    replaces: tuple[str, ...] = ()
    marker: Mapping[str, Any] | None = None
    through_alias: bool = True

    @property
    def write_to(self) -> str:
        """The name bulk requests address: always an alias, so they can never create an index."""
        if self.build:
            return writer_alias(self.index)
        return self.alias if self.through_alias else self.index


def plan_target(engine: Engine, alias: str, *, recreate: bool) -> Target:
    """Decide where a run writes, before anything is written (call it holding the lease).

    Raises:
        ValidationError: An invalid name (commas, wildcards, ``_all`` ...).
        NotOwnedError: The name refers to an index es-rerank did not create, or (``recreate``)
            one another alias also serves.
    """
    state = engine.state(alias)
    if state.kind == "missing":
        return Target(alias, new_index_name(alias), True)
    require_owned(state)
    if recreate:
        require_sole_alias(state, action="replacing it")
        # the serving marker travels to the build (its pipeline moves with the alias swap)
        served = state.marker(state.indices[0]) if len(state.indices) == 1 else None
        return Target(alias, new_index_name(alias), True, replaces=state.indices, marker=served)
    if len(state.indices) != 1:
        raise NotOwnedError(alias, f"alias {alias!r} points at {len(state.indices)} indices "
                                   f"({', '.join(state.indices)}); index with --recreate to replace them with one")
    index = state.indices[0]
    return Target(alias, index, False, marker=state.marker(index), through_alias=state.kind == "alias")


def build_body(body: Mapping[str, Any], target: Target, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The create-index body of a build: its marker, and its writer alias created with it (atomically)."""
    out = dict(body)
    out["mappings"] = {**dict(body["mappings"]), "_meta": dict(meta)}
    out["aliases"] = {writer_alias(target.index): {}}
    return out


def create_build(engine: Engine, target: Target, body: Mapping[str, Any]) -> None:
    """Create the build's index; an unanswered create is settled by reading it back.

    Raises:
        ClusterError: The cluster refused it, or it is unreachable and the outcome unknown.
    """
    try:
        engine.create_index(target.index, body)
    except ClusterError as e:
        if e.status is not None and e.status < 500:
            raise
        engine.wait_for_pending(timeout=engine.settings.request_timeout)
        state = engine.state(target.index)
        mark = state.marker(target.index) if state.kind == "index" else None
        if mark is None or mark.get("index") != target.index:
            raise
        logger.info("the create of %s got no answer, but it was created", target.index)


def leftovers(engine: Engine, alias: str, *, keep: tuple[str, ...] = ()) -> list[str]:
    """Abandoned builds of ``alias``: es-rerank's indices with a build's name that nothing serves.

    An index counts only when its name has the build pattern of ``alias``, its marker names
    ``alias`` and the index itself (a marker copied onto another index proves nothing), and no
    alias points at it but its own writer. Call it holding the lease, so no live build is among them.
    """
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
        if index in keep or not is_build_of(index, alias) or not isinstance(meta, Mapping):
            continue
        if meta.get("alias") != alias or meta.get("state") not in (BUILDING, READY):
            continue
        if meta.get("index", index) != index:
            continue
        if set(v.get("aliases") or {}) - {writer_alias(index)}:
            continue
        out.append(index)
    return sorted(out)


def drop_leftovers(engine: Engine, alias: str, *, keep: tuple[str, ...] = ()) -> list[str]:
    """Delete abandoned builds of ``alias`` (see :func:`leftovers`); returns their names.

    A swap an earlier run sent may still be queued on the master: wait for the queue to
    empty, then read again, so that nothing a late swap made serving is deleted.
    """
    if not leftovers(engine, alias, keep=keep):
        return []
    if not engine.wait_for_pending(timeout=engine.settings.request_timeout):
        logger.warning("the master still has queued changes; leaving unfinished builds of %s for a later run", alias)
        return []
    dropped = []
    for index in leftovers(engine, alias, keep=keep):
        logger.info("deleting %s, left over from an interrupted build of %s", index, alias)
        if delete_unserved(engine, index):
            dropped.append(index)
    return dropped


def delete_unserved(engine: Engine, index: str) -> bool:
    """Delete one concrete index unless an alias (other than its writer) serves it; True when it is gone.

    An unanswered delete is settled by reading: gone is gone.
    """
    state = engine.state(index)
    if state.kind == "missing":
        return True
    if state.kind != "index" or state.other_aliases(index, besides=index):
        logger.warning("not deleting %s: %s serves it", index, ", ".join(state.aliases.get(index, ())) or "an alias")
        return False
    try:
        engine.delete_index(index)
    except IndexMissingError:
        return True
    except ClusterError as e:
        if e.status is not None and e.status < 500:
            raise
        if not engine.wait_for_pending(timeout=engine.settings.request_timeout):
            raise
        return engine.state(index).kind == "missing"
    return True


def swap_actions(target: Target) -> list[dict[str, Any]]:
    """The one atomic ``_aliases`` request of a swap: alias to the build, writer gone, the old indices deleted."""
    actions: list[dict[str, Any]] = [{"add": {"index": target.index, "alias": target.alias}},
                                     {"remove": {"index": target.index, "alias": writer_alias(target.index)}}]
    actions += [{"remove_index": {"index": old}} for old in target.replaces]
    return actions


def swap_outcome(engine: Engine, target: Target, *, timeout: float) -> str:
    """Whether a swap that got no answer took effect: ``switched``, ``not switched`` or ``unknown``.

    Waits until the master has no queued change (a late swap has then applied or failed), then
    reads the alias. Never raises: an unreachable cluster is ``unknown``.
    """
    try:
        if not engine.wait_for_pending(timeout=timeout):
            return UNKNOWN
        state = engine.state(target.alias)
    except ClusterError as e:
        logger.warning("could not read %s after the swap (%s)", target.alias, e)
        return UNKNOWN
    if state.indices == (target.index,):
        return SWITCHED
    if state.indices == tuple(sorted(target.replaces)) and target.index not in state.indices:
        return NOT_SWITCHED
    return UNKNOWN


def swap(engine: Engine, target: Target) -> None:
    """Point the alias at the new index and delete what it replaces, in one atomic request.

    A swap whose answer is lost is settled by reading (:func:`swap_outcome`): applied is done;
    proven not applied is sent once more (a swap carries its own preconditions: it fails whole
    if an index it removes is gone); anything else raises, deleting nothing.

    Raises:
        ClusterError: The cluster refused the swap (nothing changed).
        UncertainStateError: Whether the swap took effect cannot be read; nothing was deleted.
    """
    for attempt in (1, 2):
        try:
            engine.update_aliases(swap_actions(target))
            return
        except ClusterError as e:
            if e.status is not None and e.status < 500:
                raise
            outcome = swap_outcome(engine, target, timeout=engine.settings.request_timeout)
            logger.warning("the swap of %s to %s got no answer (%s); reading the cluster: %s", target.alias,
                           target.index, e, outcome)
            if outcome == SWITCHED:
                return
            if outcome == UNKNOWN or attempt == 2:
                raise UncertainStateError(uncertain_message(target, e), index=target.alias, url=e.url) from e


def uncertain_message(target: Target, cause: Any) -> str:
    return (f"the switch of {target.alias!r} to {target.index} got no answer ({cause}) and the cluster could not "
            f"be read to tell whether it happened; nothing was deleted: {target.alias!r} serves either its "
            f"previous index or the complete new one. `es-rerank indices` shows which; the next run of this "
            "index cleans up what nothing serves")


def set_state(engine: Engine, index: str, meta: Mapping[str, Any], state: str, **extra: Any) -> dict[str, Any]:
    """Write the marker with a new state (``_meta`` is replaced whole; idempotent); returns it."""
    new = {MARKER: {**dict(meta[MARKER]), "state": state, **extra}}
    engine.put_meta(index, new)
    return new


@dataclass(frozen=True)
class IndexInfo:
    """One es-rerank index as ``es-rerank indices`` lists it.

    ``problem`` says why counts are missing when the index could not be read (it is listed anyway).
    """

    name: str
    index: str
    documents: int | None
    chunks: int
    embedder: str | None
    dims: int | None
    created: str | None
    state: str | None
    meta: Mapping[str, Any] = field(default_factory=dict)
    problem: str | None = None


def list_owned(engine: Engine) -> list[IndexInfo]:
    """es-rerank's indices (those with its marker), by alias, with document and chunk counts.

    One index that cannot be counted (a broken mapping, a red shard) is listed with its
    problem; the others are listed as usual.
    """
    out = []
    for entry in engine.list_indices():
        meta = entry["meta"]
        mark = meta.get(MARKER) if isinstance(meta.get(MARKER), Mapping) else ({"legacy": True}
                                                                               if "es_rerank_bulk_load" in meta
                                                                               else None)
        if mark is None:
            continue
        index = entry["index"]
        documents, problem = None, None
        try:
            docs = engine.search(index, {"size": 0, "aggs": {"d": {"cardinality": {
                "field": "doc_id", "precision_threshold": 40000}}}})
            documents = int(docs["aggregations"]["d"]["value"])
        except ClusterError as e:
            problem = str(e)
        aliases = [a for a in entry["aliases"] if a != writer_alias(index)]
        out.append(IndexInfo(
            name=aliases[0] if aliases else index, index=index, documents=documents, chunks=int(entry["docs"]),
            embedder=mark.get("embedder"), dims=mark.get("dims"), created=mark.get("created"),
            state=mark.get("state") if "state" in mark else "ready", meta=mark, problem=problem))
    return out


def delete(engine: Engine, name: str, *, lease_ttl: float | None = None) -> list[str]:
    """Delete an es-rerank index by its alias or concrete name; returns the concrete indices deleted.

    Holds the name's lease while it works. Refuses when another alias also serves an index
    behind ``name`` (deleting it would take it from that alias too).

    Raises:
        ValidationError: An invalid name.
        IndexMissingError: Nothing of that name.
        NotOwnedError: Anything behind the name lacks es-rerank's marker, or another alias
            serves it (nothing is deleted).
        LeaseHeldError: Another run is changing it.
    """
    ttl = engine.settings.lease_ttl if lease_ttl is None else lease_ttl
    state = engine.state(name)
    if state.kind == "missing":
        raise IndexMissingError(name)
    with held(engine, name, ttl=ttl):
        state = engine.state(name)
        if state.kind == "missing":
            raise IndexMissingError(name)
        require_owned(state)
        require_sole_alias(state, action="deleting it")
        deleted = []
        for index in state.indices:
            _delete_served(engine, index, state.name)
            deleted.append(index)
        return deleted


def _delete_served(engine: Engine, index: str, name: str) -> None:
    """Delete ``index`` that ``name`` (and nothing else) serves; an unanswered delete is settled by reading."""
    try:
        engine.delete_index(index)
    except IndexMissingError:
        return
    except ClusterError as e:
        if e.status is not None and e.status < 500:
            raise
        if engine.wait_for_pending(timeout=engine.settings.request_timeout) and \
                engine.state(index).kind == "missing":
            return
        raise UncertainStateError(f"the delete of {index} ({name!r}) got no answer ({e}) and the cluster could not "
                                  "be read to tell whether it happened; run the same command again",
                                  index=name, url=e.url) from e
