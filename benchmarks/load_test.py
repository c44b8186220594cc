"""Bounded load test: N threads share one Searcher and send M queries each to the local cluster.

Reports errors (should be 0), latency p50/p95/p99, throughput, and resident memory before
and after. It measures; it asserts nothing about speed. Traffic goes to ES_URL only (default
http://127.0.0.1:9200), and the loop is bounded by count and by --max-seconds.

    python benchmarks/load_test.py --index help-centre --clients 8 --queries 100 [--no-rerank]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time

import numpy as np

from es_rerank import Searcher, Settings

QUERIES = [
    "what happens to my data if I close my account", "refund for a double charge", "reset my password",
    "turn on two-factor authentication", "who can see my files", "recover deleted files", "cancel subscription",
    "invite someone to my team", "storage is full", "files not syncing", "download my invoices", "GDPR rights",
]


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default=os.environ.get("ES_RERANK_INDEX", "help-centre"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--queries", type=int, default=100, help="queries per client")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--final-k", type=int, default=5)
    ap.add_argument("--no-rerank", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=900.0, help="stop sending after this long")
    args = ap.parse_args()

    settings = Settings.from_env(index=args.index, reranker="none" if args.no_rerank else None)
    searcher = Searcher(settings)
    searcher.load_models(rerank=not args.no_rerank)
    for q in QUERIES:  # warm up: models, fusion detection, caches
        searcher.search(q, depth=args.depth, final_k=args.final_k, rerank=not args.no_rerank)
    rss_before = rss_mb()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.max_seconds

    def client(n: int) -> None:
        for i in range(args.queries):
            if time.monotonic() > deadline:
                return
            q = QUERIES[(n + i) % len(QUERIES)]
            t0 = time.perf_counter()
            try:
                res = searcher.search(q, depth=args.depth, final_k=args.final_k, rerank=not args.no_rerank)
                ok = len(res.hits) == args.final_k
                err = None if ok else f"{len(res.hits)} hits"
            except Exception as e:  # report every failure, keep going
                err = f"{type(e).__name__}: {e}"
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)
                if err:
                    errors.append(err)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    rss_after = rss_mb()
    lat = np.array(latencies)
    print(json.dumps({
        "clients": args.clients, "queries_per_client": args.queries, "depth": args.depth,
        "rerank": not args.no_rerank, "requests": len(latencies), "errors": len(errors),
        "first_errors": errors[:5],
        "latency_ms": {p: round(float(np.percentile(lat, int(p[1:]))), 1) for p in ("p50", "p95", "p99")},
        "throughput_qps": round(len(latencies) / wall, 2), "wall_s": round(wall, 1),
        "rss_mb_before": round(rss_before, 1), "rss_mb_after": round(rss_after, 1),
        "rss_growth_mb": round(rss_after - rss_before, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
