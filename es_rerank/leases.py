"""Leases: one es-rerank run at a time changes a given index name.

A lease is a document in the ``es-rerank-leases`` index whose id is the alias. It is taken
with ``op_type=create`` (atomic: of two runs, exactly one creates it), renewed and released
with ``if_seq_no``/``if_primary_term`` (so a run can only renew or release its own), and it
runs out ``ttl`` seconds after its last renewal. A lease whose time ran out, or whose owner
is a process on this host that no longer exists, is abandoned and may be taken over (again
with a compare-and-set, so only one run takes it).

Expiry times come from the clock of the run that wrote them: keep ``ES_RERANK_LEASE_TTL``
well above the clock skew between the machines that index into one cluster.

Example:
    >>> from es_rerank.leases import LEASE_INDEX
    >>> LEASE_INDEX
    'es-rerank-leases'
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping

from .engines import Engine, validate_index_name
from .errors import ClusterError, LeaseHeldError, LeaseLostError

logger = logging.getLogger(__name__)

LEASE_INDEX = "es-rerank-leases"
_LEASE_BODY = {
    "settings": {"index": {"number_of_shards": 1, "auto_expand_replicas": "0-1"}},
    "mappings": {"dynamic": False, "properties": {"alias": {"type": "keyword"}, "expires": {"type": "date"}}},
}


@dataclass(frozen=True)
class Lease:
    """A lease this run holds.

    Attributes:
        alias: The name it guards.
        token: This run's random token (tells our lease from another run's).
        owner: ``host pid N``, for messages.
        seq_no: The lease document's sequence number (for compare-and-set).
        primary_term: Its primary term (for compare-and-set).
        expires: When it runs out (seconds since the epoch).
        ttl: Seconds a renewal adds.
    """

    alias: str
    token: str
    owner: str
    seq_no: int
    primary_term: int
    expires: float
    ttl: float


def _iso(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).isoformat(timespec="seconds")


def _doc(alias: str, token: str, ttl: float) -> dict[str, Any]:
    now = time.time()
    return {"alias": alias, "token": token, "host": socket.gethostname(), "pid": os.getpid(),
            "acquired": _iso(now), "expires": int((now + ttl) * 1000)}


def _owner(doc: Mapping[str, Any]) -> str:
    return f"host {doc.get('host', '?')} pid {doc.get('pid', '?')}"


def _ensure_index(engine: Engine) -> None:
    try:
        engine.request("PUT", f"/{LEASE_INDEX}", body=_LEASE_BODY)
    except ClusterError as e:
        if e.error_type != "resource_already_exists_exception":
            raise


def _read(engine: Engine, alias: str) -> tuple[dict[str, Any], int, int] | None:
    """The lease document of ``alias`` with its seq_no and primary term, or None."""
    try:
        resp = engine.request("GET", f"/{LEASE_INDEX}/_doc/{alias}")
    except ClusterError as e:
        if e.status == 404:
            return None
        raise
    if not resp.get("found"):
        return None
    return resp["_source"], int(resp["_seq_no"]), int(resp["_primary_term"])


def _abandoned(doc: Mapping[str, Any]) -> bool:
    """Whether a lease may be taken over: it ran out, or its owner process on this host is gone."""
    if float(doc.get("expires", 0)) / 1000 < time.time():
        return True
    if doc.get("host") != socket.gethostname() or not isinstance(doc.get("pid"), int):
        return False
    if doc["pid"] == os.getpid():
        return False
    try:
        os.kill(doc["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a live process of another user
        return False
    return False


def _write(engine: Engine, alias: str, doc: Mapping[str, Any], *, cas: tuple[int, int] | None) -> dict[str, Any]:
    """Create (``cas`` None) or compare-and-set the lease document; sent once, never retried blindly."""
    if cas is None:
        return engine.request("PUT", f"/{LEASE_INDEX}/_create/{alias}", body=dict(doc),
                              params={"refresh": "true"}, retry=False)
    return engine.request("PUT", f"/{LEASE_INDEX}/_doc/{alias}", body=dict(doc), retry=False,
                          params={"refresh": "true", "if_seq_no": cas[0], "if_primary_term": cas[1]})


def _settle_write(engine: Engine, alias: str, token: str, error: ClusterError) -> tuple[int, int] | None:
    """After an unanswered lease write: read it back; our token there means it was written."""
    if error.status is not None and error.status < 500:
        return None
    current = _read(engine, alias)
    if current is not None and current[0].get("token") == token:
        return current[1], current[2]
    return None


def acquire(engine: Engine, alias: str, *, ttl: float) -> Lease:
    """Take the lease on ``alias``, or raise.

    Raises:
        LeaseHeldError: Another live run holds it (names the owner and when it runs out).
        ClusterError: The cluster cannot be reached.
    """
    validate_index_name(alias)
    _ensure_index(engine)
    token = secrets.token_hex(8)
    for _ in range(3):  # a lease may be released between our create and our read
        doc = _doc(alias, token, ttl)
        current = _read(engine, alias)
        cas = None
        if current is not None:
            if not _abandoned(current[0]):
                raise LeaseHeldError(alias, _owner(current[0]), _iso(float(current[0].get("expires", 0)) / 1000))
            logger.info("taking over the abandoned lease on %s (%s)", alias, _owner(current[0]))
            cas = (current[1], current[2])
        try:
            resp = _write(engine, alias, doc, cas=cas)
            seq = (int(resp["_seq_no"]), int(resp["_primary_term"]))
        except ClusterError as e:
            if e.status == 409:  # another run created or took it first: look again
                continue
            seq = _settle_write(engine, alias, token, e)
            if seq is None:
                raise
        except BaseException:  # interrupted while the lease may have been written: give it back
            _release_token(engine, alias, token)
            raise
        return Lease(alias, token, _owner(doc), seq[0], seq[1], doc["expires"] / 1000, ttl)
    current = _read(engine, alias)
    owner = _owner(current[0]) if current else "unknown"
    raise LeaseHeldError(alias, owner, _iso(float(current[0].get("expires", 0)) / 1000) if current else "?")


def renew(engine: Engine, lease: Lease) -> Lease:
    """Extend ``lease`` by its ttl; proves it is still ours.

    Raises:
        LeaseLostError: Another run took it over.
    """
    doc = _doc(lease.alias, lease.token, lease.ttl)
    try:
        resp = _write(engine, lease.alias, doc, cas=(lease.seq_no, lease.primary_term))
        seq = (int(resp["_seq_no"]), int(resp["_primary_term"]))
    except ClusterError as e:
        if e.status == 409:
            raise LeaseLostError(lease.alias) from None
        seq = _settle_write(engine, lease.alias, lease.token, e)
        if seq is None:
            raise
    return replace(lease, seq_no=seq[0], primary_term=seq[1], expires=doc["expires"] / 1000)


def release(engine: Engine, lease: Lease) -> bool:
    """Give the lease up (only if it is still ours); False when that could not be done (it runs out anyway)."""
    try:
        _delete(engine, lease.alias, (lease.seq_no, lease.primary_term))
        return True
    except ClusterError as e:
        if e.status == 404:
            return True
        if e.status != 409:
            logger.warning("could not release the lease on %s (%s); it runs out at %s", lease.alias, e,
                           _iso(lease.expires))
            return False
    # a renewal whose answer was lost changed the sequence number: ours is ours by its token
    return _release_token(engine, lease.alias, lease.token)


def _delete(engine: Engine, alias: str, cas: tuple[int, int]) -> None:
    engine.request("DELETE", f"/{LEASE_INDEX}/_doc/{alias}", retry=False,
                   params={"refresh": "true", "if_seq_no": cas[0], "if_primary_term": cas[1]})


def _release_token(engine: Engine, alias: str, token: str) -> bool:
    """Delete the lease of ``alias`` if it carries ``token`` (best effort; a lease runs out anyway)."""
    try:
        current = _read(engine, alias)
        if current is None:
            return True
        if current[0].get("token") != token:
            logger.warning("the lease on %s was no longer ours when released", alias)
            return False
        _delete(engine, alias, (current[1], current[2]))
        return True
    except ClusterError as e:
        logger.warning("could not release the lease on %s (%s); it runs out by itself", alias, e)
        return False


class LeaseKeeper:
    """Holds a lease for one run: renews it when a third of its ttl has passed (call :meth:`keep`).

    Renewal happens in the caller's thread at points of its choosing (after each document,
    before the swap), so a stalled run loses its lease instead of renewing it from a
    background thread while doing nothing.
    """

    def __init__(self, engine: Engine, lease: Lease):
        self.engine = engine
        self.lease = lease
        self._lock = threading.Lock()
        self._renewed = time.monotonic()

    def keep(self, *, force: bool = False) -> None:
        """Renew now (``force``) or when a third of the ttl has passed.

        Raises:
            LeaseLostError: Another run took the lease over.
        """
        with self._lock:
            if force or time.monotonic() - self._renewed > self.lease.ttl / 3:
                self.lease = renew(self.engine, self.lease)
                self._renewed = time.monotonic()


@contextmanager
def held(engine: Engine, alias: str, *, ttl: float) -> Iterator[LeaseKeeper]:
    """Hold the lease on ``alias`` for the block; released on the way out, whatever happens.

    Raises:
        LeaseHeldError: Another live run holds it.
    """
    keeper = LeaseKeeper(engine, acquire(engine, alias, ttl=ttl))
    try:
        yield keeper
    finally:
        release(engine, keeper.lease)
