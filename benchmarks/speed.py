"""Speed benchmark: reranking and indexing, each backend against the plain approach, one run.

    python benchmarks/speed.py rerank --model ../shared/models/minilm-l6-scifact-ce --queries 20
    python benchmarks/speed.py index  --docs 500
    python benchmarks/speed.py query  --backend onnx-int8 --model DIR --depth 50

Rerank: real SciFact candidates (hybrid retrieval from the ``eval-scifact`` index) at each
depth are scored by

- ``plain``: the chapter's code, ``CrossEncoder(model).predict(pairs)`` with default settings;
- ``torch``: es-rerank's cross-encoder (raw logits, batches sorted by length);
- ``torch-bf16``: the same with the model in bfloat16;
- ``onnx`` / ``onnx-int8``: ONNX Runtime fp32 / dynamically quantized int8 (exported here);
- ``openvino`` / ``openvino-int8``: OpenVINO at the CPU's best float precision (bf16 where the
  CPU has it) / statically quantized int8, calibrated on the candidates of SciFact *train*
  queries (never the test queries measured here).

With ``--students DIR,...`` (distilled models, e.g. from ``es-rerank distill``), each student
also runs on ``--student-backends``, in the same run: its speed-up is against the *teacher's*
``plain`` (``--model``) and its fidelity against the teacher's torch fp32 scores.

Each backend runs in its own process (so peak memory is its own), with one untimed warm-up
query. Printed: pairs/s, per-query latency p50/p95, peak RSS, speed-up against ``plain``,
and fidelity against torch fp32 (mean Spearman of scores per query, mean top-5 overlap).
Index: chunks of the first N SciFact documents embedded by each embedder alone, then
indexed end to end; docs/s, the ratio of the two, and cosine agreement with torch fp32.
It measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, it restarts at exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _make_scorer(backend: str, model: str, onnx_dir: str):
    if backend == "plain":
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(model)
        return lambda q, texts: [float(x) for x in ce.predict([(q, t) for t in texts], show_progress_bar=False)]
    if backend in ("torch", "torch-bf16"):
        from es_rerank.rerankers import CrossEncoderReranker

        return CrossEncoderReranker(model, backend=backend).score
    from es_rerank.rerankers import CrossEncoderReranker

    return CrossEncoderReranker(onnx_dir, backend=backend).score


def _rerank_worker(backend, model, onnx_dir, work, queue):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    score = _make_scorer(backend, model, onnx_dir)
    score(work[0][1], work[0][2][:8])  # warm-up, untimed
    out = []
    for depth, query, texts in work:
        t0 = time.perf_counter()
        scores = score(query, texts)
        out.append((depth, (time.perf_counter() - t0) * 1000, scores))
    queue.put({"backend": backend, "results": out, "peak_mb": _peak_mb()})


def _run_isolated(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _calibration_pairs(index: str, n_queries: int = 40, depth: int = 10) -> list[tuple[str, str]]:
    """(query, candidate) pairs from SciFact train queries: disjoint from the measured test queries."""
    from es_rerank.config import Settings
    from es_rerank.evaluate.data import load_beir
    from es_rerank.export import calibration_from_index

    queries = list(load_beir(SCIFACT, "train", check_corpus=False).queries.values())[:n_queries]
    return calibration_from_index(Settings.from_env(index=index), queries, depth=depth)


def _export_all(model: str, out: str, kind: str, calibration, onnx_int8: bool = True) -> None:
    """ONNX fp32 + dynamic int8, then OpenVINO IR + static int8, into one folder (untimed); a folder
    that has them (``es-rerank export-onnx --openvino --quantize int8`` writes all but the ONNX int8,
    needed only with ``onnx_int8``) is used as it is."""
    from es_rerank.export import INT8_FILE, export_openvino, quantize_onnx

    if (Path(out) / INT8_FILE).is_file() and (not onnx_int8 or (Path(out) / "model_int8.onnx").is_file()):
        return
    t0 = time.perf_counter()
    export_openvino(model, out, kind=kind, quantize="int8", calibration=calibration())
    quantize_onnx(out)  # the model.onnx that export_openvino wrote
    print(f"exported {model} to ONNX (+int8) and OpenVINO (+int8) in {time.perf_counter() - t0:.0f}s -> {out}")


def _candidates(index: str, n_queries: int, depths: list[int]):
    from es_rerank.client import Searcher
    from es_rerank.config import Settings
    from es_rerank.evaluate.data import load_beir

    data = load_beir(SCIFACT, "test", check_corpus=False)
    searcher = Searcher(Settings.from_env(index=index, reranker="none"))
    work = []
    for qid in list(data.queries)[:n_queries]:
        for depth in depths:
            hits = searcher.retrieve(data.queries[qid], depth=depth).hits
            work.append((depth, data.queries[qid], [h.passage for h in hits]))
    return work


def _student_label(folder: str) -> str:
    """``(3 layers)`` for a student folder, from its config."""
    config = json.loads((Path(folder) / "config.json").read_text())
    n = config.get('num_hidden_layers', '?')
    return f"({n} layer{'' if n == 1 else 's'})"


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _top5(a, b) -> float:
    ta = set(np.argsort(-np.asarray(a), kind="stable")[:5])
    tb = set(np.argsort(-np.asarray(b), kind="stable")[:5])
    return len(ta & tb) / max(len(ta), 1)


def bench_rerank(args) -> None:
    depths = [int(d) for d in args.depths.split(",")]
    onnx_dir = args.onnx_dir or tempfile.mkdtemp(prefix="ce-onnx-")
    calibration = lambda: _calibration_pairs(args.index)  # noqa: E731
    _export_all(args.model, onnx_dir, "cross-encoder", calibration, "onnx-int8" in args.backends.split(","))
    work = _candidates(args.index, args.queries, depths)
    backends = args.backends.split(",")
    runs = {b: _run_isolated(_rerank_worker, b, args.model, onnx_dir, work) for b in backends}
    students = [s for s in (args.students or "").split(",") if s]
    exported = [s for s in (args.student_onnx_dirs or "").split(",") if s]
    if exported and len(exported) != len(students):
        sys.exit("--student-onnx-dirs needs one folder per --students entry")
    for i, student in enumerate(students):
        label = _student_label(student)
        student_dir = exported[i] if exported else tempfile.mkdtemp(prefix="student-onnx-")
        _export_all(student, student_dir, "cross-encoder", calibration, "onnx-int8" in args.student_backends.split(","))
        for b in args.student_backends.split(","):
            runs[f"{b} {label}"] = _run_isolated(_rerank_worker, b, student, student_dir, work)
    ref = runs["torch"]["results"] if "torch" in runs else None
    report = {"model": args.model, "students": students, "queries": args.queries, "cpu_threads": os.cpu_count(),
              "depths": {}}
    for depth in depths:
        rows = {}
        for b, run in runs.items():
            res = [(i, r) for i, r in enumerate(run["results"]) if r[0] == depth]
            ms = [r[1] for _, r in res]
            pairs = sum(len(r[2]) for _, r in res)
            row = {"pairs_per_s": pairs / (sum(ms) / 1000), "p50_ms": float(np.percentile(ms, 50)),
                   "p95_ms": float(np.percentile(ms, 95)), "peak_mb": run["peak_mb"]}
            if ref is not None:
                row["spearman"] = statistics.mean(_spearman(r[2], ref[i][2]) for i, r in res)
                row["top5_overlap"] = statistics.mean(_top5(r[2], ref[i][2]) for i, r in res)
            rows[b] = row
        if "plain" in rows:
            for row in rows.values():
                row["speedup_vs_plain"] = rows["plain"]["p50_ms"] / row["p50_ms"]
        report["depths"][depth] = rows
        print(f"\ndepth {depth} ({args.queries} queries, {pairs // args.queries} pairs each)")
        width = max(14, *(len(b) + 1 for b in rows))
        print(f"{'backend':<{width}} {'pairs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'peak MB':>8} {'speed-up':>8} "
              f"{'Spearman':>9} {'top-5':>6}")
        for b, row in rows.items():
            print(f"{b:<{width}} {row['pairs_per_s']:>8.1f} {row['p50_ms']:>8.0f} {row['p95_ms']:>8.0f} "
                  f"{row['peak_mb']:>8.0f} {row.get('speedup_vs_plain', float('nan')):>7.2f}x "
                  f"{row.get('spearman', float('nan')):>9.4f} {row.get('top5_overlap', float('nan')):>6.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def _embed_worker(kind, model_dir, texts, queue):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if kind == "plain":
        from sentence_transformers import SentenceTransformer

        from es_rerank.runtime import resolve_model

        m = SentenceTransformer(resolve_model(model_dir))
        embed = lambda xs: m.encode(xs, normalize_embeddings=True)  # noqa: E731
    else:
        from es_rerank.embedding import ModelEmbedder

        embed = ModelEmbedder(model_dir, backend=kind).embed_documents
    embed(texts[:8])
    t0 = time.perf_counter()
    vectors = embed(texts)
    queue.put({"kind": kind, "seconds": time.perf_counter() - t0, "vectors": np.asarray(vectors), "peak_mb": _peak_mb()})


def bench_index(args) -> None:
    from es_rerank.chunking import Chunker
    from es_rerank.config import Settings
    from es_rerank.embedding import ModelEmbedder, build_embedder
    from es_rerank.engines import open_engine
    from es_rerank.indexing import index_paths
    from es_rerank.lifecycle import delete
    from es_rerank.types import passage_text

    onnx_dir = args.onnx_dir or tempfile.mkdtemp(prefix="emb-onnx-")
    corpus = Path(tempfile.mkdtemp()) / "corpus.jsonl"
    with open(SCIFACT / "corpus.jsonl") as src, open(corpus, "w") as dst:
        for _, line in zip(range(args.docs), src):
            dst.write(line)
    base = ModelEmbedder(args.embedder, backend="torch")
    chunker = Chunker(base.offsets, size=200, overlap=40)
    texts = []
    for line in open(corpus):
        doc = json.loads(line)
        texts += [passage_text(doc["title"], c.text) for c in chunker.split(doc["text"])]
    print(f"{args.docs} documents -> {len(texts)} chunks")

    def calibration():
        # chunks of documents the benchmark does not embed (the corpus's last 150)
        lines = (SCIFACT / "corpus.jsonl").read_text().splitlines()[-150:]
        return [passage_text(d["title"], c.text) for d in map(json.loads, lines) for c in chunker.split(d["text"])]

    _export_all(args.embedder, onnx_dir, "embedder", calibration)
    kinds = args.backends.split(",")
    alone = {k: _run_isolated(_embed_worker, k, args.embedder if k == "plain" else onnx_dir, texts) for k in kinds}
    ref = alone["plain"]["vectors"]
    engine = open_engine(Settings.from_env(request_timeout=60))
    print(f"\n{'embedder':<14} {'alone docs/s':>12} {'end-to-end docs/s':>18} {'e2e/alone':>9} {'vs plain':>8} "
          f"{'cos mean':>8} {'cos min':>8} {'peak MB':>8}")
    for kind, run in alone.items():
        alone_dps = args.docs / run["seconds"]
        cos = np.sum(run["vectors"] * ref, axis=1)
        backend = "torch" if kind == "plain" else kind
        model = args.embedder if kind == "plain" else onnx_dir
        s = Settings.from_env(index=f"bench-{uuid.uuid4().hex[:8]}", embedding_backend=backend, embedding_model=model)
        report = index_paths(engine, [str(corpus)], settings=s, embedder=build_embedder(s))
        delete(engine, s.index)
        e2e = report.documents_indexed / report.seconds
        plain_dps = args.docs / alone["plain"]["seconds"]
        print(f"{kind:<14} {alone_dps:>12.1f} {e2e:>18.1f} {e2e / alone_dps:>9.2f} {alone_dps / plain_dps:>7.2f}x "
              f"{cos.mean():>8.4f} {cos.min():>8.4f} {run['peak_mb']:>8.0f}")


def bench_query(args) -> None:
    """Where a query's time goes at one depth: embedding, Elasticsearch, reranking, and the rest."""
    from es_rerank.client import Searcher
    from es_rerank.config import Settings
    from es_rerank.evaluate.data import load_beir

    data = load_beir(SCIFACT, "test", check_corpus=False)
    s = Settings.from_env(index=args.index, reranker_model=args.model, reranker_backend=args.backend,
                          rerank_cache_size=0)
    searcher = Searcher(s)
    searcher.load_models()
    queries = list(data.queries.values())[: args.queries]
    searcher.search(queries[0], depth=args.depth)  # warm-up
    rows = [searcher.search(q, depth=args.depth, final_k=5).timings for q in queries]
    total = sum(t.total_ms for t in rows)
    parts = {
        "query embedding": sum(t.embed_ms for t in rows),
        "Elasticsearch (took)": sum(t.es_took_ms for t in rows),
        "reranking (tokenize + model)": sum(t.rerank_ms for t in rows),
    }
    parts["Python layer (HTTP, JSON, fusion, hits)"] = total - sum(parts.values())
    print(f"depth {args.depth}, backend {args.backend}, {len(rows)} queries, mean total {total / len(rows):.1f} ms")
    for name, ms in parts.items():
        print(f"  {name:<42} {ms / len(rows):>8.1f} ms  {100 * ms / total:>5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("rerank")
    r.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "minilm-l6-scifact-ce"))
    r.add_argument("--onnx-dir", default=None)
    r.add_argument("--index", default="eval-scifact")
    r.add_argument("--queries", type=int, default=20)
    r.add_argument("--depths", default="20,50,100")
    r.add_argument("--backends", default="plain,torch,torch-bf16,onnx,onnx-int8,openvino,openvino-int8")
    r.add_argument("--students", default=None, help="Distilled model folders, comma-separated.")
    r.add_argument("--student-onnx-dirs", default=None,
                   help="Their exported folders (as --onnx-dir), comma-separated; default: exported here.")
    r.add_argument("--student-backends", default="torch,openvino-int8")
    r.add_argument("--json", default=None)
    i = sub.add_parser("index")
    i.add_argument("--embedder", default="sentence-transformers/all-MiniLM-L6-v2")
    i.add_argument("--onnx-dir", default=None)
    i.add_argument("--docs", type=int, default=500)
    i.add_argument("--backends", default="plain,onnx,onnx-int8,openvino,openvino-int8")
    q = sub.add_parser("query")
    q.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "minilm-l6-scifact-ce"))
    q.add_argument("--backend", default="torch")
    q.add_argument("--index", default="eval-scifact")
    q.add_argument("--depth", type=int, default=50)
    q.add_argument("--queries", type=int, default=30)
    args = ap.parse_args()
    if not (SCIFACT / "corpus.jsonl").is_file():
        sys.exit(f"SciFact not found at {SCIFACT}")
    {"rerank": bench_rerank, "index": bench_index, "query": bench_query}[args.what](args)


if __name__ == "__main__":
    main()
