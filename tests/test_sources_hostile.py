"""Document readers pointed at hostile input, on the real file system.

Each record is a Document or a Rejection naming file, line and reason; one record can
only reject itself; special files are never opened; huge lines are never held whole.
"""

import json
import os
import socket
import threading
import tracemalloc

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import es_rerank.sources as sources
from es_rerank.errors import InputError
from es_rerank.sources import read_paths
from es_rerank.types import Document, Rejection

GOOD = json.dumps({"id": "good", "text": "a fine record"})


def split(records):
    records = list(records)
    return [r for r in records if isinstance(r, Document)], [r for r in records if isinstance(r, Rejection)]


def write_lines(path, lines):
    path.write_bytes(b"\n".join(x.encode() if isinstance(x, str) else x for x in lines) + b"\n")
    return path


def finishes(fn, seconds=30):
    """Run ``fn`` in a thread: a hang fails the test instead of stalling the run."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as e:  # re-raised below, in the test's thread
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds}s: it hangs"
    if "error" in result:
        raise result["error"]
    return result["value"]


def es_safe(doc):
    """What Elasticsearch needs of a document: strict UTF-8, finite numbers, a short id."""
    body = json.dumps({"id": doc.id, "title": doc.title, "text": doc.text, "metadata": dict(doc.metadata)},
                      allow_nan=False, ensure_ascii=False)
    body.encode("utf-8")
    return len(doc.id.encode("utf-8")) <= sources.MAX_ID_BYTES


# --- 1. one record, one verdict -----------------------------------------------------------


@pytest.mark.parametrize("line,field", [
    ('{"id": "a\\ud800", "text": "x"}', "'id'"),
    ('{"id": "t", "text": "bad \\udc00 text"}', "'text'"),
    ('{"id": "ti", "title": "\\ud800", "text": "x"}', "'title'"),
    ('{"id": "m", "text": "x", "metadata": {"tags": ["ok", "\\udfff"]}}', "'metadata.tags[1]'"),
    ('{"id": "k", "text": "x", "metadata": {"bad\\ud800key": 1}}', "a field name in 'metadata'"),
    ('{"id": "e", "text": "x", "lang": "\\ud83d"}', "'lang'"),
])
def test_lone_surrogate_rejects_its_record_naming_the_field(tmp_path, line, field):
    p = write_lines(tmp_path / "s.jsonl", [line, GOOD])
    docs, rej = split(read_paths([p]))
    assert [d.id for d in docs] == ["good"]
    assert len(rej) == 1 and rej[0].line == 1 and rej[0].source == str(p)
    assert field in rej[0].reason and "lone UTF-16 surrogate" in rej[0].reason
    # The rejection itself must print and serialize (no raw surrogate in it).
    json.dumps([rej[0].reason, rej[0].doc_id], ensure_ascii=False).encode("utf-8")


def test_ids_differing_only_in_surrogates_are_not_merged(tmp_path):
    p = write_lines(tmp_path / "ids.jsonl", ['{"id": "a\\ud800", "text": "x"}', '{"id": "a\\ud801", "text": "y"}'])
    docs, rej = split(read_paths([p]))
    assert docs == [] and [(r.line, r.doc_id) for r in rej] == [(1, "a\\ud800"), (2, "a\\ud801")]


def test_surrogate_pairs_and_astral_characters_are_fine(tmp_path):
    p = write_lines(tmp_path / "pairs.jsonl", ['{"id": "\\ud83d\\ude00", "text": "smile \\ud83d\\ude00", "m": "😀"}'])
    docs, rej = split(read_paths([p]))
    assert rej == [] and [(d.id, d.text, dict(d.metadata)) for d in docs] == [("😀", "smile 😀", {"m": "😀"})]


def test_json_nested_3000_deep_rejects_only_that_line(tmp_path):
    deep = '{"id": "deep", "text": "x", "metadata": ' + "[" * 3000 + "]" * 3000 + "}"
    p = write_lines(tmp_path / "deep.jsonl", [deep, GOOD])
    docs, rej = split(read_paths([p]))
    assert [d.id for d in docs] == ["good"]
    assert [r.line for r in rej] == [1] and "nested too deeply" in rej[0].reason


def nest(levels):
    return '{"a": ' * (levels - 1) + "{}" + "}" * (levels - 1)


def test_metadata_depth_limit(tmp_path):
    limit = sources.MAX_METADATA_DEPTH
    assert limit < 20  # Elasticsearch's default index.mapping.depth.limit, metadata sits one level down
    p = write_lines(tmp_path / "depth.jsonl", [
        f'{{"id": "m-ok", "text": "x", "metadata": {nest(limit)}}}',
        f'{{"id": "m-deep", "text": "x", "metadata": {nest(limit + 1)}}}',
        f'{{"id": "top-ok", "text": "x", "extra": {nest(limit - 1)}}}',  # top-level fields join metadata
        f'{{"id": "top-deep", "text": "x", "extra": {nest(limit)}}}',
        f'{{"id": "list-deep", "text": "x", "metadata": {{"l": {"[" * limit + "]" * limit}}}}}',
    ])
    docs, rej = split(read_paths([p]))
    assert [d.id for d in docs] == ["m-ok", "top-ok"]
    assert [r.doc_id for r in rej] == ["m-deep", "top-deep", "list-deep"]
    assert all(f"over the limit of {limit}" in r.reason for r in rej)


def test_id_over_500_utf8_bytes(tmp_path):
    p = write_lines(tmp_path / "id.jsonl", [json.dumps({"id": "é" * 250, "text": "500 bytes"}),
                                            json.dumps({"id": "é" * 251, "text": "502 bytes"}),
                                            json.dumps({"id": 10 ** 500, "text": "501 digits"})])
    docs, rej = split(read_paths([p]))
    assert [len(d.id.encode()) for d in docs] == [500]
    assert [(r.line, r.reason.split(" (")[0]) for r in rej] == [
        (2, "id is 502 bytes in UTF-8, over the limit of 500"), (3, "id is 501 bytes in UTF-8, over the limit of 500")]


@pytest.mark.parametrize("value,field", [("NaN", "'score'"), ("Infinity", "'score'"), ("-Infinity", "'score'"),
                                         ("1e999", "'score'"), ('{"x": [1, NaN]}', "'metadata.x[1]'")])
def test_non_finite_numbers_are_rejected(tmp_path, value, field):
    line = (f'{{"id": "n", "text": "x", "score": {value}}}' if not value.startswith("{")
            else f'{{"id": "n", "text": "x", "metadata": {value}}}')
    p = write_lines(tmp_path / "nan.jsonl", [line, GOOD])
    docs, rej = split(read_paths([p]))
    assert [d.id for d in docs] == ["good"] and rej[0].doc_id == "n"
    assert field in rej[0].reason and "NaN and Infinity are not valid JSON" in rej[0].reason


def test_other_record_level_traps(tmp_path):
    p = write_lines(tmp_path / "traps.jsonl", [
        '{"id": "big", "text": "x", "n": ' + "9" * 5000 + "}",  # Python refuses to convert > 4,300 digits
        '{"id": "dup", "text": "first", "text": "second"}',
        '{"id": "clash", "text": "x", "lang": "en", "metadata": {"lang": "fr"}}',
        GOOD,
    ])
    docs, rej = split(read_paths([p]))
    assert [d.id for d in docs] == ["good"]
    assert [(r.line, r.reason.split(" (")[0].split(":")[0]) for r in rej] == [
        (1, "a number is too long to read"),
        (2, "key 'text' appears twice in one JSON object"),
        (3, "field 'lang' is given both at the top level and in 'metadata'")]


# --- 2. input handling --------------------------------------------------------------------


def test_csv_unclosed_quote_names_its_line_and_keeps_earlier_rows(tmp_path):
    p = tmp_path / "open.csv"
    p.write_text('id,text\n1,one\n2,"two never closes\n3,three\n4,four\n')
    docs, rej = split(read_paths([p]))
    assert [(d.id, d.text) for d in docs] == [("1", "one")]
    assert len(rej) == 1 and rej[0].line == 3
    assert "quoted field opened at line 3 is never closed" in rej[0].reason
    assert "rest of the file (lines 3-5) was not read" in rej[0].reason


def test_csv_unclosed_quote_beyond_the_row_limit_is_streamed(tmp_path):
    """The open quote swallows 20 MB: read on to the end in chunks, never kept whole."""
    p = tmp_path / "open-big.csv"
    with open(p, "w") as fh:
        fh.write('id,text\n1,one\n2,"never closed\n')
        for i in range(400_000):
            fh.write(f"{i:06},{'x' * 43}\n")
    tracemalloc.start()
    try:
        docs, rej = split(read_paths([p], max_chars=1_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [d.id for d in docs] == ["1"] and [r.line for r in rej] == [3]
    assert "opened at line 3 is never closed" in rej[0].reason and "(lines 3-400003)" in rej[0].reason
    # The csv module keeps a field as 4-byte characters in a buffer it doubles: about 10 times
    # the row limit of 1 MB at worst, and far below the 20 MB the quote swallowed.
    assert peak < 12 * sources.record_byte_limit(1_000, "csv"), f"peak {peak / 2 ** 20:.0f} MiB"


def test_csv_oversized_quoted_row_is_skipped_to_its_end(tmp_path):
    p = tmp_path / "big-row.csv"
    big = "line of text\n" * 200_000  # 2.6 MB inside one quoted field spanning 200,000 lines
    p.write_text(f'id,text\n1,one\n2,"{big}"\n3,three\n4,"a ""quoted"" word"\n')
    docs, rej = split(read_paths([p], max_chars=1_000))
    assert [(d.id, d.line, d.text) for d in docs] == [("1", 2, "one"), ("3", 200_004, "three"),
                                                      ("4", 200_005, 'a "quoted" word')]
    assert [r.line for r in rej] == [3] and rej[0].reason.startswith("row is 2,600,005 bytes (lines 3-200003)")


def test_csv_malformed_quote_rejects_its_row_only(tmp_path):
    p = tmp_path / "stray.csv"
    p.write_text('id,text\n1,"quoted"junk\n2,two\n')
    docs, rej = split(read_paths([p]))
    assert [d.id for d in docs] == ["2"]
    assert [(r.line, r.reason) for r in rej] == [(2, "malformed CSV: ',' expected after '\"'")]


def test_csv_duplicate_header_is_refused_naming_the_column(tmp_path):
    p = tmp_path / "dup.csv"
    p.write_text("id,text,title,text\n1,first,T,second\n")
    docs, rej = split(read_paths([p]))
    assert docs == [] and [r.line for r in rej] == [1]
    assert "names column 'text' more than once (columns 2, 4)" in rej[0].reason


def test_csv_row_with_more_fields_than_header(tmp_path):
    p = tmp_path / "wide.csv"
    p.write_text("id,text\n1,one,extra\n2,two\n")
    docs, rej = split(read_paths([p]))
    assert [d.id for d in docs] == ["2"]
    assert [(r.line, r.reason) for r in rej] == [(2, "row has 3 fields, more than the header's 2")]


def test_csv_invalid_utf8_names_the_column(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes(b"id,text,city\n1,ok,Z\xfcrich\n2,fine,Bern\n")
    docs, rej = split(read_paths([p]))
    assert [d.id for d in docs] == ["2"]
    assert [(r.line, r.doc_id, r.reason.split(":")[0]) for r in rej] == [(2, "1", "not valid UTF-8 in column 'city'")]


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    bom = b"\xef\xbb\xbf"
    c = tmp_path / "excel.csv"
    c.write_bytes(bom + b"id,text\r\n1,from a spreadsheet\r\n")
    j = tmp_path / "bom.jsonl"
    j.write_bytes(bom + GOOD.encode() + b"\n")
    t = tmp_path / "bom.md"
    t.write_bytes(bom + b"# Heading\n\nbody")
    docs, rej = split(read_paths([c, j, t]))
    assert rej == []
    assert [(d.id, d.line, d.title) for d in docs] == [("1", 2, ""), ("good", 1, ""), ("bom.md", None, "Heading")]
    assert not docs[2].text.startswith("\ufeff")


def test_50mb_single_line_is_rejected_with_its_size_without_reading_it_whole(tmp_path):
    p = tmp_path / "huge.jsonl"
    with open(p, "wb") as fh:
        fh.write(b'{"id": "huge", "text": "')
        for _ in range(50):
            fh.write(b"a" * 1_000_000)
        fh.write(b'"}\n' + GOOD.encode() + b"\n")
    tracemalloc.start()
    try:
        docs, rej = split(read_paths([p]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [d.id for d in docs] == ["good"]
    assert [r.line for r in rej] == [1] and rej[0].reason.startswith(
        f"line is 50,000,026 bytes, over the reading limit of {sources.record_byte_limit(1_000_000):,} bytes")
    assert peak < 40 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MiB: the line was held whole"


def test_huge_csv_line_and_text_file_are_bounded(tmp_path):
    c = tmp_path / "wide.csv"
    c.write_bytes(b"id,text\n1," + b"b" * 3_000_000 + b"\n2,two\n")
    t = tmp_path / "big.txt"
    t.write_bytes(b"c" * 5_000)
    small = tmp_path / "small.txt"
    small.write_bytes(b"d" * 300)
    docs, rej = split(read_paths([c, t, small], max_chars=100))
    assert [d.id for d in docs] == ["2"]
    assert [(r.source, r.line, r.reason.split(" (")[0]) for r in rej] == [
        (str(c), 2, "row is 3,000,003 bytes"),
        (str(t), None, "file is 5,000 bytes, over the reading limit of 403 bytes that the document size limit sets"),
        (str(small), None, "text and title are 305 characters, over the limit of 100")]  # title "small"


def test_non_regular_paths_are_refused_before_reading(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    sock_path = tmp_path / "s.jsonl"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for path, kind in [("/dev/zero", "character device"), (fifo, r"named pipe \(FIFO\)"), (sock_path, "socket")]:
            with pytest.raises(InputError, match=f"^{path}: a {kind}, not a regular file or folder"):
                finishes(lambda: read_paths([path]))  # raised on the call, before any record
    finally:
        sock.close()


def test_file_swapped_for_a_fifo_after_planning_is_not_opened(tmp_path):
    p = write_lines(tmp_path / "swap.jsonl", [GOOD])
    plan = sources.plan_paths([p])
    p.unlink()
    os.mkfifo(p)
    docs, rej = split(finishes(lambda: list(read_paths(plan))))
    assert docs == [] and [(r.line, r.reason.split(":")[0]) for r in rej] == [
        (None, "is now a named pipe (FIFO), not a regular file")]


def make_hostile_folder(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("plain text")
    (root / "sub" / "b.md").write_text("# B\n\nbody")
    (root / "passwd.txt").symlink_to("/etc/passwd")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.txt").write_text("outside the folder")
    (root / "elsewhere").symlink_to(outside)
    (root / "inside.txt").symlink_to(root / "a.txt")
    (root / ".env.txt").write_text("SECRET=1")
    (root / ".git").mkdir()
    (root / ".git" / "notes.md").write_text("# hidden")
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / "loop").symlink_to(root)
    (root / "dangling.txt").symlink_to(tmp_path / "nothing-here")
    os.mkfifo(root / "pipe.txt")
    return root


def test_folder_skips_and_reports_links_out_hidden_special_and_other_types(tmp_path):
    root = make_hostile_folder(tmp_path)
    plan = finishes(lambda: sources.plan_paths([root]))
    assert [(f.doc_id, f.kind) for f in plan.files] == [("a.txt", "text"), ("inside.txt", "text"),
                                                        ("sub/b.md", "text")]
    reasons = {os.path.basename(s.path): s.reason for s in plan.skipped}
    assert reasons.keys() == {".env.txt", ".git", "dangling.txt", "elsewhere", "image.png", "loop", "passwd.txt",
                              "pipe.txt"}
    assert reasons["passwd.txt"].startswith("symbolic link to /etc/passwd, outside ")
    assert reasons["elsewhere"].startswith(f"symbolic link to {tmp_path / 'outside'}, outside ")
    assert reasons[".env.txt"].startswith("hidden") and reasons[".git"].startswith("hidden")
    assert reasons["pipe.txt"] == "a named pipe (FIFO), not a regular file"
    assert reasons["image.png"].startswith("not a .txt or .md file")
    assert reasons["dangling.txt"].startswith("broken symbolic link")
    assert reasons["loop"].startswith("folder already read")
    docs, rej = split(finishes(lambda: list(read_paths([root]))))
    assert [d.id for d in docs] == ["a.txt", "inside.txt", "sub/b.md"] and rej == []
    assert not any("root:" in d.text for d in docs)


def test_folder_switches_include_hidden_and_links(tmp_path):
    root = make_hostile_folder(tmp_path)
    plan = finishes(lambda: sources.plan_paths([root], include_hidden=True, follow_symlinks=True))
    assert [f.doc_id for f in plan.files] == [".env.txt", ".git/notes.md", "a.txt", "elsewhere/o.txt", "inside.txt",
                                              "passwd.txt", "sub/b.md"]
    assert {os.path.basename(s.path) for s in plan.skipped} == {"dangling.txt", "image.png", "loop", "pipe.txt"}


def test_symlink_loops_do_not_hang(tmp_path):
    root = tmp_path / "loops"
    (root / "deep").mkdir(parents=True)
    (root / "deep" / "doc.txt").write_text("once")
    (root / "deep" / "back").symlink_to(root)
    (root / "up").symlink_to(tmp_path)  # outside: contains the root itself
    (root / "x.txt").symlink_to(root / "y.txt")
    (root / "y.txt").symlink_to(root / "x.txt")
    plan = finishes(lambda: sources.plan_paths([root], follow_symlinks=True), seconds=20)
    assert [f.doc_id for f in plan.files] == ["deep/doc.txt"]
    reasons = {os.path.relpath(s.path, root): s.reason for s in plan.skipped}
    assert reasons["deep/back"].startswith("folder already read")
    assert reasons["up/loops"].startswith("folder already read")
    assert reasons["x.txt"] == reasons["y.txt"] == "cannot read: Too many levels of symbolic links"


def test_undecodable_file_name_is_one_rejection(tmp_path):
    root = tmp_path / "names"
    root.mkdir()
    (root / os.fsdecode(b"caf\xe9.txt")).write_text("text")
    (root / "ok.txt").write_text("text")
    docs, rej = split(read_paths([root]))
    assert [d.id for d in docs] == ["ok.txt"]
    assert [(r.source, r.doc_id) for r in rej] == [(f"{root}/caf\\xe9.txt", "caf\\xe9.txt")]
    assert rej[0].reason.startswith("file name is not valid UTF-8")
    json.dumps([rej[0].source, rej[0].doc_id], ensure_ascii=False).encode("utf-8")


# --- 3. validation before anything is written ---------------------------------------------


def test_folder_without_readable_documents_is_an_input_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=f"^{empty}: folder holds no readable .txt or .md file$"):
        sources.plan_paths([empty])
    only_other = tmp_path / "other"
    only_other.mkdir()
    (only_other / ".hidden.md").write_text("x")
    with pytest.raises(InputError, match=r"folder holds no readable .txt or .md file; 1 entry skipped, e.g. .*"
                                         r"\.hidden\.md: hidden"):
        read_paths([only_other])  # raised on the call, before anything is read or written
    with pytest.raises(InputError, match="no paths given"):
        sources.plan_paths([])


def test_plan_lists_files_in_order_and_counts_records(tmp_path):
    j = write_lines(tmp_path / "a.jsonl", [GOOD, "", "   ", "{broken", json.dumps({"id": "x", "text": "y"})])
    c = tmp_path / "b.csv"
    c.write_text('id,text\n1,"multi\nline"\n\n2,two\n3,"open\n')
    folder = tmp_path / "f"
    (folder / "s").mkdir(parents=True)
    (folder / "z.txt").write_text("z")
    (folder / "s" / "y.md").write_text("y")
    plan = sources.plan_paths([j, c, folder])
    assert [(f.path.name, f.kind, f.doc_id) for f in plan.files] == [
        ("a.jsonl", "jsonl", None), ("b.csv", "csv", None), ("y.md", "text", "s/y.md"), ("z.txt", "text", "z.txt")]
    assert plan.count_records() == 3 + 3 + 2 == len(list(read_paths(plan)))


def test_count_records_streams_a_huge_line(tmp_path):
    p = tmp_path / "huge.jsonl"
    with open(p, "wb") as fh:
        fh.write(b'{"id": "h", "text": "' + b"a" * 30_000_000 + b'"}\n\n' + GOOD.encode() + b"\n")
    plan = sources.plan_paths([p])
    tracemalloc.start()
    try:
        assert plan.count_records() == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2 ** 20


# --- properties ---------------------------------------------------------------------------

LINE_BYTES = st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b'"', b":", b",", b" ", b"\n", b"\r", b"\\",
                                       b'"id"', b'"text"', b'"metadata"', b'"a"', b"1", b"1e999", b"NaN",
                                       b"\\ud800", b"\xef\xbb\xbf", b"\xff", b"\xc3\xa9", b"\x00"]), max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=LINE_BYTES)
def test_any_jsonl_bytes_give_one_record_per_non_blank_line(tmp_path, parts):
    p = tmp_path / "fuzz.jsonl"
    p.write_bytes(b"".join(parts))
    plan = sources.plan_paths([p])
    records = list(read_paths(plan))
    assert plan.count_records() == len(records)
    lines = p.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")
    assert [r.line for r in records] == [i for i, x in enumerate(lines, start=1) if x.strip()]
    assert all(es_safe(r) for r in records if isinstance(r, Document))


CHARS = st.sampled_from(["a", "é", "\ud800", "\udfff", "😀", "\x00", " ", "\n", "\\", '"', "#"])
STRINGS = st.lists(CHARS, max_size=6).map("".join)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | STRINGS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(STRINGS, children, max_size=3),
    max_leaves=30)


def strict_json(value):
    """Whether ``value`` is strict JSON in strict UTF-8 (the oracle, independent of the reader)."""
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.fixed_dictionaries(
    {"id": STRINGS | st.integers(), "text": STRINGS},
    optional={"title": STRINGS, "metadata": st.dictionaries(STRINGS, JSON_VALUES, max_size=3),
              "extra": JSON_VALUES}), min_size=1, max_size=8))
def test_generated_records_are_documents_only_when_elasticsearch_can_take_them(tmp_path, records):
    p = tmp_path / "gen.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = list(read_paths([p]))
    assert [r.line for r in out] == list(range(1, len(records) + 1))  # one verdict per record, in order
    for record, result in zip(records, out):
        if isinstance(result, Document):
            assert es_safe(result)
        # As JSON means it: adjacent escapes "\ud800\udfff" are one valid character, U+103FF.
        if not strict_json(json.loads(json.dumps(record))):
            assert isinstance(result, Rejection), (record, result)


CSV_PIECES = st.lists(st.sampled_from([b"a", b"bb", "é".encode(), b",", b'"', b'""', b"\n", b"\r\n", b"\r", b" ",
                                      b"\xff"]), max_size=40)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=CSV_PIECES, limit=st.integers(8, 40), header=st.booleans())
def test_csv_row_limit_only_rejects_rows_it_cuts(tmp_path, body, limit, header):
    """Skipping an over-long row resumes exactly where the csv module's own parse goes on."""
    p = tmp_path / "fuzz.csv"
    p.write_bytes((b"id,text\n" if header else b"") + b"".join(body))

    def read(byte_limit):
        with open(p, "rb") as fh:
            return list(sources.read_csv(fh, source=str(p), byte_limit=byte_limit))

    whole, cut = read(None), read(limit)
    assume(not (cut and cut[0].line == 1 and "header" in getattr(cut[0], "reason", "")
                and "bytes" in cut[0].reason))
    by_line = {r.line: r for r in cut}
    assert len(by_line) == len(cut)
    assert set(r.line for r in whole) <= set(by_line)
    for r in whole:
        c = by_line[r.line]
        if isinstance(c, Document):
            assert c == r
        elif isinstance(r, Document):
            assert c.reason.startswith("row is "), (r, c)
    for line in set(by_line) - {r.line for r in whole}:
        assert by_line[line].reason.startswith("row is ")  # a blank row too long to look at
    assert sources.SourcePlan((sources.SourceFile(p, "csv"),)).count_records() == len(whole)


def test_read_paths_arguments_are_checked(tmp_path):
    from es_rerank.errors import ConfigError

    p = write_lines(tmp_path / "a.jsonl", [GOOD])
    with pytest.raises(ConfigError, match="max_chars must be >= 1"):
        read_paths([p], max_chars=0)
    with pytest.raises(ConfigError, match="pass them to plan_paths"):
        read_paths(sources.plan_paths([p]), include_hidden=True)
