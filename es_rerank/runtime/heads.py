"""Model heads over a session: tokenization, batching, and what turns outputs into scores or vectors.

A head composes a session (:mod:`es_rerank.runtime.sessions`) with a ``tokenizers``
tokenizer that is configured once, at load: nothing mutates it afterwards, so one head is
safe to share between threads (changing truncation per call raised "Already borrowed"
under concurrent use).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ModelError
from .sessions import batches

logger = logging.getLogger(__name__)

MAX_POSITIONS = 512


def configured_max_length(model_dir: str | Path) -> int:
    """The model's own token limit, as sentence-transformers would use it (at most 512)."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        path = Path(model_dir) / name
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, int) and 0 < value:
                return min(value, MAX_POSITIONS)
    return MAX_POSITIONS


def load_tokenizer(model_dir: str | Path, *, max_length: int | None, strategy: str = "longest_first"):
    """A fast tokenizer from ``tokenizer.json``, truncating to ``max_length`` (None: no truncation).

    Raises:
        ModelError: The folder has no ``tokenizer.json``.
    """
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{path} not found: a model folder needs the fast tokenizer file tokenizer.json")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length, strategy=strategy)
    return tok


def _feed(encodings: Sequence[Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    """One batch as model inputs, padded to its longest member."""
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, e in enumerate(encodings):
        n = len(e.ids)
        ids[row, :n] = e.ids
        mask[row, :n] = 1
        types[row, :n] = e.type_ids
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {k: feed[k] for k in names}


class CrossEncoderHead:
    """Scores (query, text) pairs: raw logits of the first output, pairs batched by length.

    Pairs longer than ``max_length`` lose tokens from the text, never the query (unless the
    query alone is too long; then both are cut, as sentence-transformers does).

    Args:
        session: An :class:`~es_rerank.runtime.sessions.OnnxSession` or ``OpenVinoSession``.
        model_dir: Folder with ``tokenizer.json`` (and the model's config files).
        batch_size: Pairs per forward pass. Defaults to 32.
        max_length: Token limit of a pair. Defaults to the model's configured limit.
    """

    def __init__(self, session: Any, model_dir: str | Path, *, batch_size: int = 32, max_length: int | None = None):
        self.session = session
        self.batch_size = batch_size
        self.max_length = configured_max_length(model_dir) if max_length is None else max_length
        self._text_side = load_tokenizer(model_dir, max_length=self.max_length, strategy="only_second")
        self._both_sides = load_tokenizer(model_dir, max_length=self.max_length, strategy="longest_first")

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list:
        try:
            return self._text_side.encode_batch(list(pairs))
        except Exception:  # noqa: BLE001 - a query longer than max_length: cut both sides
            return self._both_sides.encode_batch(list(pairs))

    def feeds(self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None):
        """(positions, feed) per batch: what calibration and scoring both run."""
        encodings = self.encode(pairs)
        for idx in batches([len(e.ids) for e in encodings], batch_size or self.batch_size,
                           self.session.parallel_batches):
            yield idx, _feed([encodings[i] for i in idx], self.session.input_names)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One float64 logit per pair, in input order."""
        scores = np.empty(len(pairs), dtype=np.float64)
        if not pairs:
            return scores
        work = list(self.feeds(pairs))
        for (idx, _), logits in zip(work, self.session.run_many([f for _, f in work])):
            scores[idx] = np.asarray(logits).reshape(len(idx), -1)[:, 0]
        return scores


class EmbedderHead:
    """Embeds texts: mean pooling over the attention mask, L2-normalised, texts batched by length.

    Args:
        session: A session whose first output is the last hidden state.
        model_dir: Folder with ``tokenizer.json``.
        batch_size: Texts per forward pass. Defaults to 32.
        max_length: Token limit. Defaults to the model's configured limit.
    """

    def __init__(self, session: Any, model_dir: str | Path, *, batch_size: int = 32, max_length: int | None = None):
        self.session = session
        self.batch_size = batch_size
        self.max_length = configured_max_length(model_dir) if max_length is None else max_length
        self._tokenizer = load_tokenizer(model_dir, max_length=self.max_length)
        self._offsets_tokenizer = load_tokenizer(model_dir, max_length=None)

    def feeds(self, texts: Sequence[str], batch_size: int | None = None):
        encodings = self._tokenizer.encode_batch(list(texts))
        for idx in batches([len(e.ids) for e in encodings], batch_size or self.batch_size,
                           self.session.parallel_batches):
            yield idx, _feed([encodings[i] for i in idx], self.session.input_names)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A float32 array of shape (len(texts), dims), rows in input order."""
        out = None
        work = list(self.feeds(texts)) if texts else []
        for (idx, feed), hidden in zip(work, self.session.run_many([f for _, f in work])):
            m = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[idx] = pooled
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the text's tokens (no special tokens, no truncation), for chunking."""
        enc = self._offsets_tokenizer.encode(text, add_special_tokens=False)
        return [tuple(span) for span in enc.offsets if span[1] > span[0]]
