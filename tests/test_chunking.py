"""The chunker: spans by hand, and properties over arbitrary sizes."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_rerank.chunking import Chunker, chunk_spans, word_offsets
from es_rerank.errors import ConfigError


@pytest.mark.parametrize("n,size,overlap,expected", [
    (0, 4, 1, []),
    (3, 4, 1, [(0, 3)]),
    (4, 4, 1, [(0, 4)]),
    (10, 4, 1, [(0, 4), (3, 7), (6, 10)]),
    (10, 5, 0, [(0, 5), (5, 10)]),
])
def test_spans_by_hand(n, size, overlap, expected):
    assert chunk_spans(n, size, overlap) == expected


@pytest.mark.parametrize("size,overlap", [(0, 0), (4, 4), (4, -1)])
def test_rejects_bad_sizes(size, overlap):
    with pytest.raises(ConfigError):
        chunk_spans(10, size, overlap)


@given(st.integers(0, 500), st.integers(1, 50), st.data())
def test_spans_cover_every_token_with_configured_overlap(n, size, data):
    overlap = data.draw(st.integers(0, size - 1))
    spans = chunk_spans(n, size, overlap)
    covered = set()
    for start, end in spans:
        assert 0 <= start < end <= n and end - start <= size  # no empty chunk, none too long
        covered.update(range(start, end))
    assert covered == set(range(n))
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert s2 == e1 - overlap or e2 == n  # the overlap as configured, except the last
        assert s2 > s1


def test_chunker_keeps_original_text():
    text = "Hello,  World! Second   sentence here."
    chunks = Chunker(size=3, overlap=1).split(text)
    assert [c.text for c in chunks] == ["Hello,  World", "World! Second", "Second   sentence here", "here."]
    for c in chunks:
        assert text[c.char_start:c.char_end] == c.text


def test_chunker_empty_text():
    assert Chunker(size=5, overlap=1).split("   ") == []


def test_word_offsets():
    assert word_offsets("a, bc") == [(0, 1), (1, 2), (3, 5)]


def test_model_tokenizer_chunks_fit(embedder):
    """Chunks cut at the embedder's own token offsets hold at most `size` of its tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(f"{embedder.model_name}/tokenizer.json")
    tok.no_padding()  # the packaged tokenizer.json pads to 128; count real tokens
    tok.no_truncation()
    chunker = Chunker(embedder.offsets, size=20, overlap=5)
    text = " ".join(f"word{i}" for i in range(200))
    chunks = chunker.split(text)
    assert len(chunks) > 1
    for c in chunks:
        assert len(tok.encode(c.text, add_special_tokens=False).ids) <= 20


def test_text_without_spaces_is_cut_at_the_character_cap(embedder):
    """Thai has no spaces between words: the model's tokenizer can read a long run as one token,
    which would make one chunk of any length. The character cap cuts it; every character is kept."""
    thai = "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ" * 400  # about 12,800 characters, no space
    chunker = Chunker(embedder.offsets, size=200, overlap=40, max_chars=1000)
    chunks = chunker.split(thai)
    assert len(chunks) > 1 and max(len(c.text) for c in chunks) <= 1000
    assert all(thai[c.char_start:c.char_end] == c.text for c in chunks)
    covered = sorted((c.char_start, c.char_end) for c in chunks)
    assert covered[0][0] == 0 and covered[-1][1] == len(thai)
    assert all(a[1] >= b[0] for a, b in zip(covered, covered[1:]))  # no gap between pieces


@given(st.text(alphabet=st.sampled_from("ab \n"), min_size=0, max_size=300), st.integers(1, 50))
def test_character_pieces_cover_the_span_and_respect_the_cap(text, cap):
    from es_rerank.chunking import char_spans

    spans = char_spans(text, 0, len(text), cap)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(b - a <= cap for a, b in spans)
    assert all(x[1] == y[0] for x, y in zip(spans, spans[1:]))
