"""Faults and bad input against a real node of each engine: nothing lost, nothing duplicated,
clear errors.

Node faults run on a spare local node of the engine under test (Elasticsearch on
``ES_RERANK_FAULT_PORT``, default 9251, OpenSearch on the port after it; transport ports
100 above), which these tests stop and start. Its write pool has one thread and a queue of
one, so that concurrent writers get real 429s from the server.
"""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from click.testing import CliRunner

from es_rerank.cli import cli
from es_rerank.client import Searcher
from es_rerank.config import Settings
from es_rerank.errors import ClusterError

from conftest import BACKEND, ENGINE_NAMES, SAMPLE, Node, drop, report_line

pytestmark = [pytest.mark.es, pytest.mark.both_engines]

FAULT_PORT = int(os.environ.get("ES_RERANK_FAULT_PORT", "9251"))
TINY_WRITE_POOL = {"thread_pool.write.size": 1, "thread_pool.write.queue_size": 1}


def _invoke(env, *args):
    return CliRunner().invoke(cli, list(args), env=env)


def test_bad_inputs_each_reported_and_totals_add_up(node, cli_env, tmp_path):
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
                str(tmp_path / "folder"), "--no-progress", "--json", "--skip-bad")
    assert r.exit_code == 0, r.output
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
    assert node.count(cli_env["ES_RERANK_INDEX"]) == report["chunks_indexed"] == 2


def test_per_item_mapping_conflict_is_reported_and_rest_indexed(node, engine, cli_env, tmp_path):
    p = tmp_path / "conflict.jsonl"
    p.write_text("\n".join([
        json.dumps({"id": "a", "text": "first", "metadata": {"year": 2024}}),
        json.dumps({"id": "b", "text": "second", "metadata": {"year": {"nested": "object"}}}),
        json.dumps({"id": "c", "text": "third", "metadata": {"year": 2023}}),
    ]) + "\n")
    r = _invoke(cli_env, "index", str(p), "--no-progress")
    assert r.exit_code == 1
    assert f"rejected {p}:2 id=b: {engine.display_name} rejected chunk b#0" in r.output
    assert not node.exists(cli_env["ES_RERANK_INDEX"]), "a build with a rejection was switched in"
    r = _invoke(cli_env, "index", str(p), "--no-progress", "--skip-bad")
    assert r.exit_code == 0
    assert f"rejected {p}:2 id=b: {engine.display_name} rejected chunk b#0" in r.output
    assert "3 documents read, 2 indexed" in r.output
    assert node.count(cli_env["ES_RERANK_INDEX"]) == 2
    assert node.count(cli_env["ES_RERANK_INDEX"], {"term": {"doc_id": "b"}}) == 0


def test_dims_mismatch_names_both(engine, cli_env, settings, embedder, reranker):
    from test_pipeline_es import _owned_index

    _owned_index(engine, settings.index, 16)
    r = _invoke(cli_env, "index", str(SAMPLE), "--no-progress")
    assert r.exit_code == 1 and "dims are 16 in the index but the configured embedder produces 384" in r.output


def test_slow_cluster_honours_timeout(settings, engine_name, embedder, reranker):
    """A server that accepts the connection and never answers: each engine's client times out in time."""
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
        s = Searcher(settings.replace(url=f"http://127.0.0.1:{port}", request_timeout=1.0, engine=engine_name),
                     embedder=embedder, reranker=reranker)
        assert s.engine.name == engine_name
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


def test_secrets_never_in_output_or_logs(cli_env, engine_name, caplog, tmp_path):
    """Through each engine's client (named, so the detection probe is not the only one tried)."""
    secret_pw, secret_key = "pw-7f3a9c1e-secret", "llmkey-5b2d-secret"
    env = dict(cli_env, ES_URL="http://127.0.0.1:9", ES_USERNAME="elastic", ES_PASSWORD=secret_pw,
               ES_REQUEST_TIMEOUT="1", ES_RERANK_LLM_API_KEY=secret_key, ES_RERANK_ENGINE=engine_name)
    with caplog.at_level("DEBUG"):
        outputs = [_invoke(env, "-vv", "query", "hello", "--json"),
                   _invoke(env, "-vv", "query", "hello", "--reranker", "llm", "--allow-reranker-failures"),
                   _invoke(env, "index", str(SAMPLE))]
    text = "".join(o.output for o in outputs) + caplog.text + "".join(repr(o.exception) for o in outputs)
    assert all(o.exit_code != 0 for o in outputs)
    assert secret_pw not in text and secret_key not in text


# -- a spare node of the engine under test, which these tests may stop, start and overload -----------

def _write_pool(engine) -> tuple[int, int]:
    (info,) = engine.request("GET", "/_nodes/_local/thread_pool")["nodes"].values()
    pool = info["thread_pool"]["write"]
    return int(pool["size"]), int(pool["queue_size"])


def _write_rejections(engine) -> int:
    (stats,) = engine.request("GET", "/_nodes/_local/stats/thread_pool")["nodes"].values()
    return int(stats["thread_pool"]["write"]["rejected"])


@pytest.fixture(scope="module")
def spare_node(engine_name):
    """A second local node of the engine under test, on its own port, with a tiny write pool.

    A node already running there with other settings is restarted (settings apply at launch).
    """
    from es_rerank.cluster import LocalCluster
    from es_rerank.engines import open_engine

    cluster = LocalCluster(engine=engine_name, port=FAULT_PORT + ENGINE_NAMES.index(engine_name), heap="512m",
                           extra_settings=TINY_WRITE_POOL)
    cluster.start()
    with open_engine(Settings(url=cluster.url, engine=engine_name, request_timeout=30)) as engine:
        wanted = (TINY_WRITE_POOL["thread_pool.write.size"], TINY_WRITE_POOL["thread_pool.write.queue_size"])
        if _write_pool(engine) != wanted:
            cluster.stop()
            cluster.start()
        assert _write_pool(engine) == wanted
    yield cluster
    cluster.stop()


@pytest.fixture
def spare(spare_node, engine_name):
    """A fresh engine (own client) on the spare node."""
    from es_rerank.engines import open_engine

    with open_engine(Settings(url=spare_node.url, engine=engine_name, request_timeout=30)) as engine:
        yield engine


class _NoiseWriter:
    """Bulk writes into another (4-shard) index on the same node, as fast as the node takes them,
    so that the write pool is busy and es-rerank's own bulk requests get 429s. Its own
    rejections are expected; any other failure is kept and raised by :meth:`stop`."""

    def __init__(self, url: str, index: str):
        self.url, self.index = url, index
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="noise-writer", daemon=True)
        self.error: BaseException | None = None

    def _post(self, path: str, body: bytes, content_type: str) -> None:
        req = urllib.request.Request(self.url + path, data=body, method="POST" if path.endswith("_bulk") else "PUT",
                                     headers={"content-type": content_type})
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()

    def start(self) -> "_NoiseWriter":
        body = {"settings": {"number_of_shards": 4, "number_of_replicas": 0}}
        self._post(f"/{self.index}", json.dumps(body).encode(), "application/json")
        self._thread.start()
        return self

    def _run(self) -> None:
        line = json.dumps({"index": {"_index": self.index}}) + "\n" + json.dumps({"noise": "word " * 8}) + "\n"
        body = (line * 50).encode()
        try:
            while not self._stop.is_set():
                try:
                    self._post("/_bulk", body, "application/x-ndjson")
                except urllib.error.HTTPError as e:
                    if e.code != 429:  # a whole request refused for load is fine; anything else is not
                        raise
        except BaseException as e:  # noqa: BLE001 - handed to the test by stop()
            self.error = e

    def halt(self) -> None:
        """Stop writing (soon); :meth:`stop` waits for it."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        if self.error is not None:
            raise AssertionError(f"the noise writer failed: {self.error!r}") from self.error


def _interleaved(statuses: list[int]) -> bool:
    """Whether a 429 comes before a success or failure that is final (so retried items return later)."""
    return 429 in statuses and any(s != 429 for s in statuses[statuses.index(429):])


def test_bulk_429s_are_matched_by_id_and_counted_once(spare, engine_name, embedder, tmp_path, monkeypatch,
                                                     request):
    """Real 429s from the server, interleaved with successes and failures in one response: every
    record is counted once, as what really happened to it.

    The write pool has one thread and a queue of one, and a noise writer keeps it busy. A bulk
    request is split into one task per shard, each accepted or rejected whole (in a one-shard
    index only a tail can be rejected, after a mapping update, and the client retries tails in
    order, so position and identity agree). Here the es-rerank index has two shards: items of a
    rejected shard are retried and come back after the items that followed them. A fifth of the
    documents carry an empty metadata field name, refused by the server with a 400 wherever they
    land; matched by position, those failures would be pinned on other documents.
    """
    from es_rerank.indexing import index_paths
    from es_rerank.lifecycle import READY, marker

    n_docs = 300
    poison = {f"d{i:03d}" for i in range(n_docs) if i % 5 == 2}
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as fh:
        for i in range(n_docs):
            metadata = {"group": i % 5}
            if f"d{i:03d}" in poison:
                metadata[""] = "an empty field name, refused by the server"
            fh.write(json.dumps({"id": f"d{i:03d}", "text": f"note {i} on topic {i % 7}", "metadata": metadata})
                     + "\n")

    index = f"acct-{uuid.uuid4().hex[:10]}"
    settings = Settings(index=index)
    analyzer = spare.resolve_analyzer(settings.analyzer)
    body = spare.index_body(embedder.dimensions, analyzer=analyzer)
    body["settings"]["index"]["number_of_shards"] = 2  # two tasks fit the pool: only the noise makes 429s
    body["mappings"]["_meta"] = marker(alias=index, state=READY, engine=spare.name, embedder=embedder.model_name,
                                       embedding_backend=embedder.backend, dims=embedder.dimensions,
                                       chunk_tokens=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap,
                                       analyzer=analyzer)
    spare.create_index(index, body)
    noise = _NoiseWriter(spare.settings.url, f"noise-{uuid.uuid4().hex[:10]}")

    # watch (not change) the bulk responses es-rerank's client receives; once a few came back
    # interleaved, let the node breathe so that the remaining retries succeed quickly
    responses: list[list[int]] = []
    transport = spare.client.transport
    original = transport.perform_request

    def observed(method, path, *args, **kwargs):
        result = original(method, path, *args, **kwargs)
        if path.endswith("/_bulk"):
            body = getattr(result, "body", result)
            responses.append([int(next(iter(item.values()))["status"]) for item in body["items"]])
            if sum(map(_interleaved, responses)) >= 3:
                noise.halt()
        return result

    monkeypatch.setattr(transport, "perform_request", observed)
    rejected_before = _write_rejections(spare)
    noise.start()
    try:
        report = index_paths(spare, [str(corpus)], settings=settings, embedder=embedder, bulk_chunk_size=50)
    finally:
        noise.stop()
        Node(spare).delete_plain(noise.index)
    try:
        interleaved = [r for r in responses if _interleaved(r)]
        n_429 = sum(r.count(429) for r in responses)
        assert n_429 > 0, f"no 429 reached es-rerank's bulk requests: {responses}"
        assert interleaved, f"no response put a 429 before another outcome: {responses}"
        assert _write_rejections(spare) > rejected_before

        all_ids = {f"d{i:03d}" for i in range(n_docs)}
        rejected = {r.doc_id: r.reason for r in report.rejected}
        assert len(rejected) == len(report.rejected), "a document was rejected twice"
        assert report.documents_read == n_docs == report.documents_indexed + len(report.rejected)
        node = Node(spare)
        hits = node.search(index, {"size": n_docs + 10, "query": {"match_all": {}}, "_source": ["doc_id"]})
        present = [h["_source"]["doc_id"] for h in hits["hits"]["hits"]]
        assert node.count(index) == report.chunks_indexed == len(present) == len(set(present))
        assert set(present) == all_ids - set(rejected)  # every indexed document is there, no rejected one is
        ran_out = {d for d, why in rejected.items() if "rejected execution" in why.lower()}  # 429 after retries
        refused = set(rejected) - ran_out
        assert poison <= set(rejected) and refused <= poison, (refused - poison, poison - set(rejected))
        for doc_id in refused:
            assert "failed to parse" in rejected[doc_id], rejected[doc_id]
        report_line(request, f"{engine_name}: {len(responses)} bulk responses, {len(interleaved)} interleaved, "
                             f"{n_429} items 429; {report.documents_indexed} indexed, {len(ran_out)} out of "
                             f"retries, {len(refused)} refused, in {report.seconds:.0f} s")
    finally:
        drop(spare, index)


def test_node_killed_mid_indexing_then_rerun_and_down_at_query_time(spare_node, spare, engine_name, embedder,
                                                                     reranker, embedding_model_path, tmp_path):
    """Kill the node while indexing: non-zero exit saying how far it got; rerun: exact count, no
    duplicates. A query while it is down fails with one clear error; after the restart the same
    Searcher answers again."""
    from es_rerank.indexing import index_paths

    node = Node(spare)
    for leftover in node.indices("faults*", expand="all"):  # left by an earlier run
        node.delete_plain(leftover)
    serving = f"down-{uuid.uuid4().hex[:10]}"
    settings = Settings(url=spare_node.url, index=serving, engine=engine_name, request_timeout=5)
    index_paths(spare, [str(SAMPLE)], settings=settings, embedder=embedder)
    searcher = Searcher(settings, embedder=embedder, reranker=reranker)
    assert len(searcher.search("close my account", depth=10, final_k=3).hits) == 3

    corpus = tmp_path / "corpus.jsonl"
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    with open(corpus, "w") as fh:
        for i in range(600):
            text = " ".join(words[(i + j) % 10] + str(j % 7) for j in range(40))
            fh.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    env = dict(os.environ, ES_URL=spare_node.url, ES_RERANK_INDEX="faults", ES_REQUEST_TIMEOUT="5",
               ES_RERANK_EMBEDDING_MODEL=embedding_model_path, ES_RERANK_EMBEDDING_BACKEND=BACKEND,
               ES_RERANK_DEVICE="cpu", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "es_rerank", "index", str(corpus), "--no-progress", "--bulk-size", "20"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"indexing ended (exit {proc.returncode}) before the node was stopped:\n{proc.stdout.read()}")
        try:
            # index_total counts acknowledged writes whether or not a refresh made them searchable
            # (a new index is bulk-loaded with refresh off)
            if sum(node.index_totals("faults-*").values()) >= 60:
                break
        except ClusterError:
            pass
        time.sleep(0.2)
    spare_node.stop(timeout=30)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, out
    assert "indexing stopped:" in out and "'faults' was not created. Run the same command again" in out
    assert "Traceback" not in out

    # the node is down at query time: one clear error, from the library and from the CLI
    with pytest.raises(ClusterError, match=f"cannot reach {spare.display_name} at {spare_node.url}"):
        searcher.search("close my account", depth=10, final_k=3)
    r = CliRunner().invoke(cli, ["query", "close my account", "--index", serving],
                           env=dict(env, ES_RERANK_INDEX=serving, ES_REQUEST_TIMEOUT="2"))
    assert r.exit_code == 1 and "cannot reach" in r.output and "Traceback" not in r.output, r.output

    spare_node.start()
    assert len(searcher.search("close my account", depth=10, final_k=3).hits) == 3
    searcher.close()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "600 documents read, 600 indexed as 600 chunks, 0 rejected" in done.stdout
    assert node.count("faults") == 600
    ids = node.search("faults", {"size": 0, "aggs": {"d": {"cardinality": {"field": "doc_id"}}}})
    assert ids["aggregations"]["d"]["value"] == 600
    # the first run died during its build: its unfinished index is gone, and refresh is on in the served one
    (concrete,) = node.alias_targets("faults")
    assert node.indices("faults-*") == [concrete]
    assert "refresh_interval" not in node.index_settings(concrete)
    assert node.meta(concrete)["es_rerank"]["state"] == "ready"
    drop(spare, "faults")
    drop(spare, serving)
