"""Faults and bad input against a real cluster: nothing lost, nothing duplicated, clear errors."""

import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from es_rerank.cli import cli
from es_rerank.client import Searcher
from es_rerank.errors import ClusterError

from conftest import SAMPLE

pytestmark = pytest.mark.es

FAULT_PORT = int(os.environ.get("ES_RERANK_FAULT_PORT", "9251"))


def _invoke(env, *args):
    return CliRunner().invoke(cli, list(args), env=env)


def test_bad_inputs_each_reported_and_totals_add_up(es, cli_env, tmp_path):
    """Every bad record gets a line-numbered (or path-named) report; read = indexed + rejected."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "ok.md").write_text("# Title\n\nA fine markdown document.")
    (tmp_path / "folder" / "blob.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "folder" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    jsonl = tmp_path / "mixed.jsonl"
    big = "word " * 2_000_000  # a 10 MB document: over the default limit, rejected with the reason
    jsonl.write_bytes(b"\n".join([
        json.dumps({"id": "good-1", "text": "valid text one"}).encode(),
        b'{"id": "broken", "text": ',
        json.dumps({"id": "no-text"}).encode(),
        json.dumps({"id": "empty", "text": ""}).encode(),
        json.dumps({"text": "no id"}).encode(),
        b'{"id": "bad-bytes", "text": "\xff\xfe"}',
        json.dumps({"id": "good-1", "text": "duplicate id"}).encode(),
        json.dumps({"id": "huge", "text": big}).encode(),
    ]) + b"\n")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "wrong.csv").write_text("name,body\na,b\n")
    r = _invoke(cli_env, "index", str(jsonl), str(tmp_path / "empty.jsonl"), str(tmp_path / "wrong.csv"),
                str(tmp_path / "folder"), "--no-progress", "--json")
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    by_line = {rej["line"]: rej["reason"] for rej in report["rejected"] if rej["source"] == str(jsonl)}
    expected = {2: "invalid JSON", 3: "missing 'text'", 4: "empty 'text'", 5: "missing or empty 'id'",
                6: "not valid UTF-8", 7: "duplicate id 'good-1' (first seen at",
                8: "text is 10,000,000 characters, over the limit of 1,000,000"}
    assert sorted(by_line) == sorted(expected)
    for line, prefix in expected.items():
        assert by_line[line].startswith(prefix), (line, by_line[line])
    by_source = {rej["source"] for rej in report["rejected"]}
    assert str(tmp_path / "wrong.csv") in by_source
    assert str(tmp_path / "folder" / "blob.txt") in by_source and str(tmp_path / "folder" / "latin1.txt") in by_source
    assert report["documents_read"] == report["documents_indexed"] + report["documents_rejected"]
    assert report["documents_indexed"] == 2  # good-1, ok.md
    assert es.count(index=cli_env["ES_RERANK_INDEX"])["count"] == report["chunks_indexed"] == 2


def test_per_item_mapping_conflict_is_reported_and_rest_indexed(es, cli_env, tmp_path):
    p = tmp_path / "conflict.jsonl"
    p.write_text("\n".join([
        json.dumps({"id": "a", "text": "first", "metadata": {"year": 2024}}),
        json.dumps({"id": "b", "text": "second", "metadata": {"year": {"nested": "object"}}}),
        json.dumps({"id": "c", "text": "third", "metadata": {"year": 2023}}),
    ]) + "\n")
    r = _invoke(cli_env, "index", str(p), "--no-progress")
    assert r.exit_code == 1
    assert f"rejected {p}:2 id=b: Elasticsearch rejected chunk b#0" in r.output
    assert "3 documents read, 2 indexed" in r.output
    assert es.count(index=cli_env["ES_RERANK_INDEX"])["count"] == 2


def test_dims_mismatch_names_both(es, engine, cli_env, settings, embedder, reranker):
    from test_pipeline_es import _owned_index

    _owned_index(engine, settings.index, 16)
    r = _invoke(cli_env, "index", str(SAMPLE), "--no-progress")
    assert r.exit_code == 1 and "dims are 16 in the index but the configured embedder produces 384" in r.output


def test_slow_elasticsearch_honours_timeout(settings, embedder, reranker):
    """A server that accepts the connection and never answers: the request times out in time."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    stop = threading.Event()
    conns = []

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        s = Searcher(settings.replace(url=f"http://127.0.0.1:{port}", request_timeout=1.0), embedder=embedder,
                     reranker=reranker)
        started = time.monotonic()
        with pytest.raises(ClusterError, match=r"did not answer within 1s|cannot reach"):
            s.search("anything")
        assert time.monotonic() - started < 15  # 1 s per try, 4 tries, plus backoff
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        srv.close()


def test_secrets_never_in_output_or_logs(cli_env, caplog, tmp_path):
    secret_pw, secret_key = "pw-7f3a9c1e-secret", "llmkey-5b2d-secret"
    env = dict(cli_env, ES_URL="http://127.0.0.1:9", ES_USERNAME="elastic", ES_PASSWORD=secret_pw,
               ES_REQUEST_TIMEOUT="1", ES_RERANK_LLM_API_KEY=secret_key)
    with caplog.at_level("DEBUG"):
        outputs = [_invoke(env, "-vv", "query", "hello", "--json"),
                   _invoke(env, "-vv", "query", "hello", "--reranker", "llm", "--allow-reranker-failures"),
                   _invoke(env, "index", str(SAMPLE))]
    text = "".join(o.output for o in outputs) + caplog.text + "".join(repr(o.exception) for o in outputs)
    assert all(o.exit_code != 0 for o in outputs)
    assert secret_pw not in text and secret_key not in text


@pytest.fixture
def fault_cluster():
    """A second local node on its own port, which this test may stop and start."""
    from es_rerank.cluster import LocalCluster

    cluster = LocalCluster(port=FAULT_PORT, heap="512m")
    cluster.start()
    yield cluster
    cluster.stop()


def test_stop_elasticsearch_mid_indexing_then_rerun(fault_cluster, embedding_model_path, tmp_path):
    """Kill the node while indexing: non-zero exit saying how far it got; rerun: exact count, no duplicates."""
    from elasticsearch import Elasticsearch

    corpus = tmp_path / "corpus.jsonl"
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    with open(corpus, "w") as fh:
        for i in range(600):
            text = " ".join(words[(i + j) % 10] + str(j % 7) for j in range(40))
            fh.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    env = dict(os.environ, ES_URL=fault_cluster.url, ES_RERANK_INDEX="faults", ES_REQUEST_TIMEOUT="5",
               ES_RERANK_EMBEDDING_MODEL=embedding_model_path, ES_RERANK_DEVICE="cpu", HF_HUB_OFFLINE="1")
    es = Elasticsearch(fault_cluster.url, request_timeout=10)
    for name in es.indices.get(index="faults*", expand_wildcards="all"):  # left by an earlier run
        es.indices.delete(index=name)
    cmd = [sys.executable, "-m", "es_rerank", "index", str(corpus), "--no-progress", "--bulk-size", "20"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            # index_total counts acknowledged writes whether or not a refresh made them searchable
            # (a new index is bulk-loaded with refresh off)
            stats = es.indices.stats(index="faults-*", metric="indexing")
            if stats["_all"]["primaries"]["indexing"]["index_total"] >= 60:
                break
        except Exception:
            pass
        time.sleep(0.2)
    fault_cluster.stop(timeout=30)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, out
    assert "indexing stopped:" in out and "'faults' was not created. Run the same command again" in out
    assert "Traceback" not in out

    fault_cluster.start()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "600 documents read, 600 indexed as 600 chunks, 0 rejected" in done.stdout
    es = Elasticsearch(fault_cluster.url, request_timeout=10)
    assert es.count(index="faults")["count"] == 600
    ids = es.search(index="faults", size=0, aggs={"d": {"cardinality": {"field": "doc_id"}}})
    assert ids["aggregations"]["d"]["value"] == 600
    # the first run died during its build: its unfinished index is gone, and refresh is on in the served one
    (concrete,) = es.indices.get_alias(name="faults")
    assert sorted(es.indices.get(index="faults-*")) == [concrete]
    assert "refresh_interval" not in es.indices.get_settings(index=concrete)[concrete]["settings"]["index"]
    assert es.indices.get_mapping(index=concrete)[concrete]["mappings"]["_meta"]["es_rerank"]["state"] == "ready"
    es.indices.delete(index=concrete)
