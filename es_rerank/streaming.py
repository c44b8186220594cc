"""One streaming run into one index: chunk, embed and bulk-send documents; account for every record.

An :class:`Indexer` has a short life, the shape of elasticsearch-py's chunker feeding
``streaming_bulk``: :meth:`Indexer.feed` takes one record and yields the bulk actions of every
window of chunks it fills, :meth:`Indexer.flush` embeds what is left, :meth:`Indexer.answer`
accounts one bulk result, and :meth:`Indexer.run` drives the three across two threads and
returns the :class:`IndexReport`. Chunk ids are ``<doc_id>#<chunk number>``.

Every record ends up indexed or rejected with file, line and reason; bulk results are matched to
documents by operation and ``_id`` (items retried after a 429 come back out of order), never by
position. What creates the index, accepts a build and swaps it in is :mod:`es_rerank.indexing`.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from .chunking import Chunker
from .embedding import Embedder
from .engines import Engine
from .errors import ClusterError, ConfigError, IndexingError
from .types import Document, Rejection, passage_text


def chunk_id(doc_id: str, chunk: int) -> str:
    """Stable id of a chunk: the document id and the chunk number."""
    return f"{doc_id}#{chunk}"


@dataclass
class IndexReport:
    """What an indexing run did. ``documents_read == documents_indexed + len(rejected)``.

    Attributes:
        index: The name indexed (an alias for indices es-rerank built).
        concrete: The concrete index written.
        rebuilt: True when a new index was built and swapped in.
        replaced: Concrete indices the swap removed.
        expected: Records the sources announced before reading (for progress), when known.
        skipped: Files not read (hidden, outside the folder, unsupported): ``(path, reason)``.
    """

    index: str = ""
    concrete: str = ""
    rebuilt: bool = False
    replaced: list[str] = field(default_factory=list)
    expected: int | None = None
    documents_read: int = 0
    documents_indexed: int = 0
    chunks_indexed: int = 0
    stale_chunks_deleted: int = 0
    retried: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def docs_per_second(self) -> float:
        return self.documents_read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "concrete_index": self.concrete,
            "rebuilt": self.rebuilt,
            "replaced": list(self.replaced),
            "documents_read": self.documents_read,
            "documents_indexed": self.documents_indexed,
            "documents_rejected": len(self.rejected),
            "chunks_indexed": self.chunks_indexed,
            "stale_chunks_deleted": self.stale_chunks_deleted,
            "files_skipped": len(self.skipped),
            "seconds": round(self.seconds, 3),
            "docs_per_second": round(self.docs_per_second, 2),
            "rejected": [
                {"source": r.source, "line": r.line, "id": r.doc_id, "reason": r.reason} for r in self.rejected
            ],
            "skipped": [{"path": p, "reason": why} for p, why in self.skipped],
        }


@dataclass(eq=False)  # identity: one per document in flight
class _Pending:
    doc: Document
    total: int
    remaining: int
    error: str | None = None


# a chunk waiting in the window: its document, its number, the chunk itself
_Slot = tuple[_Pending, int, Any]


def _json_problem(doc: Document) -> str | None:
    """Why the document cannot be sent as JSON, or None (checked per record, not per bulk request)."""
    try:
        json.dumps({"t": doc.title, "x": doc.text, "m": dict(doc.metadata)}, allow_nan=False,
                   ensure_ascii=False).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as e:
        return f"cannot be sent as JSON: {type(e).__name__}: {str(e)[:120]}"
    return None


class Indexer:
    """Chunk, embed and bulk-index documents into one existing index; report every rejection.

    Chunking and embedding (:meth:`feed`, :meth:`flush`) run in a producer thread, bulk requests
    and their answers (:meth:`answer`) in the thread that calls :meth:`run`, so neither waits on
    the other (the runtimes and the HTTP client release the GIL while they work). The two share
    the operations in flight and the report's counts, under one lock.

    Args:
        engine: The search engine.
        index: Concrete target index (it must exist).
        embedder: Embeds chunk texts.
        chunker: Splits document text into chunks.
        embed_window: Chunks handed to the embedder per call. The embedder sorts them by
            length before batching its forward passes, so a wide window wastes less on
            padding (SciFact chunks: 10.9 s in windows of 64, 8.9 s in 256, 8.4 s all at once).
            Defaults to 512.
        bulk_chunk_size: Actions per bulk request. Defaults to 200.
        replace_stale: Delete chunks of re-indexed documents beyond their new chunk count
            (paged, no cap). Defaults to True.
        report: A report to fill (its ``expected`` may be set). Defaults to a new one.
        on_progress: Called with the running report after each finished document.
        require_alias: ``index`` is an alias; writes fail rather than create an index if it is gone.

    Raises:
        ConfigError: ``embed_window`` or ``bulk_chunk_size`` below 1.
    """

    def __init__(self, engine: Engine, *, index: str, embedder: Embedder, chunker: Chunker, embed_window: int = 512,
                 bulk_chunk_size: int = 200, replace_stale: bool = True, report: IndexReport | None = None,
                 on_progress: Callable[[IndexReport], None] | None = None, require_alias: bool = False):
        if embed_window < 1 or bulk_chunk_size < 1:
            raise ConfigError("embed_window and bulk_chunk_size must be >= 1")
        self.engine, self.index, self.embedder, self.chunker = engine, index, embedder, chunker
        self.embed_window, self.bulk_chunk_size, self.replace_stale = embed_window, bulk_chunk_size, replace_stale
        self.require_alias, self.on_progress = require_alias, on_progress
        self.report = report if report is not None else IndexReport(index=index, concrete=index)
        # (op, _id) -> the document a bulk item belongs to (None: a stale-chunk delete)
        self._in_flight: dict[tuple[str, str], _Pending | None] = {}
        self._lock = threading.Lock()
        self._window: list[_Slot] = []

    def run(self, records: Iterable[Document | Rejection], *, refresh: bool = True) -> IndexReport:
        """Feed every record, send the actions in bulk, account every answer; refresh at the end.

        Returns:
            The report. Per-item bulk failures become rejections naming the document.

        Raises:
            IndexingError: The cluster failed part-way (after the client's retries); the
                message and ``.report`` say how far it got.
        """
        report, started = self.report, time.perf_counter()
        results = self.engine.streaming_bulk(_prefetch(self.actions(records), maxsize=2 * self.bulk_chunk_size),
                                             chunk_size=self.bulk_chunk_size, max_retries=5, initial_backoff=1,
                                             max_backoff=30, require_alias=self.require_alias)
        try:
            for ok, item in results:
                self.answer(ok, item)
            if refresh:
                self.engine.refresh(self.index)
        except ClusterError as e:
            report.seconds = time.perf_counter() - started
            raise IndexingError(
                f"indexing stopped: {e}, after {report.documents_read} documents were read and "
                f"{report.documents_indexed} ({report.chunks_indexed} chunks) acknowledged.", report) from e
        report.seconds = time.perf_counter() - started
        return report

    def actions(self, records: Iterable[Document | Rejection]) -> Iterator[dict[str, Any]]:
        """Every bulk action for ``records``: each record fed, then what is left flushed."""
        for record in records:
            yield from self.feed(record)
        yield from self.flush()

    def feed(self, record: Document | Rejection) -> Iterator[dict[str, Any]]:
        """Take one record: reject it with its reason, or chunk it into the window.

        A generator: iterate it. It yields the actions of every full window (see :meth:`flush`).
        """
        with self._lock:
            self.report.documents_read += 1
        if isinstance(record, Rejection):
            self._reject(record)
            return
        problem = _json_problem(record)
        if problem is not None:
            self._reject(record, problem)
            return
        try:
            chunks = self.chunker.split(record.text)
        except Exception as e:  # noqa: BLE001 - a tokenizer failing on one record's text
            self._reject(record, f"could not split into chunks: {type(e).__name__}: {e}")
            return
        if not chunks:
            self._reject(record, "text has no tokens")
            return
        pending = _Pending(record, total=len(chunks), remaining=len(chunks))
        for n, c in enumerate(chunks):
            self._window.append((pending, n, c))
            if len(self._window) >= self.embed_window:
                yield from self.flush()

    def flush(self) -> Iterator[dict[str, Any]]:
        """Embed the window's chunks and yield their index actions, then the stale-chunk deletes.

        A generator: iterate it. Chunks that could not be embedded settle their document as rejected.
        """
        batch, self._window = self._window, []
        if not batch:
            return
        vectors = self._embed(batch)
        send = [i for i in range(len(batch)) if i in vectors and batch[i][0].error is None]
        with self._lock:
            for p in dict.fromkeys(p for p, _, _ in batch):
                unsent = sum(1 for i, b in enumerate(batch) if b[0] is p and i not in send)
                if unsent:
                    self._settle(p, unsent)
            for i in send:
                self._in_flight[("index", chunk_id(batch[i][0].doc.id, batch[i][1]))] = batch[i][0]
        self._progress()
        for i in send:
            p, n, c = batch[i]
            yield {
                "_op_type": "index",
                "_index": self.index,
                "_id": chunk_id(p.doc.id, n),
                "_source": {
                    "doc_id": p.doc.id,
                    "chunk": n,
                    "char_start": c.char_start,
                    "char_end": c.char_end,
                    "title": p.doc.title,
                    "text": c.text,
                    "metadata": dict(p.doc.metadata),
                    "embedding": vectors[i],
                },
            }
        if self.replace_stale:
            for stale in _stale_chunks(self.engine, self.index, {p.doc.id: p.total for p, _, _ in batch}):
                with self._lock:
                    self._in_flight[("delete", stale)] = None
                yield {"_op_type": "delete", "_index": self.index, "_id": stale}

    def answer(self, ok: bool, item: dict) -> None:
        """Account one bulk result, matched to its document by operation and ``_id``.

        Raises:
            IndexingError: The cluster answered for an operation this run did not send.
        """
        (op, result), = item.items()
        key = (op, str(result.get("_id")))
        with self._lock:
            if key not in self._in_flight:
                raise IndexingError(f"the cluster answered for an operation es-rerank did not send: {op} "
                                    f"{key[1]!r}", self.report)
            pending = self._in_flight.pop(key)
            if pending is None:  # a stale-chunk delete
                self.report.stale_chunks_deleted += 1 if ok else 0
                return
            if ok:
                self.report.chunks_indexed += 1
            elif pending.error is None:
                reason = self.engine.item_error(result.get("error", {}))
                pending.error = f"{self.engine.display_name} rejected chunk {result.get('_id')}: {reason}"
            self._settle(pending, 1)
        self._progress()

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.report)

    def _settle(self, p: _Pending, done: int) -> None:
        """``done`` more chunks of ``p`` are accounted for (called with the lock held)."""
        p.remaining -= done
        if p.remaining == 0:
            if p.error is None:
                self.report.documents_indexed += 1
            else:
                self.report.rejected.append(Rejection(p.doc.source, p.doc.line, p.error, p.doc.id))

    def _reject(self, record: Document | Rejection, reason: str | None = None) -> None:
        with self._lock:
            self.report.rejected.append(record if isinstance(record, Rejection)
                                        else Rejection(record.source, record.line, reason or "", record.id))
        self._progress()

    def _embed(self, batch: list[_Slot]) -> dict[int, list[float]]:
        """Vectors by position in ``batch``; a failing window is retried one document at a time."""
        texts = [passage_text(p.doc.title, c.text) for p, _, c in batch]
        try:
            vectors = self.embedder.embed_documents(texts)
        except Exception as e:  # noqa: BLE001 - isolate the document(s) that broke it
            docs = list(dict.fromkeys(p for p, _, _ in batch))
            if len(docs) == 1:
                docs[0].error = docs[0].error or f"could not embed: {type(e).__name__}: {e}"
                return {}
            out: dict[int, list[float]] = {}
            for doc in docs:
                positions = [i for i, b in enumerate(batch) if b[0] is doc]
                for j, vector in self._embed([batch[i] for i in positions]).items():
                    out[positions[j]] = vector
            return out
        out = {}
        for i, ((p, _, _), vector) in enumerate(zip(batch, vectors)):
            values = [float(x) for x in vector]
            if all(math.isfinite(v) for v in values):
                out[i] = values
            else:
                p.error = p.error or "the embedder produced non-finite values for this text"
        return out


_DONE = object()


def _prefetch(items: Iterator[Any], *, maxsize: int) -> Iterator[Any]:
    """Iterate ``items`` in a background thread, at most ``maxsize`` ahead of the consumer.

    An exception in the producer is re-raised in the consumer; closing the consumer stops
    the producer at its next item.
    """
    q: queue.Queue = queue.Queue(maxsize=maxsize)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(e)
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator: run its cleanup (open files) in this thread, now
                close()

    thread = threading.Thread(target=produce, name="es-rerank-embed", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)


def _stale_chunks(engine: Engine, index: str, n_chunks: dict[str, int]) -> list[str]:
    """Ids of existing chunks numbered at or past each document's new chunk count (all of them)."""
    if not n_chunks:
        return []
    should = [
        {"bool": {"filter": [{"term": {"doc_id": doc_id}}, {"range": {"chunk": {"gte": n}}}]}}
        for doc_id, n in n_chunks.items()
    ]
    return list(engine.iter_ids(index, {"bool": {"should": should, "minimum_should_match": 1}}))
