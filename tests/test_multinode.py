"""Three real local nodes per engine (``es-rerank cluster start --nodes 3``), and what happens when one dies.

Opt-in: set ``ES_RERANK_TEST_MULTINODE=1`` (each engine's cluster takes a few minutes and
about 2 GB of memory). Each engine gets one cluster for the whole module, started by the
project's own :class:`~es_rerank.cluster.LocalCluster` in a fresh folder under the temp dir
(``ES_RERANK_TEST_MULTINODE_DIR`` to choose where), on its own ports: Elasticsearch HTTP
9230-9232 (transport 9330-9332), OpenSearch HTTP 9240-9242 (transport 9340-9342)
(``ES_RERANK_TEST_MULTINODE_ES_PORT`` / ``..._OS_PORT`` move them). The nodes are stopped
at the end, also when a test fails.

The node killed is never the one the client talks to (``ES_URL`` names one node) nor the
elected master, so what is tested is data loss and shard failures, not client failover or
a master election.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from es_rerank.client import Searcher
from es_rerank.config import Settings
from es_rerank.errors import ClusterError, EsRerankError, PartialResultsError

from conftest import BACKEND, SAMPLE, Node, drop, report_line
from serve_requests import hybrid_retriever

pytestmark = [pytest.mark.es, pytest.mark.skipif(os.environ.get("ES_RERANK_TEST_MULTINODE") != "1",
                                                 reason="3-node clusters: set ES_RERANK_TEST_MULTINODE=1")]

PORTS = {"elasticsearch": int(os.environ.get("ES_RERANK_TEST_MULTINODE_ES_PORT", "9230")),
         "opensearch": int(os.environ.get("ES_RERANK_TEST_MULTINODE_OS_PORT", "9240"))}
HEAP = "512m"


def _get(url: str) -> dict | list:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module", params=["elasticsearch", "opensearch"])
def trio(request):
    """A 3-node cluster of one engine, started by es-rerank; stopped (and its folder removed) at the end."""
    from es_rerank.cluster import LocalCluster

    base = os.environ.get("ES_RERANK_TEST_MULTINODE_DIR")
    root = Path(tempfile.mkdtemp(prefix="es-rerank-multinode-", dir=base))
    os.chmod(root, 0o755)  # the service user passes through
    cluster = LocalCluster(engine=request.param, home=root / "home", port=PORTS[request.param], heap=HEAP, nodes=3)
    began = time.monotonic()
    try:
        cluster.start(timeout=600)
        report_line(request, f"{request.param}: 3 nodes healthy in {time.monotonic() - began:.1f} s "
                             f"(unpack, plugin, start)")
        yield cluster
    finally:
        cluster.stop(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
        report_line(request, f"{request.param}: 3-node module done in {time.monotonic() - began:.1f} s")


@pytest.fixture(scope="module")
def trio_engine(trio):
    from es_rerank.engines import open_engine

    with open_engine(Settings(url=trio.url, engine=trio.engine, request_timeout=60)) as engine:
        yield engine


def _victim(cluster):
    """A node that is neither the first (the client's) nor the elected master."""
    master = _get(f"{cluster.url}/_cat/master?format=json")[0]["node"]
    return next(n for n in cluster.nodes[1:] if n.name != master)


def _kill(cluster, node) -> None:
    from es_rerank.cluster import procs

    pid = cluster.pid(node)
    assert pid is not None, f"no process for {node.name}"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while procs.alive(pid):
        assert time.monotonic() < deadline, f"{node.name} (pid {pid}) survived SIGKILL"
        time.sleep(0.1)
    # the master drops the node once its connection closes (loopback: at once)
    while _get(f"{cluster.url}/_cluster/health")["number_of_nodes"] != 2:
        assert time.monotonic() < deadline + 30, "the cluster still counts the killed node"
        time.sleep(0.2)


def _wait_status(cluster, index: str, status: str, timeout: float = 180) -> None:
    got = _get(f"{cluster.url}/_cluster/health/{index}?wait_for_status={status}&timeout={int(timeout)}s")
    assert got["status"] in (("green",) if status == "green" else ("yellow", "green")), got


def test_three_nodes_one_cluster(trio):
    status = trio.status()
    port = PORTS[trio.engine]
    assert status["running"] and status["managed"] and status["number_of_nodes"] == 3
    assert [n["url"] for n in status["nodes"]] == [f"http://127.0.0.1:{port + i}" for i in range(3)]
    assert [n["transport_port"] for n in status["nodes"]] == [port + 100 + i for i in range(3)]
    assert len({n["pid"] for n in status["nodes"]}) == 3 and all(n["pid"] for n in status["nodes"])
    assert len({n["node_dir"] for n in status["nodes"]}) == 3
    names = sorted(row["name"] for row in _get(f"{trio.url}/_cat/nodes?format=json"))
    assert names == sorted(n.name for n in trio.nodes)
    # status and stop of the first port alone find all three (the layout is recorded)
    from es_rerank.cluster import LocalCluster

    again = LocalCluster(engine=trio.engine, home=trio.home, port=port)
    assert [n.name for n in again.nodes] == [n.name for n in trio.nodes]


def _corpus(path: Path, n: int) -> Path:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"d{i}", "text": " ".join(words[(i + j) % 10] + str(j % 7)
                                                                 for j in range(40))}) + "\n")
    return path


def test_node_killed_mid_indexing(trio, trio_engine, embedding_model_path, tmp_path, request):
    """SIGKILL a node while `es-rerank index` builds (3 shards, 1 replica): either the run completes, or it
    fails saying so and a rerun converges; either way every record is there once after recovery."""
    node = Node(trio_engine)
    corpus = _corpus(tmp_path / "corpus.jsonl", 600)
    env = dict(os.environ, ES_URL=trio.url, ES_RERANK_INDEX="killed", ES_REQUEST_TIMEOUT="90",
               ES_RERANK_EMBEDDING_MODEL=embedding_model_path, ES_RERANK_EMBEDDING_BACKEND=BACKEND,
               ES_RERANK_DEVICE="cpu", HF_HUB_OFFLINE="1", ES_RERANK_ENGINE=trio.engine)
    cmd = [sys.executable, "-m", "es_rerank", "index", str(corpus), "--no-progress", "--bulk-size", "20",
           "--shards", "3", "--replicas", "1", "--json"]
    victim = _victim(trio)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        # index_total counts acknowledged writes, searchable or not (a build loads with refresh off)
        while not (node.indices("killed-*") and sum(node.index_totals("killed-*").values()) >= 100):
            assert proc.poll() is None, f"indexing ended before the kill:\n{proc.communicate()}"
            assert time.monotonic() < deadline, "indexing did not get going"
            time.sleep(0.2)
        _kill(trio, victim)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    outcome = "completed" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    report_line(request, f"{trio.engine}: index run with {victim.name} killed mid-build {outcome}: "
                         f"{(err.strip().splitlines() or [''])[-1][:300]}")
    assert "Traceback" not in err, err
    began = time.monotonic()
    trio.start(timeout=300)  # relaunches the killed node only
    report_line(request, f"{trio.engine}: killed node back and cluster healthy in {time.monotonic() - began:.1f} s")
    if proc.returncode != 0:
        assert "indexing stopped" in err or "was not switched in" in err or "rejected" in err, err
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
    report = json.loads(out)
    assert report["documents_read"] == report["documents_indexed"] + report["documents_rejected"] == 600
    assert report["documents_rejected"] == 0
    _wait_status(trio, "killed", "green")
    assert node.count("killed") == 600
    found = node.search("killed", {"size": 0, "aggs": {"d": {"cardinality": {"field": "doc_id"}}}})
    assert found["aggregations"]["d"]["value"] == 600 and found["_shards"]["failed"] == 0
    (concrete,) = node.alias_targets("killed")
    assert node.indices("killed-*") == [concrete]  # an unfinished build is not left behind
    drop(trio_engine, "killed")


def test_node_killed_during_searches_then_swap_while_down(trio, trio_engine, embedder, reranker,
                                                          embedding_model_path, cross_encoder_path, request):
    """Replicas 1: searches through the client and through serve keep answering while a node is killed;
    an index without replicas that lost shards fails with a clear error (never a partial result); and
    `index --recreate` swaps the alias with the node still down."""
    from es_rerank.indexing import index_paths
    from es_rerank.server import ServerThread, create_app

    served, bare = f"multi-{uuid.uuid4().hex[:8]}", f"bare-{uuid.uuid4().hex[:8]}"
    base = Settings(url=trio.url, engine=trio.engine, embedding_model=embedding_model_path,
                    reranker_model=cross_encoder_path, device="cpu", reranker_backend=BACKEND,
                    embedding_backend=BACKEND, request_timeout=60, shards=3)
    index_paths(trio_engine, [str(SAMPLE)], settings=base.replace(index=served, replicas=1), embedder=embedder)
    index_paths(trio_engine, [str(SAMPLE)], settings=base.replace(index=bare, replicas=0), embedder=embedder)
    _wait_status(trio, served, "green")
    _wait_status(trio, bare, "green")
    victim = _victim(trio)
    shards = _get(f"{trio.url}/_cat/shards/{bare}?format=json")
    assert any(s["node"] == victim.name for s in shards), f"no shard of {bare} on {victim.name}: {shards}"

    searcher = Searcher(base.replace(index=served), engine=trio_engine, embedder=embedder, reranker=reranker)
    app = create_app(base, embedder=embedder, rerankers={"cross-encoder": reranker})
    outcomes: list[tuple[str, float, str]] = []  # (path, time, "ok" or the error)
    stop = threading.Event()

    def via_client() -> None:
        while not stop.is_set():
            try:
                result = searcher.search("close my account", depth=20, final_k=3)
                outcomes.append(("client", time.monotonic(), "ok" if len(result.hits) == 3 else "short"))
            except EsRerankError as e:
                outcomes.append(("client", time.monotonic(), f"{type(e).__name__}: {e}"))

    def via_serve(url: str) -> None:
        body = {"retriever": hybrid_retriever("close my account", 20), "size": 3}
        while not stop.is_set():
            status, resp = _post(f"{url}/{served}/_search", body)
            if status == 200:
                whole = resp["_shards"]["failed"] == 0 and len(resp["hits"]["hits"]) == 3
                outcomes.append(("serve", time.monotonic(), "ok" if whole else f"partial: {resp['_shards']}"))
            else:
                outcomes.append(("serve", time.monotonic(), f"{status}: {json.dumps(resp)[:300]}"))

    with ServerThread(app) as running:
        threads = [threading.Thread(target=via_client), threading.Thread(target=via_serve, args=(running.url,))]
        for t in threads:
            t.start()
        try:
            time.sleep(3)
            killed_at = time.monotonic()
            _kill(trio, victim)
            time.sleep(8)
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        after = [o for o in outcomes if o[1] > killed_at]
        failures = [o for o in outcomes if o[2] != "ok"]
        report_line(request, f"{trio.engine}: {len(outcomes)} searches around the kill ({len(after)} after it), "
                             f"{len(failures)} failed: {sorted({o[2][:120] for o in failures})}")
        assert not [o for o in failures if o[2].startswith("partial") or o[2] == "short"], failures
        for path in ("client", "serve"):
            assert [o for o in after if o[0] == path and o[2] == "ok"], f"no answer through {path} after the kill"

        # shards of an index without replicas are gone with the node: a clear error, never part of the index
        with pytest.raises(PartialResultsError, match=r"shard searches of .* failed, so the results would be "
                                                      r"partial") as caught:
            Searcher(base.replace(index=bare), engine=trio_engine, embedder=embedder,
                     reranker=reranker).search("close my account", depth=20, final_k=3)
        assert 0 < caught.value.failed < caught.value.total
        status, resp = _post(f"{running.url}/{bare}/_search",
                             {"retriever": hybrid_retriever("close my account", 20), "size": 3})
        assert status == 503 and resp["error"]["type"] == "es_rerank_partial_results_exception", resp

    # the alias swap with the node still down: a new build with 3 shards and 1 replica fits on two nodes
    node = Node(trio_engine)
    (before,) = node.alias_targets(served)
    report = index_paths(trio_engine, [str(SAMPLE)], settings=base.replace(index=served, replicas=1),
                         embedder=embedder, recreate=True)
    assert report.documents_read == report.documents_indexed > 0
    (after_swap,) = node.alias_targets(served)
    assert after_swap != before and not node.exists(before)
    assert len(searcher.search("close my account", depth=20, final_k=3).hits) == 3
    searcher.close()
    drop(trio_engine, served)
    drop(trio_engine, bare)
