"""Split documents into overlapping chunks measured in tokens.

Chunks are cut at token boundaries of the embedder's own tokenizer (so a chunk of
200 tokens fits its window), but the chunk text is the original text between the
first and last token's character offsets: nothing is lower-cased or re-joined.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from .errors import ConfigError

Offsets = Sequence[tuple[int, int]]
OffsetTokenizer = Callable[[str], Offsets]

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def word_offsets(text: str) -> list[tuple[int, int]]:
    """A dependency-free tokenizer: words and single punctuation marks, as char spans."""
    return [m.span() for m in _WORD.finditer(text)]


def chunk_spans(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token index ranges ``[start, end)`` covering ``n_tokens`` tokens.

    Consecutive ranges share exactly ``overlap`` tokens, except that the last range
    ends at ``n_tokens`` (it may share more). No range is empty.

    Raises:
        ConfigError: ``size`` < 1 or ``overlap`` not in ``[0, size)``.

    Example:
        >>> chunk_spans(10, 4, 1)
        [(0, 4), (3, 7), (6, 10)]
    """
    if size < 1:
        raise ConfigError(f"chunk size must be >= 1, got {size}")
    if not 0 <= overlap < size:
        raise ConfigError(f"chunk overlap must be >= 0 and < size ({size}), got {overlap}")
    spans: list[tuple[int, int]] = []
    start = 0
    step = size - overlap
    while start < n_tokens:
        end = min(start + size, n_tokens)
        spans.append((start, end))
        if end == n_tokens:
            break
        start += step
    return spans


@dataclass(frozen=True)
class TextChunk:
    """A chunk's text and its character range in the document."""

    text: str
    char_start: int
    char_end: int


class Chunker:
    """Split text into chunks of at most ``size`` tokens, ``overlap`` shared.

    Args:
        tokenize: Offset tokenizer. Defaults to :func:`word_offsets`; the indexer passes
            the embedder's ``offsets`` so chunks fit its window.
        size: Tokens per chunk. Defaults to 200 (fits MiniLM's 256-token window with a
            title, and a 512-token cross-encoder with the query).
        overlap: Tokens shared by consecutive chunks. Defaults to 40.
        max_chars: Characters per chunk at most. A token can be very long (a tokenizer may read a
            run of Thai, or any text without spaces, as one token): such a chunk is cut further,
            at whitespace where there is some. Defaults to 4000.

    Example:
        >>> [c.text for c in Chunker(size=3, overlap=1).split("a b c d e")]
        ['a b c', 'c d e']
    """

    def __init__(self, tokenize: OffsetTokenizer | None = None, *, size: int = 200, overlap: int = 40,
                 max_chars: int = 4000):
        chunk_spans(0, size, overlap)  # validates size and overlap now, not at the first document
        if max_chars < 1:
            raise ConfigError(f"max_chars must be >= 1, got {max_chars}")
        self._tokenize = tokenize if tokenize is not None else word_offsets
        self.size = size
        self.overlap = overlap
        self.max_chars = max_chars

    def split(self, text: str) -> list[TextChunk]:
        """Chunks of ``text``, in order; an empty list for text without tokens."""
        offsets = self._tokenize(text)
        chunks = []
        for start, end in chunk_spans(len(offsets), self.size, self.overlap):
            lo, hi = offsets[start][0], offsets[end - 1][1]
            for a, b in char_spans(text, lo, hi, self.max_chars):
                chunks.append(TextChunk(text[a:b], a, b))
        return chunks


def char_spans(text: str, lo: int, hi: int, max_chars: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` cut into pieces of at most ``max_chars``, at the last whitespace of each where there is one.

    Example:
        >>> char_spans("aaaa bbbb cccc", 0, 14, 6)
        [(0, 5), (5, 10), (10, 14)]
        >>> char_spans("abcdefgh", 0, 8, 3)
        [(0, 3), (3, 6), (6, 8)]
    """
    spans = []
    while hi - lo > max_chars:
        cut = lo + max_chars
        space = max(text.rfind(" ", lo + 1, cut), text.rfind("\n", lo + 1, cut))  # the piece ends after it
        if space > lo + max_chars // 2:
            cut = space + 1
        spans.append((lo, cut))
        lo = cut
    spans.append((lo, hi))
    return spans
