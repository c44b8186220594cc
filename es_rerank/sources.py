"""Read documents from JSONL, CSV and folders of .txt/.md files.

Every record becomes either a :class:`Document` or a :class:`Rejection` that names the
file, the line and the reason; nothing is skipped silently. Files are streamed, never
loaded whole.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import InputError
from .types import Document, Rejection

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv",)
TEXT_SUFFIXES = (".txt", ".md", ".markdown")
ID_KEYS = ("id", "_id")

Record = Document | Rejection


DEFAULT_MAX_CHARS = 1_000_000


def read_paths(paths: Iterable[str | Path], *, max_chars: int | None = DEFAULT_MAX_CHARS) -> Iterator[Record]:
    """Read every path in turn, rejecting ids already seen earlier in the run.

    Args:
        paths: Files (.jsonl, .csv, .txt, .md) and folders.
        max_chars: Reject documents whose text is longer (about 1,200 chunks of 200 tokens
            per million characters, each to be embedded). None accepts any size.
            Defaults to 1,000,000.

    Raises:
        InputError: A path does not exist or has an unsupported extension.
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_file() and path.suffix.lower() not in JSONL_SUFFIXES + CSV_SUFFIXES + TEXT_SUFFIXES:
            raise InputError(f"{path}: unsupported file type {path.suffix!r}; "
                             "use .jsonl, .csv, .txt, .md or a folder of .txt/.md files")
    first_seen: dict[str, str] = {}
    for path in paths:
        for record in read_path(path):
            if isinstance(record, Document) and max_chars is not None and len(record.text) > max_chars:
                yield Rejection(record.source, record.line,
                                f"text is {len(record.text):,} characters, over the limit of {max_chars:,} "
                                "(raise it with --max-document-chars / ES_RERANK_MAX_DOCUMENT_CHARS)", record.id)
                continue
            if isinstance(record, Document):
                where = f"{record.source}:{record.line}" if record.line is not None else record.source
                if record.id in first_seen:
                    yield Rejection(record.source, record.line,
                                    f"duplicate id {record.id!r} (first seen at {first_seen[record.id]})",
                                    record.id)
                    continue
                first_seen[record.id] = where
            yield record


def read_path(path: Path) -> Iterator[Record]:
    """Records of one file or folder, by extension."""
    if path.is_dir():
        yield from read_folder(path)
        return
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from read_jsonl(path)
    elif suffix in CSV_SUFFIXES:
        yield from read_csv(path)
    else:
        yield from read_text_file(path, doc_id=path.name, source=str(path))


def _document(fields: dict[str, Any], source: str, line: int | None) -> Record:
    """Validate one record's fields into a Document, or explain the rejection."""
    raw_id = next((fields[k] for k in ID_KEYS if k in fields), None)
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        return Rejection(source, line, "missing or empty 'id' (or '_id')")
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        return Rejection(source, line, f"'id' must be a string or integer, got {type(raw_id).__name__}")
    doc_id = str(raw_id).strip()
    text = fields.get("text")
    if not isinstance(text, str):
        reason = "missing 'text'" if text is None else f"'text' must be a string, got {type(text).__name__}"
        return Rejection(source, line, reason, doc_id)
    if not text.strip():
        return Rejection(source, line, "empty 'text'", doc_id)
    title = fields.get("title") or ""
    if not isinstance(title, str):
        return Rejection(source, line, f"'title' must be a string, got {type(title).__name__}", doc_id)
    metadata = fields.get("metadata") or {}
    if not isinstance(metadata, dict):
        return Rejection(source, line, f"'metadata' must be an object, got {type(metadata).__name__}", doc_id)
    extra = {k: v for k, v in fields.items() if k not in (*ID_KEYS, "text", "title", "metadata")}
    metadata = {**extra, **metadata} if extra else dict(metadata)
    return Document(id=doc_id, text=text, title=title.strip(), metadata=metadata, source=source, line=line)


def read_jsonl(path: Path) -> Iterator[Record]:
    """One JSON object per line; blank lines are ignored."""
    source = str(path)
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Rejection(source, line_no, f"not valid UTF-8 (byte {e.start} of the line)")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield Rejection(source, line_no, f"invalid JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(obj, dict):
                yield Rejection(source, line_no, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield _document(obj, source, line_no)


def read_csv(path: Path) -> Iterator[Record]:
    """A CSV with a header row holding ``id`` (or ``_id``) and ``text``; ``title`` optional.

    Other columns become metadata. Line numbers are the file's physical lines.
    """
    source = str(path)
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        if header is None:
            return  # an empty file holds no records
        missing = []
        if not any(k in header for k in ID_KEYS):
            missing.append("id")
        if "text" not in header:
            missing.append("text")
        if missing:
            yield Rejection(source, 1, f"CSV header lacks column(s) {', '.join(missing)}; "
                                       f"found {', '.join(h for h in header if h) or 'none'}")
            return
        start = reader.line_num + 1
        for row in reader:
            line_no = start
            start = reader.line_num + 1
            if None in row:
                yield Rejection(source, line_no, f"row has more fields than the header ({len(header)})")
                continue
            values = {k: v for k, v in row.items() if v is not None}
            if any(_has_surrogates(v) for v in values.values()):
                yield Rejection(source, line_no, "not valid UTF-8")
                continue
            if all(not (v or "").strip() for v in values.values()):
                continue
            fields: dict[str, Any] = {k: v for k, v in values.items() if k in (*ID_KEYS, "text", "title")}
            meta = {k: v for k, v in values.items() if k not in fields and k and v != ""}
            if meta:
                fields["metadata"] = meta
            yield _document(fields, source, line_no)


def _has_surrogates(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def read_folder(folder: Path) -> Iterator[Record]:
    """Every .txt/.md file under ``folder`` (recursively, in sorted order).

    The document id is the file's path relative to the folder; the title is the first
    Markdown heading, else the file name. Files of other types are skipped and logged.
    """
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.suffix.lower() not in TEXT_SUFFIXES:
            logger.info("skipping %s: not a .txt or .md file", path)
            continue
        yield from read_text_file(path, doc_id=rel, source=str(path))


def read_text_file(path: Path, *, doc_id: str, source: str) -> Iterator[Record]:
    """One document from a text file; binary or non-UTF-8 content is rejected."""
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        yield Rejection(source, None, "binary file (NUL bytes)", doc_id)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield Rejection(source, None, f"not valid UTF-8 (byte {e.start})", doc_id)
        return
    title = path.stem
    if path.suffix.lower() in (".md", ".markdown"):
        for line in text.splitlines():
            if line.startswith("#"):
                title = line.lstrip("#").strip() or title
                break
    yield _document({"id": doc_id, "title": title, "text": text}, source, None)
