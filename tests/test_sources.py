"""Document readers: every record is a document or a line-numbered rejection."""

import json

import pytest

from es_rerank.errors import InputError
from es_rerank.sources import read_paths
from es_rerank.types import Document, Rejection


def split(records):
    records = list(records)
    return [r for r in records if isinstance(r, Document)], [r for r in records if isinstance(r, Rejection)]


def test_jsonl_broken_lines_reported_by_line(tmp_path):
    p = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"id": "1", "title": "T", "text": "one", "metadata": {"lang": "en"}}),
        "{not json",
        json.dumps({"_id": 2, "text": "two", "year": 2024}),
        json.dumps({"id": "3"}),
        json.dumps({"id": "4", "text": "   "}),
        "",
        json.dumps(["a", "list"]),
        json.dumps({"text": "no id"}),
        json.dumps({"id": "1", "text": "duplicate"}),
    ]
    p.write_text("\n".join(lines) + "\n")
    docs, rej = split(read_paths([p]))
    assert [(d.id, d.line) for d in docs] == [("1", 1), ("2", 3)]
    assert docs[0].metadata == {"lang": "en"} and docs[1].metadata == {"year": 2024}
    assert [(r.line, r.reason.split(":")[0]) for r in rej] == [
        (2, "invalid JSON"), (4, "missing 'text'"), (5, "empty 'text'"), (7, "expected a JSON object, got list"),
        (8, "missing or empty 'id' (or '_id')"), (9, f"duplicate id '1' (first seen at {p}")]


def test_jsonl_non_utf8_line(tmp_path):
    p = tmp_path / "bytes.jsonl"
    p.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "\xff\xfe"}\n')
    docs, rej = split(read_paths([p]))
    assert [d.id for d in docs] == ["a"] and rej[0].line == 2 and "UTF-8" in rej[0].reason


def test_csv_rows_and_metadata(tmp_path):
    p = tmp_path / "docs.csv"
    p.write_text('id,title,text,category\n1,One,"first, with comma",billing\n2,Two,,account\n3,Three,"multi\nline",x\n4,,four,\n')
    docs, rej = split(read_paths([p]))
    assert [(d.id, d.line, d.metadata) for d in docs] == [("1", 2, {"category": "billing"}),
                                                          ("3", 4, {"category": "x"}), ("4", 6, {})]
    assert [(r.line, r.reason) for r in rej] == [(3, "empty 'text'")]


def test_csv_without_expected_columns(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("name,body\nx,y\n")
    docs, rej = split(read_paths([p]))
    assert docs == [] and "lacks column(s) id, text" in rej[0].reason and rej[0].line == 1


def test_folder_of_text_and_markdown(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("plain text")
    (tmp_path / "sub" / "b.md").write_text("# Heading B\n\nbody")
    (tmp_path / "c.bin.txt").write_bytes(b"\x00\x01binary")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs, rej = split(read_paths([tmp_path]))
    assert [(d.id, d.title) for d in docs] == [("a.txt", "a"), ("sub/b.md", "Heading B")]
    assert [(r.doc_id, r.reason) for r in rej] == [("c.bin.txt", "binary file (NUL bytes)")]


def test_empty_file_has_no_records(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    assert list(read_paths([p])) == []


@pytest.mark.parametrize("name,match", [("missing.jsonl", "no such file"), ("doc.pdf", "unsupported file type")])
def test_unreadable_paths(tmp_path, name, match):
    p = tmp_path / name
    if name.endswith(".pdf"):
        p.write_bytes(b"%PDF")
    with pytest.raises(InputError, match=match):
        list(read_paths([p]))
