"""Create the index and stream chunked, embedded documents into it.

Chunk ids are ``<doc_id>#<chunk number>``: indexing the same document again replaces
its chunks (and deletes chunks left over from a longer earlier version), never
duplicates them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from elastic_transport import TransportError
from elasticsearch import ApiError, Elasticsearch, NotFoundError
from elasticsearch import helpers

from .chunking import Chunker
from .embedding import Embedder
from .errors import ConfigError, IndexingError
from .schema import check_mapping
from .types import Document, Rejection

logger = logging.getLogger(__name__)


def chunk_id(doc_id: str, chunk: int) -> str:
    """Stable id of a chunk: the document id and the chunk number."""
    return f"{doc_id}#{chunk}"


def embedding_text(title: str, text: str) -> str:
    """What the embedder (and the reranker) reads for a chunk: its title, then its text."""
    return f"{title}\n{text}" if title else text


def ensure_index(es: Elasticsearch, index: str, body: dict[str, Any], *, dims: int) -> bool:
    """Create ``index`` from ``body``, or check that the existing one fits.

    Args:
        es: Client.
        index: Index name.
        body: Create-index body from :func:`es_rerank.schema.load_mapping`.
        dims: The embedder's dimensions, checked against an existing index.

    Returns:
        True when the index was created, False when it existed and fits.

    Raises:
        MappingMismatchError: The existing index's fields or dims differ (nothing is written).
    """
    try:
        existing = es.indices.get_mapping(index=index)
    except NotFoundError:
        es.indices.create(index=index, settings=body.get("settings"), mappings=body["mappings"])
        logger.info("created index %s", index)
        return True
    (mapping,) = [v["mappings"] for v in existing.body.values()]
    check_mapping(index, mapping, dims=dims)
    return False


@dataclass
class IndexReport:
    """What an indexing run did. ``documents_read == documents_indexed + len(rejected)``."""

    documents_read: int = 0
    documents_indexed: int = 0
    chunks_indexed: int = 0
    stale_chunks_deleted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def docs_per_second(self) -> float:
        return self.documents_read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents_read": self.documents_read,
            "documents_indexed": self.documents_indexed,
            "documents_rejected": len(self.rejected),
            "chunks_indexed": self.chunks_indexed,
            "stale_chunks_deleted": self.stale_chunks_deleted,
            "seconds": round(self.seconds, 3),
            "docs_per_second": round(self.docs_per_second, 2),
            "rejected": [
                {"source": r.source, "line": r.line, "id": r.doc_id, "reason": r.reason} for r in self.rejected
            ],
        }


@dataclass
class _Pending:
    doc: Document
    total: int
    remaining: int
    error: str | None = None


def index_documents(
    es: Elasticsearch,
    records: Iterable[Document | Rejection],
    *,
    index: str,
    embedder: Embedder,
    chunker: Chunker,
    embed_window: int = 512,
    bulk_chunk_size: int = 200,
    replace_stale: bool = True,
    refresh: bool = True,
    on_progress: Callable[[IndexReport], None] | None = None,
) -> IndexReport:
    """Chunk, embed and bulk-index documents; report every rejection.

    Args:
        es: Client.
        records: Documents and rejections, e.g. from :func:`es_rerank.sources.read_paths`.
        index: Target index (create it first with :func:`ensure_index`).
        embedder: Embeds chunk texts.
        chunker: Splits document text into chunks.
        embed_window: Chunks handed to the embedder per call. The embedder sorts them by
            length before batching its forward passes, so a wide window wastes less on
            padding (embedding SciFact chunks: 10.9 s in windows of 64, 8.9 s in windows of
            256, 8.4 s all at once). Defaults to 512.
        bulk_chunk_size: Actions per bulk request. Defaults to 200.
        replace_stale: Delete chunks of re-indexed documents beyond their new chunk
            count (one extra search per batch). Defaults to True.
        refresh: Refresh the index at the end so counts and searches see everything.
        on_progress: Called with the running report after each finished document.

    Returns:
        The report. Per-item bulk failures become rejections naming the document.

    Raises:
        IndexingError: Elasticsearch failed part-way (after the client's retries); the
            message and ``.report`` say how far it got, and acknowledged documents stay.
    """
    if embed_window < 1 or bulk_chunk_size < 1:
        raise ConfigError("embed_window and bulk_chunk_size must be >= 1")
    report = IndexReport()
    started = time.perf_counter()
    # One entry per action sent, in order: streaming_bulk yields results in that order.
    in_flight: deque[_Pending | None] = deque()

    def finish(p: _Pending) -> None:
        if p.error is None:
            report.documents_indexed += 1
        else:
            report.rejected.append(Rejection(p.doc.source, p.doc.line, p.error, p.doc.id))
        if on_progress is not None:
            on_progress(report)

    def flush(batch: list[tuple[_Pending, int, Any]]) -> Iterator[dict[str, Any]]:
        texts = [embedding_text(p.doc.title, c.text) for p, _, c in batch]
        vectors = embedder.embed_documents(texts)
        for (p, n, c), vector in zip(batch, vectors):
            in_flight.append(p)
            yield {
                "_op_type": "index",
                "_index": index,
                "_id": chunk_id(p.doc.id, n),
                "_source": {
                    "doc_id": p.doc.id,
                    "chunk": n,
                    "char_start": c.char_start,
                    "char_end": c.char_end,
                    "title": p.doc.title,
                    "text": c.text,
                    "metadata": dict(p.doc.metadata),
                    "embedding": vector.tolist() if hasattr(vector, "tolist") else [float(x) for x in vector],
                },
            }
        if replace_stale:
            for stale in _stale_chunks(es, index, {p.doc.id: p.total for p, _, _ in batch}):
                in_flight.append(None)
                yield {"_op_type": "delete", "_index": index, "_id": stale}

    def actions() -> Iterator[dict[str, Any]]:
        batch: list[tuple[_Pending, int, Any]] = []
        for record in records:
            report.documents_read += 1
            if isinstance(record, Rejection):
                report.rejected.append(record)
                continue
            chunks = chunker.split(record.text)
            if not chunks:
                report.rejected.append(Rejection(record.source, record.line, "text has no tokens", record.id))
                continue
            pending = _Pending(record, total=len(chunks), remaining=len(chunks))
            for n, c in enumerate(chunks):
                batch.append((pending, n, c))
                if len(batch) >= embed_window:
                    yield from flush(batch)
                    batch = []
        if batch:
            yield from flush(batch)

    # Chunking and embedding run in a producer thread, bulk requests in this one, so neither
    # waits on the other (torch and Elasticsearch both release the GIL while they work).
    results = helpers.streaming_bulk(
        es, _prefetch(actions(), maxsize=2 * bulk_chunk_size), chunk_size=bulk_chunk_size, raise_on_error=False, raise_on_exception=True,
        max_retries=5, initial_backoff=1, max_backoff=30,
    )
    try:
        for ok, item in results:
            _record(ok, item, in_flight.popleft(), report, finish)
        if refresh:
            es.indices.refresh(index=index)
    except (TransportError, ApiError) as e:
        report.seconds = time.perf_counter() - started
        raise IndexingError(
            f"indexing stopped: Elasticsearch failed ({e}) after {report.documents_read} documents were read; "
            f"{report.documents_indexed} documents ({report.chunks_indexed} chunks) were acknowledged and stay "
            "indexed. Run the same command again once Elasticsearch is back: chunk ids are stable, so nothing "
            "is duplicated.", report) from e
    report.seconds = time.perf_counter() - started
    return report


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


def _record(ok: bool, item: dict, pending: "_Pending | None", report: IndexReport, finish) -> None:
    """Account for one bulk item result."""
    (_op, result), = item.items()
    if pending is None:  # a stale-chunk delete
        if ok:
            report.stale_chunks_deleted += 1
        return
    if ok:
        report.chunks_indexed += 1
    elif pending.error is None:
        error = result.get("error", {})
        reason = error.get("reason", error) if isinstance(error, dict) else error
        pending.error = f"Elasticsearch rejected chunk {result.get('_id')}: {reason}"
    pending.remaining -= 1
    if pending.remaining == 0:
        finish(pending)


def _stale_chunks(es: Elasticsearch, index: str, n_chunks: dict[str, int]) -> list[str]:
    """Ids of existing chunks numbered at or past each document's new chunk count."""
    if not n_chunks:
        return []
    should = [
        {"bool": {"filter": [{"term": {"doc_id": doc_id}}, {"range": {"chunk": {"gte": n}}}]}}
        for doc_id, n in n_chunks.items()
    ]
    resp = es.search(index=index, query={"bool": {"should": should, "minimum_should_match": 1}},
                     size=10_000, source=False)
    return [h["_id"] for h in resp["hits"]["hits"]]


def index_paths(
    es: Elasticsearch,
    paths: Iterable[str],
    *,
    settings,
    embedder,
    recreate: bool = False,
    analyzer: str = "standard",
    bulk_chunk_size: int = 200,
    on_progress: Callable[[IndexReport], None] | None = None,
) -> IndexReport:
    """Create (or check) the index from settings, then read, chunk, embed and index ``paths``.

    Args:
        es: Client.
        paths: Files or folders (see :func:`es_rerank.sources.read_paths`).
        settings: :class:`es_rerank.config.Settings` (index, chunking, HNSW options).
        embedder: The embedder (its dims size the vector field; its tokenizer measures chunks).
        recreate: Delete the index first. Defaults to False.
        analyzer: Analyzer of ``title`` and ``text``. Defaults to ``standard``.
        bulk_chunk_size: Actions per bulk request. Defaults to 200.
        on_progress: Passed to :func:`index_documents`.
    """
    from .chunking import Chunker, hf_offsets
    from .schema import load_mapping
    from .sources import read_paths

    if recreate:
        es.indices.delete(index=settings.index, ignore_unavailable=True)
    body = load_mapping(embedder.dimensions, analyzer=analyzer, hnsw_m=settings.hnsw_m,
                        hnsw_ef_construction=settings.hnsw_ef_construction)
    # A new index is bulk-loaded with refresh off: Elasticsearch then writes fewer, larger
    # segments (less HNSW graph building and merging on the cores the embedder needs; 40% less
    # Elasticsearch CPU measured on 800 SciFact chunks). The _meta flag lets a rerun after a
    # failure finish the job of turning refresh back on.
    body.setdefault("settings", {}).setdefault("index", {})["refresh_interval"] = "-1"
    body["mappings"]["_meta"] = {BULK_LOAD_FLAG: True}
    created = ensure_index(es, settings.index, body, dims=embedder.dimensions)
    loading = created or _bulk_loading(es, settings.index)
    tokenizer = getattr(embedder, "tokenizer", None)
    chunker = Chunker(hf_offsets(tokenizer) if tokenizer is not None else None,
                      size=settings.chunk_tokens, overlap=settings.chunk_overlap)
    try:
        return index_documents(es, read_paths(paths, max_chars=settings.max_document_chars), index=settings.index,
                               embedder=embedder, chunker=chunker,
                               bulk_chunk_size=bulk_chunk_size, replace_stale=not created, on_progress=on_progress)
    finally:
        if loading:
            _end_bulk_load(es, settings.index)


BULK_LOAD_FLAG = "es_rerank_bulk_load"


def _bulk_loading(es: Elasticsearch, index: str) -> bool:
    """Whether an earlier run created ``index`` for a bulk load and did not finish it."""
    mapping = es.indices.get_mapping(index=index).body
    return any(v["mappings"].get("_meta", {}).get(BULK_LOAD_FLAG) for v in mapping.values())


def _end_bulk_load(es: Elasticsearch, index: str) -> None:
    """Turn refresh back on (the index default) and clear the flag; refresh once."""
    try:
        es.indices.put_settings(index=index, settings={"index": {"refresh_interval": None}})
        es.indices.put_mapping(index=index, meta={BULK_LOAD_FLAG: False})
        es.indices.refresh(index=index)
    except (TransportError, ApiError) as e:  # Elasticsearch down: the next run finishes this
        logger.warning("could not turn refresh back on for %s (%s); the next index run does it", index, e)
