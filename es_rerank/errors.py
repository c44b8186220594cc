"""Exceptions raised by es-rerank. Each carries its data as attributes; the CLI turns them
into one-line messages.

Example:
    >>> try:
    ...     raise IndexMissingError("docs")
    ... except EsRerankError as e:
    ...     print(e.index, "|", e)
    docs | index 'docs' does not exist: create it with `es-rerank index PATH --index docs`
"""

from __future__ import annotations

from typing import Any


class EsRerankError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(EsRerankError, ValueError):
    """A setting or argument has a value that cannot work.

    Attributes:
        setting: The setting's name when one is at fault, else None.
    """

    def __init__(self, message: str, *, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class ValidationError(EsRerankError, ValueError):
    """A search request is invalid (empty query, final_k > depth, unknown filter field ...).

    Attributes:
        field: The parameter at fault (``query``, ``final_k``, ``filters`` ...), when known.
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class ClusterError(EsRerankError):
    """The cluster is unreachable, too slow, answered an error, or the local node could not be managed.

    Attributes:
        url: The cluster URL, credentials masked (None when not about one cluster).
        status: HTTP status of an error answer, else None.
        error_type: The engine's error type (``parsing_exception`` ...), else None.
        body: The engine's error body (a dict) when it answered one, else None.
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None,
                 error_type: str | None = None, body: Any = None):
        super().__init__(message)
        self.url = url
        self.status = status
        self.error_type = error_type
        self.body = body


class IndexMissingError(EsRerankError):
    """The index (or alias) to search does not exist.

    Attributes:
        index: Its name.
        hint: Extra advice (e.g. an interrupted build was found), or None.
    """

    def __init__(self, index: str, *, hint: str | None = None):
        message = f"index {index!r} does not exist: create it with `es-rerank index PATH --index {index}`"
        if hint:
            message += f" ({hint})"
        super().__init__(message)
        self.index = index
        self.hint = hint


class MappingMismatchError(EsRerankError):
    """An existing index does not fit the configured embedder or the expected fields.

    Attributes:
        index: The index name.
        problems: One sentence per problem found.
    """

    def __init__(self, index: str, problems: list[str]):
        super().__init__(f"index {index!r} does not fit es-rerank: " + "; ".join(problems))
        self.index = index
        self.problems = list(problems)


class NotOwnedError(EsRerankError):
    """es-rerank refuses to delete or overwrite an index it did not create (no ``_meta`` marker).

    Attributes:
        index: The index (or alias) name.
        reason: Why it is refused.
    """

    def __init__(self, index: str, reason: str):
        super().__init__(f"refusing to touch {index!r}: {reason}")
        self.index = index
        self.reason = reason


class ModelError(EsRerankError):
    """A model (embedder or cross-encoder) or its runtime cannot be loaded or run.

    Attributes:
        model: The model's name or folder, when known.
    """

    def __init__(self, message: str, *, model: str | None = None):
        super().__init__(message)
        self.model = model


class RerankerError(ModelError):
    """A reranker failed to load or to score.

    Attributes:
        reranker: The reranker's name, when known.
    """

    def __init__(self, message: str, *, reranker: str | None = None, model: str | None = None):
        super().__init__(message, model=model)
        self.reranker = reranker


class InputError(EsRerankError):
    """A document source cannot be read at all (missing path, unknown format, not a regular file).

    Attributes:
        path: The path at fault, when known.
    """

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path


class IndexingError(EsRerankError):
    """Indexing stopped part-way.

    Attributes:
        report: How far it got (:class:`es_rerank.streaming.IndexReport`), or None.
    """

    def __init__(self, message: str, report: Any = None):
        super().__init__(message)
        self.report = report


class LeaseHeldError(EsRerankError):
    """Another es-rerank run holds the lease on this name (one build or write per alias at a time).

    Attributes:
        index: The alias.
        owner: Who holds it (``host pid N``), as recorded in the lease.
        expires: When the lease runs out unless renewed (ISO 8601, UTC).
    """

    def __init__(self, index: str, owner: str, expires: str):
        super().__init__(f"another es-rerank run ({owner}) is changing {index!r} and holds its lease until {expires} "
                         "(UTC); nothing was changed. Wait for that run to finish, or, if it was killed, for the "
                         "lease to run out (ES_RERANK_LEASE_TTL)")
        self.index = index
        self.owner = owner
        self.expires = expires


class LeaseLostError(EsRerankError):
    """This run's lease was taken over (it ran out while the run was stalled); nothing more is changed."""

    def __init__(self, index: str):
        super().__init__(f"this run lost its lease on {index!r} (it ran out while the run was stalled and another "
                         f"run took it over); stopping without switching {index!r}")
        self.index = index


class BuildRejectedError(IndexingError):
    """A finished build failed its acceptance rule and was not swapped in (the previous index serves on).

    Attributes:
        index: The alias.
        reasons: Why the build was refused.
    """

    def __init__(self, index: str, reasons: list[str], report: Any = None):
        super().__init__(f"the new build of {index!r} was not switched in: {'; '.join(reasons)}", report)
        self.index = index
        self.reasons = list(reasons)


class UncertainStateError(ClusterError):
    """A state change got no answer and reading the cluster could not settle what happened.

    Attributes:
        index: The alias or index concerned.
        state: What could be read (the message says it in words).
    """

    def __init__(self, message: str, *, index: str, url: str | None = None):
        super().__init__(message, url=url)
        self.index = index


class TrainingRefusedError(EsRerankError, ValueError):
    """``train`` / ``distill`` refused before any work: the data or the output would give a wrong model.

    Attributes:
        reason: A short key (``too-few-queries``, ``missing-documents``, ``output-exists``,
            ``split-overlap``, ``no-examples``).
        values: The offending values (query or document ids, a path), at most a few.
    """

    def __init__(self, message: str, *, reason: str, values: tuple[str, ...] = ()):
        super().__init__(message)
        self.reason = reason
        self.values = values


class PartialResultsError(ClusterError):
    """Some shards did not answer a search, so its hits are not the whole index's: refused, never passed off as whole.

    The cluster answers such a search with HTTP 200 and counts the missing shards in
    ``_shards.failed`` (a node holding the only copy of a shard is down, a shard is still
    recovering, ...). es-rerank does not rerank part of an index as if it were all of it.

    Attributes:
        index: The index (or expression) searched.
        failed: Shards that failed, summed over the searches of one retrieval.
        total: Shards asked, summed likewise.
        reasons: The distinct failure reasons the cluster gave (at most five).
    """

    def __init__(self, index: str, *, failed: int, total: int, reasons: list[str]):
        why = f": {'; '.join(reasons)}" if reasons else ""
        super().__init__(f"{failed} of {total} shard searches of {index!r} failed, so the results would be partial; "
                         f"nothing was reranked (is a node down? add replicas to keep answering when one is){why}",
                         status=503, error_type="es_rerank_partial_results_exception")
        self.index = index
        self.failed = failed
        self.total = total
        self.reasons = list(reasons)
