"""`es-rerank serve --workers 2` for real: two processes on one port, each answering with its own figures.

The server runs as the CLI runs it (a subprocess), in front of the session's node of the
engine under test; requests go over fresh connections, which the kernel hands to either worker.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import BACKEND, _free_port
from serve_requests import hybrid_retriever

pytestmark = [pytest.mark.es]


def _call(url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def test_two_workers_share_the_port_and_count_on_their_own(es_url, engine_name, sample_index, embedding_model_path,
                                                           cross_encoder_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, ES_URL=es_url, ES_RERANK_ENGINE=engine_name, ES_RERANK_INDEX=sample_index,
               ES_RERANK_EMBEDDING_MODEL=embedding_model_path, ES_RERANK_RERANKER_MODEL=cross_encoder_path,
               ES_RERANK_EMBEDDING_BACKEND=BACKEND, ES_RERANK_RERANKER_BACKEND=BACKEND, ES_RERANK_DEVICE="cpu",
               HF_HUB_OFFLINE="1", ES_API_KEY="never-sent-key-5f1e")
    proc = subprocess.Popen([sys.executable, "-m", "es_rerank", "serve", "--workers", "2", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while True:  # both workers warm up (models loaded) before they take connections
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "serve --workers 2 did not answer in time"
            try:
                status, _ = _call(f"{base}/_es_rerank/health")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)

        def health(_: int) -> int:
            status, body = _call(f"{base}/_es_rerank/health")
            assert status == 200, body
            return json.loads(body)["worker"]["pid"]

        def search(_: int) -> int:
            status, body = _call(f"{base}/{sample_index}/_search",
                                 {"retriever": hybrid_retriever("close my account", 10), "size": 3})
            assert status == 200, body
            resp = json.loads(body)
            assert resp["es_rerank"]["reranked"] and len(resp["hits"]["hits"]) == 3
            return 1

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            searches = sum(pool.map(search, range(12)))
            for _ in range(10):
                pids |= set(pool.map(health, range(20)))
                if len(pids) == 2:
                    break
        assert len(pids) == 2, f"every answer came from {pids}"
        assert all(_ppid(pid) == proc.pid for pid in pids), "the workers are the serve process's children"

        # each worker's metrics are its own and name it; together they count every search once
        per_worker: dict[int, float] = {}
        for _ in range(100):
            status, body = _call(f"{base}/_es_rerank/metrics")
            text = body.decode()
            (pid,) = re.findall(r'^es_rerank_worker_info\{pid="(\d+)"\} 1\.0$', text, re.M)
            found = re.search(r'^es_rerank_requests_total\{endpoint="search",outcome="ok"\} (\S+)$', text, re.M)
            per_worker[int(pid)] = float(found.group(1)) if found else 0.0
            if len(per_worker) == 2:
                break
        assert set(per_worker) == pids
        assert sum(per_worker.values()) == searches
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    for pid in pids:  # the supervisor took its workers down with it
        assert not os.path.exists(f"/proc/{pid}") or _ppid(pid) != proc.pid
    assert "never-sent-key-5f1e" not in out
