"""Benchmark of ``es-rerank serve``: overhead, micro-batching under load, and load shedding.

It measures and prints; it asserts nothing about speed. The server runs as its own process
(``python -m es_rerank serve``), the clients are threads here, and traffic goes to ES_URL
(default http://127.0.0.1:9200) through the server only. A temporary index is built from
examples/help-centre.jsonl and deleted at the end.

(a) overhead at 1 client: ``Searcher.search`` in this process vs the same search through the
    server, p50 of each and the difference. Both use the cross-encoder's score cache, warmed
    with the same queries, so the model's time (seconds on a CPU, and noisy) is out of the
    difference; batching on and off.
(b) 8 concurrent clients at depth 20, batching on vs off: throughput, errors, p50/p95/p99,
    the server's memory before and after. Every query is new (a numbered variant), so every
    pair is scored by the model.
(c) overload: 32 clients against a queue of 8 (batching on, a shorter timeout), each retrying
    50 ms after a 429: how fast 429s come back, the longest any request took against the
    timeout, and the server's memory over the run.

    python benchmarks/serve.py --reranker-model ../shared/models/minilm-l6-scifact-ce --backend torch

On a shared machine set OMP_NUM_THREADS=1 (it reaches the server too): torch's OpenMP
threads spin when the cores are oversubscribed, and one query embedding then took 100-650 ms
instead of ~30 ms here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from es_rerank import Searcher, Settings
from es_rerank.embedding import build_embedder
from es_rerank.engines import open_engine
from es_rerank.engines.base import num_candidates_for
from es_rerank.indexing import index_paths
from es_rerank.lifecycle import delete
from es_rerank.rerankers import build_reranker

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "help-centre.jsonl"
QUERIES = [
    "what happens to my data if I close my account", "refund for a double charge", "reset my password",
    "turn on two-factor authentication", "who can see my files", "recover deleted files", "cancel subscription",
    "invite someone to my team", "storage is full", "files not syncing", "download my invoices", "GDPR rights",
]


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else float("nan")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def body(query: str, depth: int, size: int) -> dict:
    """The drop-in request: a hybrid rrf child (BM25 + kNN from text) under text_similarity_reranker."""
    return {"size": size, "_source": ["doc_id", "title"], "retriever": {"text_similarity_reranker": {
        "retriever": {"rrf": {"retrievers": [
            {"standard": {"query": {"bool": {"must": [
                {"multi_match": {"query": query, "fields": ["text", "title"]}}]}}}},
            {"knn": {"field": "embedding", "k": depth, "num_candidates": num_candidates_for(depth),
                     "query_vector_builder": {"text_embedding": {"model_text": query}}}},
        ], "rank_constant": 60, "rank_window_size": depth}},
        "field": "text", "inference_text": query, "rank_window_size": depth}}}


class ServerProcess:
    """``python -m es_rerank serve`` on a free port with extra environment; stopped on exit."""

    def __init__(self, env: dict[str, str], port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        full = {**os.environ, **env, "ES_RERANK_SERVE_PORT": str(port), "PYTHONPATH": str(ROOT)}
        self.fh = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "es_rerank", "serve"], env=full, stdout=self.fh,
                                     stderr=subprocess.STDOUT)

    def __enter__(self) -> "ServerProcess":
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/_es_rerank/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up after 300 s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.fh.close()

    @property
    def rss(self) -> float:
        return rss_mb(self.proc.pid)


def overhead(server: ServerProcess, searcher: Searcher, index: str, *, depth: int, size: int, rounds: int) -> dict:
    """(a): p50 of Searcher.search in process and of the same search through the server (cache warm)."""
    client = httpx.Client(timeout=120)
    for q in QUERIES:  # warm both: models, fusion detection, score cache
        searcher.search(q, depth=depth, final_k=size)
        client.post(f"{server.url}/{index}/_search", json=body(q, depth, size)).raise_for_status()
    direct, served = [], []
    for i in range(rounds):
        q = QUERIES[i % len(QUERIES)]
        t0 = time.perf_counter()
        searcher.search(q, depth=depth, final_k=size)
        direct.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        r = client.post(f"{server.url}/{index}/_search", json=body(q, depth, size))
        served.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    client.close()
    return {"requests": rounds, "searcher_p50_ms": round(statistics.median(direct), 1),
            "server_p50_ms": round(statistics.median(served), 1),
            "overhead_p50_ms": round(statistics.median(served) - statistics.median(direct), 1),
            "overhead_of_medians_per_pair_ms": round(statistics.median([s - d for s, d in zip(served, direct)]), 1)}


def load(server: ServerProcess, index: str, *, clients: int, seconds: float, depth: int, size: int,
         retry_429_s: float | None = None) -> dict:
    """Closed loop: ``clients`` threads send numbered (never cached) queries for ``seconds``."""
    lat: dict[int, list[float]] = {}
    errors: list[str] = []
    counter = iter(range(10**9))
    lock = threading.Lock()
    rss_samples = [server.rss]
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop:
                with lock:
                    n = next(counter)
                q = f"{QUERIES[n % len(QUERIES)]} {n}"
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{server.url}/{index}/_search", json=body(q, depth, size))
                    status = r.status_code
                except httpx.HTTPError as e:
                    status = -1
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    lat.setdefault(status, []).append(ms)
                if status not in (200, 429) and status != -1:
                    with lock:
                        errors.append(f"{status}: {r.text[:200]}")
                if status == 429 and retry_429_s is not None:
                    time.sleep(retry_429_s)

    def monitor() -> None:
        while time.monotonic() < stop:
            rss_samples.append(server.rss)
            time.sleep(0.5)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    watcher = threading.Thread(target=monitor)
    started = time.perf_counter()
    for t in threads + [watcher]:
        t.start()
    for t in threads + [watcher]:
        t.join()
    wall = time.perf_counter() - started
    rss_samples.append(server.rss)
    ok = lat.get(200, [])
    out = {
        "clients": clients, "seconds": round(wall, 1), "depth": depth,
        "status_counts": {str(k): len(v) for k, v in sorted(lat.items())},
        "errors": len(errors), "first_errors": errors[:3],
        "throughput_ok_qps": round(len(ok) / wall, 2),
        "latency_ok_ms": {"p50": pct(ok, 50), "p95": pct(ok, 95), "p99": pct(ok, 99), "max": pct(ok, 100)},
        "server_rss_mb": {"before": rss_samples[0], "after": rss_samples[-1], "peak": max(rss_samples)},
    }
    if 429 in lat:
        out["latency_429_ms"] = {"p50": pct(lat[429], 50), "p99": pct(lat[429], 99), "max": pct(lat[429], 100)}
    every = [ms for values in lat.values() for ms in values]
    out["longest_request_ms"] = pct(every, 100)
    return out


def metrics_excerpt(server: ServerProcess) -> list[str]:
    """The server's request counts and batch sizes, from its Prometheus endpoint."""
    text = httpx.get(server.url + "/_es_rerank/metrics").text
    return [line for line in text.splitlines()
            if line.startswith(("es_rerank_requests_total", "es_rerank_batch_pairs_sum",
                                "es_rerank_batch_pairs_count"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reranker-model", default=os.environ.get("ES_RERANK_RERANKER_MODEL"))
    ap.add_argument("--embedding-model", default=os.environ.get("ES_RERANK_EMBEDDING_MODEL"))
    ap.add_argument("--backend", default="onnx", help="runtime of both models (onnx, torch ...)")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--size", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=48, help="(a): sequential requests each way")
    ap.add_argument("--seconds", type=float, default=45.0, help="(b) and (c): seconds per run")
    ap.add_argument("--timeout", type=float, default=60.0, help="ES_RERANK_SERVE_TIMEOUT for (a) and (b)")
    ap.add_argument("--overload-timeout", type=float, default=10.0, help="ES_RERANK_SERVE_TIMEOUT for (c)")
    ap.add_argument("--port", type=int, default=9291)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    overrides = {"reranker_model": args.reranker_model, "embedding_model": args.embedding_model,
                 "reranker_backend": args.backend, "embedding_backend": args.backend}
    settings = Settings.from_env(**overrides)
    env = {"ES_RERANK_RERANKER_BACKEND": args.backend, "ES_RERANK_EMBEDDING_BACKEND": args.backend,
           "ES_RERANK_SERVE_TIMEOUT": str(args.timeout), "ES_RERANK_SERVE_QUEUE": "8",
           "ES_URL": settings.url}
    for name, value in (("ES_RERANK_RERANKER_MODEL", settings.reranker_model),
                        ("ES_RERANK_EMBEDDING_MODEL", settings.embedding_model)):
        env[name] = value
    index = f"bench-serve-{uuid.uuid4().hex[:8]}"
    engine = open_engine(settings)
    embedder = build_embedder(settings)
    report = index_paths(engine, [str(SAMPLE)], settings=settings.replace(index=index), embedder=embedder)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB",
        "date": time.strftime("%Y-%m-%d"), "index_chunks": report.chunks_indexed, "backend": args.backend,
        "reranker_model": Path(settings.reranker_model).name, "depth": args.depth, "size": args.size,
        "serve_timeout_s": {"a_b": args.timeout, "c": args.overload_timeout},
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    try:
        searcher = Searcher(settings.replace(index=index), engine=engine, embedder=embedder,
                            reranker=build_reranker("cross-encoder", settings))  # score cache on
        searcher.load_models()
        for label, wait in (("batching_on", "5"), ("batching_off", "0")):
            with ServerProcess({**env, "ES_RERANK_SERVE_BATCH_WAIT_MS": wait}, args.port,
                               logs / f"es-rerank-serve-bench-{label}.log") as server:
                part = {"batch_wait_ms": float(wait), "server_rss_mb_loaded": server.rss}
                part["a_overhead_1_client"] = overhead(server, searcher, index, depth=args.depth, size=args.size,
                                                       rounds=args.rounds)
                print(label, "(a)", json.dumps(part["a_overhead_1_client"]), flush=True)
                part["b_8_clients"] = load(server, index, clients=8, seconds=args.seconds, depth=args.depth,
                                           size=args.size)
                print(label, "(b)", json.dumps(part["b_8_clients"]), flush=True)
                part["metrics_excerpt"] = metrics_excerpt(server)
                results[label] = part
        overload_env = {**env, "ES_RERANK_SERVE_BATCH_WAIT_MS": "5",
                        "ES_RERANK_SERVE_TIMEOUT": str(args.overload_timeout)}
        with ServerProcess(overload_env, args.port, logs / "es-rerank-serve-bench-overload.log") as server:
            part = {"batch_wait_ms": 5.0, "queue": 8, "server_rss_mb_loaded": server.rss}
            part["c_overload_32_clients_queue_8"] = load(server, index, clients=32, seconds=args.seconds,
                                                         depth=args.depth, size=args.size, retry_429_s=0.05)
            print("overload (c)", json.dumps(part["c_overload_32_clients_queue_8"]), flush=True)
            part["metrics_excerpt"] = metrics_excerpt(server)
            results["overload"] = part
        on, off = results["batching_on"]["b_8_clients"], results["batching_off"]["b_8_clients"]
        results["b_throughput_ratio_on_vs_off"] = (round(on["throughput_ok_qps"] / off["throughput_ok_qps"], 2)
                                                   if off["throughput_ok_qps"] else None)
        searcher.close()
    finally:
        delete(engine, index)
        engine.close()
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
