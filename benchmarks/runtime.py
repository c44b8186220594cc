"""Torch-free query path against the torch one: cold start, per-query latency, install size.

    python benchmarks/runtime.py --index help-centre --reranker-model DIR [--runs 3] [--venv PATH ...]

For each backend pair (``torch``: sentence-transformers for embedder and cross-encoder;
``onnx``: ONNX Runtime + tokenizers, the default), each run is a fresh process doing what
``es-rerank query`` does: import the package, load both models, embed the query, retrieve
50 candidates from the index and rerank them. Printed per backend: median wall time of the
whole process, of the imports, of model loading and of the search (the reranking part
apart), and the process's peak memory. ``--venv`` prints the installed size of each
virtual environment given (for the light install vs the test install). It measures and
prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
from es_rerank import Searcher, Settings
t1 = time.perf_counter()
backend = sys.argv[1]
s = Settings.from_env(reranker_backend=backend, embedding_backend=backend)
with Searcher(s) as searcher:
    loads = searcher.load_models()
    t2 = time.perf_counter()
    result = searcher.search(sys.argv[2], depth=50, final_k=5)
    t3 = time.perf_counter()
peak = 0
with open("/proc/self/status") as fh:
    for line in fh:
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "search_s": t3 - t2,
                  "rerank_ms": result.timings.rerank_ms, "hits": [h.chunk_id for h in result.hits],
                  "torch_imported": "torch" in sys.modules, "peak_mb": peak}))
"""


def _run(python: str, backend: str, query: str, env: dict) -> dict:
    import time

    started = time.perf_counter()
    out = subprocess.run([python, "-c", CHILD, backend, query], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{backend} run failed:\n{out.stderr[-2000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["wall_s"] = wall
    return data


def _size_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default=os.environ.get("ES_RERANK_INDEX", "help-centre"))
    ap.add_argument("--reranker-model", default=os.environ.get("ES_RERANK_RERANKER_MODEL"))
    ap.add_argument("--query", default="what happens to my data if I close my account")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backends", default="torch,onnx")
    ap.add_argument("--venv", action="append", default=[], help="a virtual environment whose size to print")
    args = ap.parse_args()

    env = dict(os.environ, ES_RERANK_INDEX=args.index, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    if args.reranker_model:
        env["ES_RERANK_RERANKER_MODEL"] = args.reranker_model
    print(f"{args.runs} fresh processes per backend; index {args.index}; depth 50; medians")
    print(f"{'backend':<8} {'wall s':>7} {'import s':>9} {'load s':>7} {'search s':>9} {'rerank ms':>10} "
          f"{'peak MB':>8}  torch imported")
    results = {}
    for backend in args.backends.split(","):
        runs = [_run(sys.executable, backend, args.query, env) for _ in range(args.runs)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "import_s", "load_s", "search_s",
                                                                  "rerank_ms", "peak_mb")}
        results[backend] = runs
        print(f"{backend:<8} {med['wall_s']:>7.2f} {med['import_s']:>9.2f} {med['load_s']:>7.2f} "
              f"{med['search_s']:>9.2f} {med['rerank_ms']:>10.0f} {med['peak_mb']:>8.0f}  "
              f"{runs[0]['torch_imported']}")
    names = list(results)
    if len(names) == 2:
        a, b = names
        same = results[a][0]["hits"] == results[b][0]["hits"]
        ratio = statistics.median(r["wall_s"] for r in results[a]) / statistics.median(r["wall_s"] for r in results[b])
        print(f"{a} / {b} wall time: {ratio:.2f}x; same top-5 chunks in the same order: {same}")
    for venv in args.venv:
        print(f"venv {venv}: {_size_mb(Path(venv)):,.0f} MB installed")


if __name__ == "__main__":
    main()
