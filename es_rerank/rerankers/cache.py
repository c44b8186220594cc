"""A bounded score cache in front of any deterministic reranker."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Sequence

from ..errors import ConfigError
from .base import BaseReranker, Reranker, as_reranker


class CachedReranker(BaseReranker):
    """Remembers (query, candidate) scores so repeated queries and overlapping candidate
    sets are scored once. Least-recently-used entries go first once ``max_entries`` is
    reached. Keys are digests of the text, so memory stays small (~100 bytes an entry).

    Only deterministic rerankers should be cached (cross-encoders are; sampling LLMs are not).

    Args:
        inner: The reranker whose scores are cached.
        max_entries: Entries kept. Defaults to 10,000.
    """

    def __init__(self, inner: Reranker, *, max_entries: int = 10_000):
        if max_entries < 1:
            raise ConfigError(f"cache max_entries must be >= 1, got {max_entries}")
        self.inner = as_reranker(inner)
        self.name = self.inner.name
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._scores: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def load(self) -> None:
        self.inner.load()

    def close(self) -> None:
        self.inner.close()

    @staticmethod
    def _key(query: str, text: str) -> bytes:
        return hashlib.blake2b(f"{len(query)}:{query}\x00{text}".encode("utf-8", "surrogatepass"),
                               digest_size=16).digest()

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        keys = [self._key(q, t) for q, t in pairs]
        scores: list[float | None] = [None] * len(pairs)
        with self._lock:
            for i, k in enumerate(keys):
                if k in self._scores:
                    self._scores.move_to_end(k)
                    scores[i] = self._scores[k]
        missing = [i for i, s in enumerate(scores) if s is None]
        if missing:
            fresh = self.inner.score_pairs([pairs[i] for i in missing])
            with self._lock:
                for i, s in zip(missing, fresh):
                    scores[i] = float(s)
                    self._scores[keys[i]] = float(s)
                    self._scores.move_to_end(keys[i])
                while len(self._scores) > self.max_entries:
                    self._scores.popitem(last=False)
        with self._lock:
            self.hits += len(pairs) - len(missing)
            self.misses += len(missing)
        return [float(s) for s in scores]

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return self.score_pairs([(query, t) for t in texts])
