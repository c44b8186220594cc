"""Records that serialise themselves: a dataclass's fields as plain JSON-ready values, in field order.

The evaluation tools' reports are frozen dataclasses built by keyword. What ``results.json``
holds is the record itself: every field in declaration order, nested records by their own
``to_dict``, mappings as dicts and tuples as lists; a field marked :data:`IN_MEMORY` (per-query
material for the HTML report) is left out.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True, kw_only=True)
    ... class Point(Record):
    ...     depth: int
    ...     ms: tuple[float, ...]
    ...     details: object = field(default=None, metadata=IN_MEMORY)
    >>> Point(depth=10, ms=(1.5, 2.0), details="not written").to_dict()
    {'depth': 10, 'ms': [1.5, 2.0]}
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any, Mapping

IN_MEMORY = {"json": False}
"""``field(metadata=IN_MEMORY)``: kept on the record, never written to results.json."""


def as_dict(record: Any, **derived: Any) -> dict[str, Any]:
    """``record``'s fields (not those kept :data:`IN_MEMORY`) as plain values, then ``derived`` keys."""
    out = {f.name: plain(getattr(record, f.name)) for f in fields(record) if f.metadata.get("json", True)}
    out.update((k, plain(v)) for k, v in derived.items())
    return out


def plain(value: Any) -> Any:
    """A record by its ``to_dict``, a mapping as a dict, a tuple or list as a list, anything else as is."""
    if is_dataclass(value) and hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


class Record:
    """A dataclass mixin: :meth:`to_dict` is :func:`as_dict` of the record."""

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self)
