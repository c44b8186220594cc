"""Safe to point at a production cluster: es-rerank touches only what it was asked to touch.

Every destructive path runs against decoy indices that must survive with their documents:
names with commas and wildcards, ``_all``, aliases, indices es-rerank did not create, the
evaluation's own index, ``ES_RERANK_INDEX`` during an eval. Validation happens before the
first write; an interrupted ``--recreate`` leaves the previous index serving.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from es_rerank.cli import cli

from conftest import SAMPLE

pytestmark = [pytest.mark.es, pytest.mark.both_engines]

DECOYS = {"decoy-prod": 7, "decoy-logs": 3, "decoy-users": 5}


@pytest.fixture
def decoys(node):
    """Indices es-rerank did not create (plain mappings, real documents), plus an alias onto one."""
    for name, n in DECOYS.items():
        node.delete_plain(name)
        node.create_plain(name, [{"body": f"{name} record {i}"} for i in range(n)])
    node.put_alias("decoy-users", "decoy-alias")
    _survive(node)  # the check below can see what it checks
    yield DECOYS
    for name in DECOYS:
        node.delete_plain(name)


def _survive(node):
    for name, n in DECOYS.items():
        assert node.exists(name), f"{name} was deleted"
        assert node.count(name) == n, f"{name} lost documents"
    assert node.alias_targets("decoy-alias") == ["decoy-users"]


def _run(env, *args, input=None):
    return CliRunner().invoke(cli, list(args), env=env, input=input)


def _tiny_beir(root):
    root.mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"Doc {i}", "text": f"text about topic {i} and things"} for i in range(6)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "topic 1"}\n{"_id": "q2", "text": "topic 2"}\n')
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    return root


def test_every_destructive_path_spares_the_decoys(node, decoys, cli_env, tmp_path):
    f = tmp_path / "f.jsonl"
    f.write_text('{"id": "1", "text": "one small document"}\n')
    cases = [
        (["--index", "decoy-prod,decoy-logs", "index", str(f), "--recreate"], "invalid index name"),
        (["index", str(f), "--recreate", "--index", "decoy-*"], "invalid index name"),
        (["index", str(f), "--index", "_all", "--recreate"], "invalid index name"),
        (["index", str(f), "--index", "decoy-prod", "--recreate"], "was not created by es-rerank"),
        (["index", str(f), "--index", "decoy-prod"], "was not created by es-rerank"),
        (["index", str(f), "--index", "decoy-alias", "--recreate"], "alias 'decoy-alias' points at 'decoy-users'"),
        (["delete", "decoy-prod", "--yes"], "was not created by es-rerank"),
        (["delete", "decoy-*", "--yes"], "invalid index name"),
        (["delete", "decoy-alias", "--yes"], "was not created by es-rerank"),
        (["delete-docs", "--index", "decoy-logs", "--id", "1"], "was not created by es-rerank"),
    ]
    for args, message in cases:
        r = _run(cli_env, *args, *(["--no-progress"] if "index" in args else []))
        assert r.exit_code == 1, (args, r.output)
        assert message in r.output, (args, r.output)
        _survive(node)


def test_eval_uses_its_own_namespaced_index(node, engine, decoys, cli_env, tmp_path):
    """A data folder named like another index, ES_RERANK_INDEX pointing at production, --reindex:
    the evaluation builds and rebuilds only its own es-rerank-eval-* index."""
    from es_rerank.lifecycle import delete, list_owned

    def ours():
        return [i for i in list_owned(engine) if i.name.startswith("es-rerank-eval-x-decoy-prod-")]

    for info in ours():  # left by an earlier session
        delete(engine, info.name)
    data = _tiny_beir(tmp_path / "x,decoy-prod")
    env = dict(cli_env, ES_RERANK_INDEX="decoy-prod")
    try:
        for extra in ([], ["--reindex"]):
            r = _run(env, "eval", "--data", str(data), "--depth", "5", "--final-k", "3", "--no-progress", *extra)
            assert r.exit_code == 0, r.output
            _survive(node)
        assert len(ours()) == 1  # --reindex replaced the first build, it did not add a second
    finally:
        for info in ours():
            delete(engine, info.name)


def test_recreate_validates_everything_before_the_first_write(node, make_index, index_name, cli_env, tmp_path):
    """Bad paths, an empty folder or a missing model fail before the serving index is touched."""
    first = make_index(index_name, SAMPLE)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.xyz").write_text("what format is this")
    cases = [
        ((str(tmp_path / "notes.xyz"),), {}, "unsupported"),
        ((str(tmp_path / "empty"),), {}, "empty"),
        ((str(tmp_path / "missing.jsonl"),), {}, "missing.jsonl"),
        ((str(SAMPLE),), {"ES_RERANK_EMBEDDING_MODEL": str(tmp_path / "no-model")}, "no-model"),
    ]
    for paths, env, message in cases:
        r = _run({**cli_env, **env}, "index", *paths, "--recreate", "--no-progress")
        assert r.exit_code == 1 and message in r.output, r.output
        assert node.alias_targets(index_name) == [first.concrete]
        assert node.count(index_name) == first.chunks_indexed
    assert node.indices(f"{index_name}*") == [first.concrete]


def test_rechunking_leaves_exactly_the_new_chunks(node, make_index, index_name, embedder):
    """Indexing with another chunk size rebuilds: the index holds exactly the new chunks."""
    from es_rerank.chunking import Chunker
    from es_rerank.errors import MappingMismatchError

    first = make_index(index_name, SAMPLE, chunk_tokens=200, chunk_overlap=40)
    with pytest.raises(MappingMismatchError, match="chunk_tokens is 200 in the index and 24 in this run"):
        make_index(index_name, SAMPLE, chunk_tokens=24, chunk_overlap=4)
    second = make_index(index_name, SAMPLE, chunk_tokens=24, chunk_overlap=4, recreate=True)
    assert second.rebuilt and second.replaced == [first.concrete]
    assert not node.exists(first.concrete)
    chunker = Chunker(embedder.offsets, size=24, overlap=4)
    expected = {}
    for line in SAMPLE.read_text().splitlines():
        doc = json.loads(line)
        for n, c in enumerate(chunker.split(doc["text"])):
            expected[f"{doc['id']}#{n}"] = c.text
    got = {h["_id"]: h["_source"]["text"] for h in
           node.search(index_name, {"size": 10_000, "query": {"match_all": {}}, "_source": ["text"]})["hits"]["hits"]}
    assert got == expected and second.chunks_indexed == len(expected) > first.chunks_indexed


def test_stale_chunks_are_found_past_any_page(node, engine, make_index, index_name, tmp_path):
    """Leftover chunks of a shortened document are listed page by page, never capped."""
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"id": "doc", "text": " ".join(f"token{i}" for i in range(600))}) + "\n")
    first = make_index(index_name, p, chunk_tokens=20, chunk_overlap=0)
    assert first.chunks_indexed > 40
    ids = list(engine.iter_ids(index_name, {"range": {"chunk": {"gte": 1}}}, page=7))
    assert len(ids) == len(set(ids)) == first.chunks_indexed - 1
    p.write_text(json.dumps({"id": "doc", "text": "now short"}) + "\n")
    second = make_index(index_name, p, chunk_tokens=20, chunk_overlap=0)
    assert second.stale_chunks_deleted == first.chunks_indexed - 1
    assert node.count(index_name) == 1


def test_interrupted_recreate_leaves_the_previous_index_serving(node, make_index, index_name, cli_env, tmp_path):
    first = make_index(index_name, SAMPLE)
    corpus = tmp_path / "big.jsonl"
    with open(corpus, "w") as fh:
        for i in range(3000):
            fh.write(json.dumps({"id": f"n{i}", "text": f"replacement document number {i} " * 8}) + "\n")
    env = dict(os.environ, **cli_env, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "es_rerank", "index", str(corpus), "--recreate", "--no-progress",
                             "--bulk-size", "50"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        building = {k: v for k, v in node.index_totals(f"{index_name}-*").items() if k != first.concrete}
        if any(total >= 200 for total in building.values()):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert node.alias_targets(index_name) == [first.concrete]
    assert node.count(index_name) == first.chunks_indexed
    assert node.count(index_name, {"term": {"doc_id": "n1"}}) == 0
    # the next run removes the unfinished build and completes
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"id": f"s{i}", "text": f"short {i}"}) + "\n" for i in range(5)))
    r = _run(cli_env, "index", str(small), "--recreate", "--no-progress")
    assert r.exit_code == 0, r.output
    assert node.count(index_name) == 5
    assert len(node.indices(f"{index_name}-*")) == 1


def test_credentials_in_the_url_never_reach_results(engine, cli_env, tmp_path):
    """eval/sweep record their command line: a password in --url is masked in results.json and .md."""
    from es_rerank.lifecycle import delete, list_owned

    secret = "pw-9c1e-secret"
    scheme, rest = cli_env["ES_URL"].split("://", 1)
    url = f"{scheme}://elastic:{secret}@{rest}"
    data = _tiny_beir(tmp_path / "secret-url")
    out = tmp_path / "out"
    r = _run(cli_env, "eval", "--url", url, "--data", str(data), "--depth", "5", "--final-k", "3", "--no-progress",
             "--out", str(out), "--reranker", "none")
    try:
        assert r.exit_code == 0, r.output
        written = "".join(p.read_text() for p in out.iterdir() if p.suffix in (".json", ".md", ".html"))
        assert "--url" in written and "***@" in written
        assert secret not in written and secret not in r.output
    finally:
        for info in list_owned(engine):
            if info.name.startswith("es-rerank-eval-secret-url-"):
                delete(engine, info.name)
