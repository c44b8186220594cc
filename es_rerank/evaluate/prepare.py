"""The evaluation index: its own namespaced name, built once per corpus and configuration.

Evaluation never writes into the index users search (``ES_RERANK_INDEX``): the index is
``es-rerank-eval-<collection>-<fingerprint>``, where the fingerprint covers the corpus
bytes, the embedder and the chunking. It is reused only when its marker carries the same
fingerprint, so a different collection in a folder of the same name gets its own index.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..engines import Engine, validate_index_name
from ..indexing import IndexReport, index_paths
from .data import BeirData

logger = logging.getLogger(__name__)

PREFIX = "es-rerank-eval-"


def corpus_fingerprint(corpus: Path, settings: Any, embedder: Any) -> str:
    """SHA-256 over the corpus bytes and everything that shapes the index built from it."""
    h = hashlib.sha256()
    with open(corpus, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    for part in (getattr(embedder, "model_name", "?"), getattr(embedder, "backend", "?"), settings.chunk_tokens,
                 settings.chunk_overlap, settings.analyzer, settings.hnsw_m, settings.hnsw_ef_construction):
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()


def eval_index_name(root: Path, fingerprint: str) -> str:
    """``es-rerank-eval-<folder name, sanitised>-<first 10 hex of the fingerprint>``."""
    folder = re.sub(r"[^a-z0-9_-]+", "-", Path(root).resolve().name.lower()).strip("-_") or "data"
    return validate_index_name(f"{PREFIX}{folder[:80]}-{fingerprint[:10]}")


@dataclass(frozen=True)
class PreparedIndex:
    """The evaluation index and how it came to be.

    Attributes:
        name: The alias searched.
        fingerprint: Corpus + configuration fingerprint.
        built: True when this run built it.
        report: The indexing report when built, else None.
        seconds: Wall time spent (checking, or building).
    """

    name: str
    fingerprint: str
    built: bool
    report: IndexReport | None
    seconds: float


def prepare_index(engine: Engine, data: BeirData, settings: Any, embedder: Any, *, reindex: bool = False,
                  on_progress: Callable[[IndexReport], None] | None = None) -> PreparedIndex:
    """Reuse the collection's evaluation index when its fingerprint matches; else build it.

    Args:
        engine: The search engine.
        data: The collection (its ``corpus.jsonl`` is indexed).
        settings: Chunking, analyzer and HNSW settings (``settings.index`` is ignored).
        embedder: The embedder the index is built with.
        reindex: Build anew even when a matching index exists. Defaults to False.
        on_progress: Passed to :func:`es_rerank.indexing.index_paths`.
    """
    started = time.perf_counter()
    # "auto" means english on one cluster and standard on another: fingerprint what is used
    settings = settings.replace(analyzer=engine.resolve_analyzer(settings.analyzer))
    fingerprint = corpus_fingerprint(data.corpus_path, settings, embedder)
    name = eval_index_name(data.root, fingerprint)
    state = engine.state(name)
    if state.kind != "missing" and not reindex:
        marks = [state.marker(i) or {} for i in state.indices]
        if marks and all(m.get("fingerprint") == fingerprint and m.get("state", "ready") == "ready" for m in marks):
            logger.info("reusing %s (fingerprint matches)", name)
            return PreparedIndex(name, fingerprint, False, None, time.perf_counter() - started)
    report = index_paths(engine, [str(data.corpus_path)], settings=settings.replace(index=name), embedder=embedder,
                         recreate=state.kind != "missing", fingerprint=fingerprint, forcemerge=True,
                         on_progress=on_progress)
    return PreparedIndex(name, fingerprint, True, report, time.perf_counter() - started)
