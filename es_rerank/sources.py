"""Read documents from JSONL, CSV and folders of .txt/.md files, safely and record by record.

Reading takes two steps:

1. :func:`plan_paths` checks every given path before anything is read or written: it
   exists, and is a regular file of a supported type or a folder holding at least one
   readable .txt/.md file. Folders are walked without following symbolic links that lead
   outside them and without hidden entries; what is left out is listed as
   :class:`Skipped`, never dropped silently. :meth:`SourcePlan.count_records` counts the
   records to expect (for a progress bar) without reading any record whole.
2. :func:`read_paths` reads the plan. Every record becomes a :class:`Document` or a
   :class:`Rejection` naming the file, the 1-based line and the reason, so records read =
   documents + rejections. One record can only reject itself: bad bytes or escapes, deep
   nesting, odd numbers or sizes never stop the others.

Files are streamed. A JSONL line or CSV row longer than :func:`record_byte_limit` allows
is rejected with its size while it is skipped, so no record, however large, is held in
memory beyond that limit; files that are not regular files (a FIFO, ``/dev/zero``, a
socket) are never opened.

Example:
    >>> plan = plan_paths(["docs.jsonl", "notes/"])  # doctest: +SKIP
    >>> total = plan.count_records()  # doctest: +SKIP
    >>> for record in read_paths(plan):  # doctest: +SKIP
    ...     print(record)
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Literal, NamedTuple, cast

from .errors import ConfigError, InputError
from .types import Document, Rejection

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv",)
TEXT_SUFFIXES = (".txt", ".md", ".markdown")
ID_KEYS = ("id", "_id")
_RECORD_KEYS = frozenset((*ID_KEYS, "text", "title", "metadata"))

Record = Document | Rejection
Kind = Literal["jsonl", "csv", "text"]

DEFAULT_MAX_CHARS = 1_000_000
# Elasticsearch refuses an _id over 512 bytes, and chunk ids are "<id>#<n>".
MAX_ID_BYTES = 500
# Levels of objects and lists under ``metadata`` (the metadata object itself is level 1).
# Documents are indexed under ``metadata.*``, and Elasticsearch refuses mappings deeper than
# ``index.mapping.depth.limit`` (20 by default): 10 keeps well clear of it.
MAX_METADATA_DEPTH = 10
# Room in a JSONL line or CSV row for the id, the metadata and the syntax, beyond text and title.
RECORD_OVERHEAD_BYTES = 1 << 20
# Most bytes one character can take: a JSON surrogate-pair escape ("\ud83d\ude00") is 12;
# UTF-8 is at most 4 (a doubled quote in CSV is 2).
_BYTES_PER_CHAR = {"jsonl": 12, "csv": 4, "text": 4}
_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"
_RAISE_HINT = "raise it with --max-document-chars / ES_RERANK_MAX_DOCUMENT_CHARS"


@dataclass(frozen=True)
class Skipped:
    """An entry of a folder that was not read, and why (not a record: no document was read).

    Attributes:
        path: The entry, as found under the folder given (undecodable bytes escaped).
        reason: Why it was left out, and how to include it where that is possible.
    """

    path: str
    reason: str


@dataclass(frozen=True)
class SourceFile:
    """One regular file to read.

    Attributes:
        path: The file, as given or as found under a folder given.
        kind: ``jsonl``, ``csv`` or ``text`` (one document per file).
        doc_id: Text files: the document id (the path relative to the folder given, or the
            file name when the file was given itself). None for JSONL and CSV.
    """

    path: Path
    kind: Kind
    doc_id: str | None = None

    @property
    def source(self) -> str:
        """The path as records name it (bytes that are not UTF-8 escaped as ``\\xNN``)."""
        return _display(self.path)


@dataclass(frozen=True)
class SourcePlan:
    """What :func:`plan_paths` found: the files to read, in order, and what it left out.

    Attributes:
        files: Regular files to read, in the order given (folders: sorted by path).
        skipped: Folder entries left out (hidden, links outside the folder, other types,
            special files, loops), each with its reason.
    """

    files: tuple[SourceFile, ...]
    skipped: tuple[Skipped, ...] = ()

    def count_records(self) -> int:
        """How many records :func:`read_paths` will yield for this plan, read in a streaming pass.

        JSONL: non-blank lines; CSV: rows after the header (blank rows aside; a file whose
        header is refused counts 1, the rejection); text files: 1 each. Memory is bounded by
        :func:`record_byte_limit` of the default ``max_chars`` whatever the files hold. The
        count matches what is read as long as the files do not change in between (one
        exception: a CSV row of nothing but blanks, over the byte limit of the default but
        not of a larger ``max_chars``, counts as the rejection it would be by default).

        Returns:
            The number of documents plus rejections to expect.
        """
        return sum(_count_file(f) for f in self.files)


def record_byte_limit(max_chars: int | None, kind: Kind = "jsonl") -> int | None:
    """Bytes one record of ``kind`` may take before it is rejected without being parsed.

    Enough for ``max_chars`` characters of text and title in their longest spelling: 12
    bytes a character in JSON (an escaped surrogate pair), 4 in a CSV row or a text file
    (UTF-8), plus :data:`RECORD_OVERHEAD_BYTES` for the id, the metadata and the syntax of
    a JSONL line or CSV row (3 bytes for a byte-order mark in a text file). For the default
    of 1,000,000 characters: about 13 MB a JSONL line, 5 MB a CSV row, 4 MB a text file.
    A longer record holds more than ``max_chars`` characters, so nothing that fits the
    character limit is refused by the byte limit (metadata over 1 MiB aside).

    Args:
        max_chars: The limit on text and title characters; None for no limit.
        kind: ``jsonl``, ``csv`` or ``text``. Defaults to ``jsonl``.

    Returns:
        The limit in bytes, or None (no limit: records are read whole).
    """
    if max_chars is None:
        return None
    extra = len(_BOM) if kind == "text" else RECORD_OVERHEAD_BYTES
    return _BYTES_PER_CHAR[kind] * max_chars + extra


def plan_paths(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    include_hidden: bool = False,
    follow_symlinks: bool = False,
) -> SourcePlan:
    """Check every path and list the files to read, before any record is read.

    A given path must exist and be a regular .jsonl/.ndjson, .csv, .txt, .md or .markdown
    file, or a folder. Given paths are taken as they are (a hidden name or a symbolic link
    named on purpose is read). Folders are walked recursively in sorted order for .txt/.md
    files; these entries are skipped and listed in :attr:`SourcePlan.skipped`: files of
    other types; FIFOs, sockets and devices; hidden names (starting with ".") unless
    ``include_hidden``; symbolic links resolving outside the folder unless
    ``follow_symlinks``; broken links, link loops and folders reached a second time.

    Args:
        paths: Files and folders (a single path is accepted too).
        include_hidden: Read hidden files and folders inside folders. Defaults to False.
        follow_symlinks: Follow symbolic links inside folders that lead outside them.
            Defaults to False.

    Returns:
        The plan: files in reading order, skipped entries.

    Raises:
        InputError: No path given; a path is missing, a broken link, not readable, not a
            regular file or folder (FIFO, socket, device), of an unsupported type; or a
            folder holds no readable .txt/.md file. The message names the path.

    Example:
        >>> plan = plan_paths(["corpus.jsonl", "handbook/"])  # doctest: +SKIP
        >>> [s.reason for s in plan.skipped]  # doctest: +SKIP
        ["hidden (name starts with '.'): include_hidden=True (--include-hidden) reads it"]
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    given = [Path(p) for p in paths]
    if not given:
        raise InputError("no paths given: name at least one .jsonl, .csv, .txt or .md file or a folder")
    files: list[SourceFile] = []
    skipped: list[Skipped] = []
    for path in given:
        shown = _display(path)
        try:
            st = path.stat()
        except FileNotFoundError as e:
            if path.is_symlink():
                raise InputError(f"{shown}: broken symbolic link (its target does not exist)") from e
            raise InputError(f"{shown}: no such file or folder") from e
        except OSError as e:
            raise InputError(f"{shown}: cannot read: {e.strerror}") from e
        if stat.S_ISDIR(st.st_mode):
            before = len(skipped)
            found = _walk(path, st, files, skipped, include_hidden=include_hidden, follow_symlinks=follow_symlinks)
            if not found:
                left = skipped[before:]
                detail = (f"; {len(left)} entr{'y' if len(left) == 1 else 'ies'} skipped, e.g. "
                          f"{left[0].path}: {left[0].reason}") if left else ""
                raise InputError(f"{shown}: folder holds no readable .txt or .md file{detail}")
        elif stat.S_ISREG(st.st_mode):
            kind = _kind(path)
            if kind is None:
                raise InputError(f"{shown}: unsupported file type {path.suffix!r}; "
                                 "use .jsonl, .csv, .txt, .md or a folder of .txt/.md files")
            if not os.access(path, os.R_OK):
                raise InputError(f"{shown}: not readable (permission denied)")
            files.append(SourceFile(path, kind, path.name if kind == "text" else None))
        else:
            raise InputError(f"{shown}: {_special_kind(st.st_mode)}, not a regular file or folder: "
                             "save the data to a .jsonl, .csv, .txt or .md file and give that")
    for s in skipped:
        logger.info("skipping %s: %s", s.path, s.reason)
    return SourcePlan(tuple(files), tuple(skipped))


def read_paths(
    source: SourcePlan | Iterable[str | os.PathLike[str]],
    *,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    include_hidden: bool = False,
    follow_symlinks: bool = False,
) -> Iterator[Record]:
    """Read every file of a plan in turn, rejecting ids already seen earlier in the run.

    Paths are checked (by :func:`plan_paths`) when this is called, before any record is
    read. Each JSONL line, CSV row or text file gives exactly one record: a Document or a
    Rejection naming the file, the 1-based line (None for whole files), the reason and
    the document id when known.

    Args:
        source: A :class:`SourcePlan`, or files and folders to plan first.
        max_chars: Reject documents whose text and title together are longer (about 1,200
            chunks of 200 tokens per million characters, each to be embedded); lines, rows
            and text files are cut off at :func:`record_byte_limit` while reading. None
            accepts any size and reads records whole. Defaults to 1,000,000.
        include_hidden: Passed to :func:`plan_paths` when paths are given. Defaults to False.
        follow_symlinks: Passed to :func:`plan_paths` when paths are given. Defaults to False.

    Returns:
        An iterator of documents and rejections.

    Raises:
        InputError: From :func:`plan_paths`.
        ConfigError: ``max_chars`` is below 1, or a plan comes with ``include_hidden`` or
            ``follow_symlinks`` (they belong to :func:`plan_paths`).

    Example:
        >>> for r in read_paths(["docs.jsonl"]):  # doctest: +SKIP
        ...     print(r.id if isinstance(r, Document) else f"{r.where()}: {r.reason}")
    """
    if max_chars is not None and max_chars < 1:
        raise ConfigError(f"max_chars must be >= 1 (or None for no limit), got {max_chars}")
    if isinstance(source, SourcePlan):
        if include_hidden or follow_symlinks:
            raise ConfigError("include_hidden and follow_symlinks choose what plan_paths finds: "
                              "pass them to plan_paths, not with a plan")
        return _read_plan(source, max_chars)
    return _read_plan(plan_paths(source, include_hidden=include_hidden, follow_symlinks=follow_symlinks), max_chars)


def _read_plan(plan: SourcePlan, max_chars: int | None) -> Iterator[Record]:
    first_seen: dict[str, str] = {}
    for f in plan.files:
        for record in _file_records(f, max_chars):
            if isinstance(record, Document):
                size = len(record.text) + len(record.title)
                if max_chars is not None and size > max_chars:
                    what = "text is" if not record.title else "text and title are"
                    yield Rejection(record.source, record.line,
                                    f"{what} {size:,} characters, over the limit of {max_chars:,} ({_RAISE_HINT})",
                                    record.id)
                    continue
                where = f"{record.source}:{record.line}" if record.line is not None else record.source
                if record.id in first_seen:
                    yield Rejection(record.source, record.line,
                                    f"duplicate id {record.id!r} (first seen at {first_seen[record.id]})", record.id)
                    continue
                first_seen[record.id] = where
            yield record


# --- planning -----------------------------------------------------------------------------


def _display(path: str | os.PathLike[str]) -> str:
    """A path as text that always prints: bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _kind(path: Path) -> Kind | None:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in TEXT_SUFFIXES:
        return "text"
    return None


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a special file"


def _inside(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def _walk(root: Path, root_stat: os.stat_result, files: list[SourceFile], skipped: list[Skipped], *,
          include_hidden: bool, follow_symlinks: bool) -> int:
    """Append the readable .txt/.md files under ``root`` (sorted, depth first); return how many.

    Iterative, so a deep tree cannot exhaust the stack; every folder is entered once (by
    device and inode), so link loops end.
    """
    root_real = os.path.realpath(root)
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    try:
        top = _entries(root)
    except OSError as e:
        raise InputError(f"{_display(root)}: cannot list folder: {e.strerror}") from e
    stack: list[tuple[str, Iterator[os.DirEntry[str]]]] = [("", iter(top))]
    before = len(files)
    while stack:
        rel_dir, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        path = Path(entry.path)
        rel = f"{rel_dir}{entry.name}"
        if entry.name.startswith(".") and not include_hidden:
            skipped.append(Skipped(_display(path), "hidden (name starts with '.'): include_hidden=True "
                                                   "(--include-hidden) reads it"))
            continue
        is_link = entry.is_symlink()
        try:
            st = path.stat()
        except FileNotFoundError:
            reason = "broken symbolic link (its target does not exist)" if is_link else "vanished while listing"
            skipped.append(Skipped(_display(path), reason))
            continue
        except OSError as e:  # ELOOP: "Too many levels of symbolic links"
            skipped.append(Skipped(_display(path), f"cannot read: {e.strerror}"))
            continue
        if is_link and not follow_symlinks:
            target = os.path.realpath(path)
            if not _inside(target, root_real):
                skipped.append(Skipped(_display(path), f"symbolic link to {_display(target)}, outside "
                                                       f"{_display(root)}: follow_symlinks=True "
                                                       "(--follow-symlinks) reads it"))
                continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in visited:
                skipped.append(Skipped(_display(path), "folder already read (a symbolic link loop, or a "
                                                       "second link to it)"))
                continue
            visited.add(key)
            try:
                stack.append((f"{rel}/", iter(_entries(path))))
            except OSError as e:
                skipped.append(Skipped(_display(path), f"cannot list folder: {e.strerror}"))
        elif not stat.S_ISREG(st.st_mode):
            skipped.append(Skipped(_display(path), f"{_special_kind(st.st_mode)}, not a regular file"))
        elif _kind(path) != "text":
            skipped.append(Skipped(_display(path), "not a .txt or .md file (folders are read for .txt/.md; "
                                                   "give .jsonl and .csv files by name)"))
        elif not os.access(path, os.R_OK):
            skipped.append(Skipped(_display(path), "not readable (permission denied)"))
        else:
            files.append(SourceFile(path, "text", rel))
    return len(files) - before


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


# --- reading one file ---------------------------------------------------------------------


class _Unreadable(Exception):
    """A planned file cannot be opened as a regular file any more."""


def _open(path: Path) -> BinaryIO:
    """Open a regular file for reading without ever blocking on a FIFO swapped in after planning."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise _Unreadable(f"cannot open: {e.strerror}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _Unreadable(f"is now {_special_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_records(f: SourceFile, max_chars: int | None) -> Iterator[Record]:
    """One file's records; a file that cannot be opened or read on is one rejection."""
    source = f.source
    limit = record_byte_limit(max_chars, f.kind)
    try:
        fh = _open(f.path)
    except _Unreadable as e:
        yield Rejection(source, None, f"{e}: check the file still exists and is readable", f.doc_id)
        return
    with fh:
        records: Iterator[Record]
        if f.kind == "text":
            doc_id = f.doc_id if f.doc_id is not None else f.path.name
            records = iter([read_text_file(fh, source=source, doc_id=doc_id, suffix=f.path.suffix,
                                           byte_limit=limit)])
        elif f.kind == "jsonl":
            records = read_jsonl(fh, source=source, byte_limit=limit)
        else:
            records = read_csv(fh, source=source, byte_limit=limit)
        try:
            yield from records
        except OSError as e:  # an I/O error part-way: report it, go on with the next file
            yield Rejection(source, None, f"reading stopped: {e.strerror}; the records after the last "
                                          "one reported from this file were not read")


def _count_file(f: SourceFile) -> int:
    """Records :func:`_file_records` will yield for ``f``, without parsing JSON or building documents."""
    if f.kind == "text":
        return 1
    try:
        fh = _open(f.path)
    except _Unreadable:
        return 1  # read as one rejection
    limit = record_byte_limit(DEFAULT_MAX_CHARS, f.kind)
    count = 0
    with fh:
        try:
            if f.kind == "jsonl":
                for _ in _lines(fh, limit):
                    count += 1
            else:
                for _ in _read_csv(fh, f.source, limit, build=False):
                    count += 1
        except OSError:
            count += 1  # read as one rejection after the records before it
    return count


def read_jsonl(fh: BinaryIO, *, source: str, byte_limit: int | None) -> Iterator[Record]:
    """One JSON object per line; blank lines are ignored; a UTF-8 byte-order mark is allowed.

    Args:
        fh: The file, opened in binary mode.
        source: The file's name in records.
        byte_limit: Lines longer than this are rejected with their size and skipped unread
            (see :func:`record_byte_limit`); None reads lines whole.

    Returns:
        One record per non-blank line.
    """
    for number, data, size in _lines(fh, byte_limit):
        if data is None:
            yield Rejection(source, number,
                            f"line is {size:,} bytes, over the reading limit of {byte_limit:,} bytes that the "
                            f"document size limit sets ({_RAISE_HINT}); skipped to the next line")
        else:
            yield _json_record(data, source, number)


def _lines(fh: BinaryIO, limit: int | None) -> Iterator[tuple[int, bytes | None, int]]:
    """Non-blank lines as (number, bytes, size); bytes is None for a line over ``limit``.

    An over-long line is read on in chunks and dropped, so memory stays within the limit.
    """
    number = 0
    while True:
        raw = fh.readline() if limit is None else fh.readline(limit + 1)
        if not raw:
            return
        number += 1
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        if limit is None or raw.endswith(b"\n") or len(raw) <= limit:
            if raw.strip():
                yield number, raw, len(raw.rstrip(b"\r\n"))
            continue
        size, blank = len(raw), not raw.strip()
        while not raw.endswith(b"\n"):
            raw = fh.readline(_CHUNK)
            if not raw:
                break
            size += len(raw)
            blank = blank and not raw.strip()
        if not blank:
            yield number, None, size - raw.endswith(b"\n")


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


class _NonFinite(Exception):
    """A JSON number that is NaN or infinite in double precision."""


def _finite_float(token: str) -> float:
    value = float(token)
    if math.isinf(value):  # 1e999
        raise _NonFinite(token)
    return value


def _no_constant(token: str) -> float:
    raise _NonFinite(token)  # NaN, Infinity, -Infinity: Python reads them, JSON and Elasticsearch do not


# One decoder for every line: building one per call costs as much as parsing a short record.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_float=_finite_float, parse_constant=_no_constant)
# A \u escape of a UTF-16 surrogate (D800-DFFF).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _json_record(data: bytes, source: str, line: int) -> Record:
    """Parse and check one JSONL line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection(source, line, f"not valid UTF-8 (byte {e.start} of the line): save the file as UTF-8")
    try:
        try:
            obj = _DECODER.decode(text)
            # Only a \u escape can put a lone surrogate here (the bytes were strict UTF-8), and
            # nesting needs brackets: most lines need no walk at all.
            walk = _SURROGATE_ESCAPE.search(data) is not None or \
                data.count(b"{") + data.count(b"[") > MAX_METADATA_DEPTH
        except _NonFinite:
            obj = json.loads(text, object_pairs_hook=_unique_keys)  # NaN and Infinity kept, to name the field
            walk = True
    except json.JSONDecodeError as e:
        return Rejection(source, line, f"invalid JSON: {e.msg} at column {e.colno}")
    except _DuplicateKey as e:
        return Rejection(source, line, f"key {_printable(e.key)!r} appears twice in one JSON object "
                                       "(only one value could be kept): keep one")
    except RecursionError:
        return Rejection(source, line, "JSON nested too deeply to parse (hundreds of levels): metadata may nest "
                                       f"at most {MAX_METADATA_DEPTH} levels of objects and lists")
    except ValueError as e:  # an integer of more than 4,300 digits: Python refuses to convert it
        return Rejection(source, line, f"a number is too long to read ({str(e).split(';')[0]}): "
                                       "write it as a string")
    if not isinstance(obj, dict):
        return Rejection(source, line, f"expected a JSON object, got {type(obj).__name__}")
    problem = _check_tree(obj) if walk else None
    if problem is not None:
        return Rejection(source, line, problem, _reported_id(obj))
    return _document(obj, source, line)


def _check_tree(record: dict[str, Any]) -> str | None:
    """The first value (in document order) that cannot go to Elasticsearch, explained; else None.

    Lone UTF-16 surrogates (in field names and strings), non-finite numbers, and metadata
    nested deeper than :data:`MAX_METADATA_DEPTH` (top-level fields other than id, text and
    title join the metadata object, so they start one level down). Iterative: any depth
    that parsed is safe to walk.
    """
    # (value, field path, metadata level of the value when it is an object or a list)
    stack: list[tuple[Any, str, int]] = [(record, "", 0)]
    while stack:
        value, path, level = stack.pop()
        if isinstance(value, str):
            bad = _surrogate(value)
            if bad is not None:
                return f"field {path!r} holds a lone UTF-16 surrogate ({bad}), which is not valid Unicode: " \
                       "fix the \\u escape in the source"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return (f"field {path!r} is {value!r}: NaN and Infinity are not valid JSON for Elasticsearch; "
                        "use null or a string")
        elif isinstance(value, dict):
            if level > MAX_METADATA_DEPTH:
                return _too_deep(path, level)
            children = []
            for k, v in value.items():
                bad = _surrogate(k)
                if bad is not None:
                    where = f" in {path!r}" if path else ""
                    return f"a field name{where} holds a lone UTF-16 surrogate ({bad}), which is not valid " \
                           "Unicode: fix the \\u escape in the source"
                if path:
                    children.append((v, f"{path}.{k}", level + 1))
                else:
                    children.append((v, k, 1 if k == "metadata" else 2))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            if level > MAX_METADATA_DEPTH:
                return _too_deep(path, level)
            stack.extend(reversed([(v, f"{path}[{i}]", level + 1) for i, v in enumerate(value)]))
    return None


def _too_deep(path: str, level: int) -> str:
    return (f"field {path!r} nests objects and lists {level} levels deep, over the limit of {MAX_METADATA_DEPTH} "
            "for metadata (Elasticsearch maps at most 20 levels by default): flatten it")


def _surrogate(s: str) -> str | None:
    """``\\uXXXX at character N`` for the first lone surrogate in ``s``, else None."""
    if s.isascii():
        return None
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"\\u{ord(s[e.start]):04x} at character {e.start + 1}"
    return None


def _printable(s: str, limit: int = 200) -> str:
    """``s`` with lone surrogates escaped, cut to ``limit`` characters: safe to print and encode."""
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s if len(s) <= limit else s[:limit] + "…"


def _raw_id(fields: dict[str, Any]) -> Any:
    """The value of ``id``, else of ``_id``, else None."""
    if "id" in fields:
        return fields["id"]
    return fields.get("_id")


def _reported_id(fields: dict[str, Any]) -> str | None:
    raw_id = _raw_id(fields)
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return None
    return _printable(str(raw_id).strip())


def _document(fields: dict[str, Any], source: str, line: int | None) -> Record:
    """Validate one record's fields into a Document, or explain the rejection."""
    raw_id = _raw_id(fields)
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        return Rejection(source, line, "missing or empty 'id' (or '_id')")
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        return Rejection(source, line, f"'id' must be a string or integer, got {type(raw_id).__name__}")
    doc_id = str(raw_id).strip()
    bad = _surrogate(doc_id)
    if bad is not None:
        return Rejection(source, line, f"field 'id' holds a lone UTF-16 surrogate ({bad}), which is not valid "
                                       "Unicode: fix the \\u escape in the source", _printable(doc_id))
    id_bytes = len(doc_id) if doc_id.isascii() else len(doc_id.encode("utf-8"))
    if id_bytes > MAX_ID_BYTES:
        return Rejection(source, line, f"id is {id_bytes:,} bytes in UTF-8, over the limit of {MAX_ID_BYTES} "
                                       "(Elasticsearch allows 512 bytes per _id and chunk ids add '#<n>'): "
                                       "use a shorter id", _printable(doc_id))
    text = fields.get("text")
    if not isinstance(text, str):
        reason = "missing 'text'" if text is None else f"'text' must be a string, got {type(text).__name__}"
        return Rejection(source, line, reason, doc_id)
    if not text.strip():
        return Rejection(source, line, "empty 'text'", doc_id)
    title = fields.get("title")
    if title is None:
        title = ""
    if not isinstance(title, str):
        return Rejection(source, line, f"'title' must be a string, got {type(title).__name__}", doc_id)
    metadata = fields.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        return Rejection(source, line, f"'metadata' must be an object, got {type(metadata).__name__}", doc_id)
    extra = {k: v for k, v in fields.items() if k not in _RECORD_KEYS}
    if extra:
        clash = next((k for k in extra if k in metadata), None)
        if clash is not None:
            return Rejection(source, line, f"field {clash!r} is given both at the top level and in 'metadata': "
                                           "keep one", doc_id)
        metadata = {**extra, **metadata}
    else:
        metadata = dict(metadata)
    return Document(id=doc_id, text=text, title=title.strip(), metadata=metadata, source=source, line=line)


# --- CSV ----------------------------------------------------------------------------------


class _RowTooLarge(Exception):
    """Raised through the csv reader when a row passes the byte limit."""


class _CsvFeed:
    """Hands the csv module one physical line at a time and stops a row at the byte limit.

    An iterator class, not a generator, so that it survives raising through the reader.
    It keeps the lines of the current row (at most the limit) to locate a quote left open.
    """

    def __init__(self, fh: BinaryIO, limit: int | None):
        self.fh = fh
        self.limit = limit
        self.line_no = 0
        self.row_start = 1
        self.row_bytes = 0
        self.row_lines: list[bytes] = []
        self.eof = False

    def start_row(self) -> None:
        self.row_start = self.line_no + 1
        self.row_bytes = 0
        self.row_lines = []

    def __iter__(self) -> "_CsvFeed":
        return self

    def __next__(self) -> str:
        if self.limit is None:
            raw = self.fh.readline()
        else:
            raw = self.fh.readline(max(self.limit - self.row_bytes, 0) + 1)
        if not raw:
            self.eof = True
            raise StopIteration
        self.line_no += 1
        if self.line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        self.row_bytes += len(raw)
        self.row_lines.append(raw)
        if self.limit is not None and self.row_bytes > self.limit:
            raise _RowTooLarge
        return raw.decode("utf-8", "surrogateescape")

    def quote_state(self) -> tuple["_QuoteTracker", bool]:
        """The quoting state after the lines of the current row read so far, and whether the
        last of them ended the row."""
        tracker = _QuoteTracker()
        ended = False
        for i, raw in enumerate(self.row_lines):
            ended = tracker.feed(raw, self.row_start + i)
        return tracker, ended

    def skip_row(self) -> tuple[bool, _QuoteTracker, int]:
        """Read on to the end of an over-long row without keeping it.

        Returns:
            Whether the row ended (False: the file ended inside a quoted field), the quote
            tracker (where the open quote started), and the row's size in bytes.
        """
        tracker, ended = self.quote_state()
        size = self.row_bytes
        in_line = not self.row_lines[-1].endswith(b"\n")  # the limit fell inside a physical line
        while not ended:
            raw = self.fh.readline(_CHUNK)
            if not raw:
                self.eof = True
                return tracker.state != _QuoteTracker.QUOTED, tracker, size
            if not in_line:
                self.line_no += 1
            size += len(raw)
            ended = tracker.feed(raw, self.line_no)
            in_line = not raw.endswith(b"\n")
        return True, tracker, size


class _QuoteTracker:
    """Follows how the csv module (default dialect, strict) quotes, over raw bytes.

    Only where a row ends matters, so the tracker needs no field contents: a row ends at a
    line end outside a quoted field, and an error (a stray character after a closing
    quote, a carriage return inside an unquoted field) ends the row at that line's end, as
    the csv module discards the rest of the line. Quote, comma and newline bytes never
    occur inside UTF-8 multi-byte sequences, so bytes can be scanned directly.
    """

    FIELD_START, UNQUOTED, QUOTED, AFTER_QUOTE, LINE_DONE = range(5)

    def __init__(self) -> None:
        self.state = self.FIELD_START
        self.opened_line: int | None = None

    def feed(self, data: bytes, line_no: int) -> bool:
        """Feed a piece of one physical line (ending in ``\\n`` when it ends it). True: the row ended."""
        ends_line = data.endswith(b"\n")
        body = data[:-1] if ends_line else data
        i, n = 0, len(body)
        while i < n:
            s = self.state
            if s == self.QUOTED:
                j = body.find(b'"', i)
                if j < 0:
                    break
                self.state, i = self.AFTER_QUOTE, j + 1
            elif s == self.AFTER_QUOTE:
                c = body[i]
                self.state = self.QUOTED if c == 0x22 else self.FIELD_START if c == 0x2C else self.LINE_DONE
                i += 1
            elif s == self.FIELD_START:
                c = body[i]
                if c == 0x22:
                    self.state, self.opened_line, i = self.QUOTED, line_no, i + 1
                elif c == 0x0D:
                    self.state = self.LINE_DONE
                else:
                    self.state = self.UNQUOTED
            elif s == self.UNQUOTED:
                comma, cr = body.find(b",", i), body.find(b"\r", i)
                if cr >= 0 and (comma < 0 or cr < comma):
                    self.state = self.LINE_DONE
                elif comma >= 0:
                    self.state, i = self.FIELD_START, comma + 1
                else:
                    break
            else:  # LINE_DONE: the rest of the line is dropped
                break
        if ends_line and self.state != self.QUOTED:
            self.state = self.FIELD_START
            return True
        return False


class _Row(NamedTuple):  # a tuple: built once per row, so kept cheap
    start: int
    end: int
    fields: list[str] | None
    error: str | None = None


def _csv_rows(fh: BinaryIO, limit: int | None) -> Iterator[_Row]:
    """Rows with their physical lines, or the reason a row could not be read.

    A row over ``limit`` bytes is skipped to its end; a quote still open at the end of the
    file ends the reading (its row swallowed the rest of the file).
    """
    needed = sys.maxsize if limit is None else limit
    if csv.field_size_limit() < needed:  # process-wide: raise it, never lower it
        csv.field_size_limit(needed)
    feed = _CsvFeed(fh, limit)
    reader = csv.reader(feed, strict=True)
    while True:
        feed.start_row()
        try:
            fields = next(reader)
        except StopIteration:
            return
        except _RowTooLarge:
            start = feed.row_start
            ended, tracker, size = feed.skip_row()
            if not ended:
                opened = start if tracker.opened_line is None else tracker.opened_line
                yield _Row(start, feed.line_no, None, _unclosed(opened, feed.line_no))
                return
            yield _Row(start, feed.line_no, None,
                       f"row is {size:,} bytes (lines {start}-{feed.line_no}), over the reading limit of "
                       f"{limit:,} bytes that the document size limit sets ({_RAISE_HINT}); skipped to the next row")
            continue
        except csv.Error as e:
            start = feed.row_start
            if feed.eof:  # at the end of the data only an open quote is an error
                opened = feed.quote_state()[0].opened_line
                yield _Row(start, feed.line_no, None, _unclosed(start if opened is None else opened, feed.line_no))
                return
            span = f" (row of lines {start}-{feed.line_no}: a quote may be left open)" if feed.line_no > start else ""
            yield _Row(start, feed.line_no, None, f"malformed CSV{span}: {e}")
            continue
        yield _Row(feed.row_start, feed.line_no, fields)


def _unclosed(opened: int, last: int) -> str:
    return (f"a quoted field opened at line {opened} is never closed, so the rest of the file "
            f"(lines {opened}-{last}) was not read: close the quote, or write a quote inside a field as \"\"")


def read_csv(fh: BinaryIO, *, source: str, byte_limit: int | None) -> Iterator[Record]:
    """A CSV with a header row holding ``id`` (or ``_id``) and ``text``; ``title`` optional.

    Parsed strictly. Other named columns become metadata. Line numbers are the file's
    physical lines (a row starts where its first field does). A UTF-8 byte-order mark is
    allowed. A header naming a column twice, or lacking id or text, is one rejection and
    the file is not read further; so is a quote left open until the end of the file
    (records before it stay). Blank rows are ignored.

    Args:
        fh: The file, opened in binary mode.
        source: The file's name in records.
        byte_limit: Rows longer than this are rejected with their size and skipped
            (see :func:`record_byte_limit`); None reads rows whole.

    Returns:
        One record per non-blank row.
    """
    return cast(Iterator[Record], _read_csv(fh, source, byte_limit, build=True))  # build: never None


def _read_csv(fh: BinaryIO, source: str, byte_limit: int | None, *, build: bool) -> Iterator[Record | None]:
    """:func:`read_csv`; with ``build`` False, None stands for each record that would be checked
    and built (for counting without the cost)."""
    rows = _csv_rows(fh, byte_limit)
    head = next(rows, None)
    if head is None:
        return  # an empty file holds no records
    if head.fields is None:
        yield Rejection(source, head.start, f"cannot read the CSV header: {head.error}; the file was not read")
        return
    header = head.fields
    bad = next((h for h in header if _surrogate(h) is not None), None)
    if bad is not None:
        yield Rejection(source, head.start, f"CSV header is not valid UTF-8 (column {_printable(bad)!r}): "
                                            "save the file as UTF-8; the file was not read")
        return
    named = [h for h in header if h]
    dup = next((h for i, h in enumerate(named) if h in named[:i]), None)
    if dup is not None:
        cols = [i + 1 for i, h in enumerate(header) if h == dup]
        yield Rejection(source, head.start, f"CSV header names column {dup!r} more than once (columns "
                                            f"{', '.join(map(str, cols))}): rename them; the file was not read")
        return
    missing = []
    if not any(k in header for k in ID_KEYS):
        missing.append("id")
    if "text" not in header:
        missing.append("text")
    if missing:
        yield Rejection(source, head.start, f"CSV header lacks column(s) {', '.join(missing)}; "
                                            f"found {', '.join(h for h in header if h) or 'none'}")
        return
    for row in rows:
        if row.fields is None:
            yield Rejection(source, row.start, str(row.error))
            continue
        if not row.fields:
            continue  # a blank line
        if len(row.fields) > len(header):
            yield Rejection(source, row.start,
                            f"row has {len(row.fields)} fields, more than the header's {len(header)}")
            continue
        values = {k: v for k, v in zip(header, row.fields) if k}
        bad = next((k for k, v in values.items() if _surrogate(v) is not None), None)
        if bad is not None:
            yield Rejection(source, row.start, f"not valid UTF-8 in column {bad!r}: save the file as UTF-8",
                            _reported_id(values))
            continue
        if all(not v.strip() for v in values.values()):
            continue
        if not build:
            yield None
            continue
        fields: dict[str, Any] = {k: v for k, v in values.items() if k in (*ID_KEYS, "text", "title")}
        meta = {k: v for k, v in values.items() if k not in fields and v != ""}
        if meta:
            fields["metadata"] = meta
        yield _document(fields, source, row.start)


# --- text files ---------------------------------------------------------------------------


def read_text_file(fh: BinaryIO, *, source: str, doc_id: str, suffix: str, byte_limit: int | None) -> Record:
    """One document from a text file; binary, non-UTF-8 or over-long content is rejected.

    The title is the first Markdown heading (.md, .markdown), else the file name without
    its suffix. A UTF-8 byte-order mark is dropped.

    Args:
        fh: The file, opened in binary mode.
        source: The file's name in records.
        doc_id: The document id.
        suffix: The file's suffix (decides whether headings are looked for).
        byte_limit: A larger file is rejected with its size without being read (see
            :func:`record_byte_limit`); None reads it whole.

    Returns:
        A Document, or a Rejection.
    """
    bad = _surrogate(doc_id)
    if bad is not None:
        return Rejection(source, None, "file name is not valid UTF-8, so it cannot be the document id: rename it",
                         _display(doc_id))
    if byte_limit is None:
        data = fh.read()
    else:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(byte_limit + 1) if size <= byte_limit else b""
        if size > byte_limit or len(data) > byte_limit:
            return Rejection(source, None, f"file is {max(size, len(data)):,} bytes, over the reading limit of "
                                           f"{byte_limit:,} bytes that the document size limit sets "
                                           f"({_RAISE_HINT})", doc_id)
    if b"\x00" in data[:8192]:
        return Rejection(source, None, "binary file (NUL bytes)", doc_id)
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection(source, None, f"not valid UTF-8 (byte {e.start})", doc_id)
    title = Path(doc_id).stem
    if suffix.lower() in (".md", ".markdown"):
        for line in text.splitlines():
            if line.startswith("#"):
                title = line.lstrip("#").strip() or title
                break
    return _document({"id": doc_id, "title": title, "text": text}, source, None)
