"""Scale benchmark: what grows with the corpus (the cluster side) and what does not (reranking).

    python benchmarks/scale.py --url http://127.0.0.1:9230 --sizes 10000,100000 \\
        --reranker-model ../shared/models/minilm-l6-scifact-ce --out results/scale

The corpus is SciFact's (title + abstract), ``--base`` distinct documents embedded once, then
replicated with changes up to each size: copy ``k`` of a document drops one of its sentences
(chosen by ``k``), and its vector is the original's plus small Gaussian noise (sigma
``--noise``), normalised. So the texts and vectors are distinct, but the vectors are **not** the
embeddings of the changed texts: the benchmark measures the cluster (bulk, BM25, kNN, heap,
disk), not the embedder, whose own speed is measured once on the distinct texts.

For each size, on the cluster at ``--url``: a fresh index (``--shards``, no replicas) is
bulk-loaded with the stored vectors (chunks/s, against the embedder's chunks/s alone); then
for ``--queries`` SciFact test queries: retrieval latency p50/p95 of ``bm25``, ``knn`` and
``hybrid`` at depth 50, the whole reranked search (hybrid, depth 50, the cross-encoder) p50/p95,
the index's disk size and the nodes' heap in use, and kNN recall@10 against exact search (the
exact top 10 by cosine over every stored vector, in numpy). The index is deleted afterwards.
It measures and prints (and writes JSON with ``--out``); it asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _base_docs(n: int) -> list[tuple[str, str]]:
    docs = []
    with open(SCIFACT / "corpus.jsonl") as fh:
        for line in fh:
            d = json.loads(line)
            if d.get("text"):
                docs.append((d.get("title", ""), d["text"]))
            if len(docs) == n:
                break
    return docs


def _queries(n: int) -> list[str]:
    with open(SCIFACT / "queries.jsonl") as fh:
        return [json.loads(line)["text"] for line in fh][:n]


def _variant(text: str, k: int) -> str:
    """Copy ``k`` of a text: one sentence dropped (none for copy 0)."""
    if k == 0:
        return text
    sentences = re.split(r"(?<=[.!?])\s+", text)
    if len(sentences) < 2:
        return f"{text} ({k})"
    drop = k % len(sentences)
    return " ".join(s for i, s in enumerate(sentences) if i != drop)


def _corpus(size: int, docs: list[tuple[str, str]], vectors: np.ndarray, noise: float, seed: int = 7):
    """(ids, titles, texts, vectors) of ``size`` chunks replicated from ``docs``."""
    rng = np.random.default_rng(seed)
    ids, titles, texts, rows = [], [], [], []
    for i in range(size):
        b, k = i % len(docs), i // len(docs)
        ids.append(f"s{b}-{k}")
        titles.append(docs[b][0])
        texts.append(_variant(docs[b][1], k))
        rows.append(b)
    out = vectors[np.asarray(rows)].copy()
    copies = np.asarray([i // len(docs) for i in range(size)]) > 0
    out[copies] += rng.normal(0.0, noise, size=(int(copies.sum()), vectors.shape[1])).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return ids, titles, texts, out


def _load(engine, index: str, ids, titles, texts, vectors, *, shards: int, embedder, bulk: int) -> float:
    from es_rerank.lifecycle import marker

    body = engine.index_body(vectors.shape[1])
    body.setdefault("settings", {}).update({"number_of_shards": shards, "number_of_replicas": 0,
                                            "refresh_interval": "-1"})
    body["mappings"]["_meta"] = marker(alias=index, state="ready", engine=engine.name, embedder=embedder.model_name,
                                       embedding_backend=embedder.backend, dims=int(vectors.shape[1]),
                                       chunk_tokens=10_000, chunk_overlap=0, analyzer="standard")
    engine.create_index(index, body)

    def actions():
        for i, doc_id in enumerate(ids):
            yield {"_index": index, "_id": f"{doc_id}#0", "_source": {
                "doc_id": doc_id, "chunk": 0, "char_start": 0, "char_end": len(texts[i]), "title": titles[i],
                "text": texts[i], "metadata": {}, "embedding": [float(x) for x in vectors[i]]}}

    started = time.perf_counter()
    failed = sum(1 for ok, _ in engine.streaming_bulk(actions(), chunk_size=bulk, max_retries=5, initial_backoff=1,
                                                       max_backoff=30) if not ok)
    engine.put_settings(index, {"refresh_interval": None})
    engine.refresh(index)
    seconds = time.perf_counter() - started
    if failed:
        raise SystemExit(f"{failed} chunks were rejected while loading {index}")
    return seconds


def _measure(searcher, engine, index, queries, qvecs, vectors, ids, depth: int) -> dict:
    out: dict = {}
    for mode in ("bm25", "knn", "hybrid"):
        times = []
        for q in queries:
            t0 = time.perf_counter()
            searcher.retrieve(q, depth=depth, mode=mode)
            times.append((time.perf_counter() - t0) * 1000)
        out[f"retrieval_{mode}_ms"] = {"p50": _pct(times, 50), "p95": _pct(times, 95)}
    times = []
    for q in queries:
        t0 = time.perf_counter()
        searcher.search(q, depth=depth, final_k=10)
        times.append((time.perf_counter() - t0) * 1000)
    out["reranked_search_ms"] = {"p50": _pct(times, 50), "p95": _pct(times, 95)}
    recalls = []
    for qv in qvecs:
        exact = {f"{ids[i]}#0" for i in np.argsort(-(vectors @ qv))[:10]}
        resp = engine.search(index, engine.knn_body([float(x) for x in qv], size=10, source=("doc_id",)))
        recalls.append(len(exact & {h["_id"] for h in resp["hits"]["hits"]}) / 10)
    out["knn_recall_at_10"] = statistics.fmean(recalls)
    return out


def _footprint(engine, index: str) -> dict:
    stats = engine.request("GET", f"/{index}/_stats/store")["indices"][index]["primaries"]["store"]
    nodes = engine.request("GET", "/_nodes/stats/jvm")["nodes"].values()
    return {"disk_bytes": int(stats["size_in_bytes"]),
            "heap_used_bytes": int(sum(n["jvm"]["mem"]["heap_used_in_bytes"] for n in nodes)),
            "nodes": len(nodes)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:9200")
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--base", type=int, default=1000, help="distinct SciFact documents embedded")
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--noise", type=float, default=0.02)
    p.add_argument("--bulk", type=int, default=500)
    p.add_argument("--reranker-model", required=True)
    p.add_argument("--out", default=None, help="folder for the JSON results")
    args = p.parse_args(argv)

    from es_rerank.client import Searcher
    from es_rerank.config import Settings
    from es_rerank.embedding import ModelEmbedder
    from es_rerank.engines import open_engine
    from es_rerank.types import passage_text

    settings = Settings.from_env(url=args.url, reranker_model=args.reranker_model, device="cpu")
    embedder = ModelEmbedder(settings.embedding_model, backend=settings.embedding_backend, device="cpu")
    docs = _base_docs(args.base)
    t0 = time.perf_counter()
    vectors = np.asarray(embedder.embed_documents([passage_text(t, x) for t, x in docs]), dtype=np.float32)
    embed_rate = len(docs) / (time.perf_counter() - t0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = _queries(args.queries)
    qvecs = np.asarray([embedder.embed_query(q) for q in queries], dtype=np.float32)
    qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
    print(f"embedder alone: {embed_rate:.1f} chunks/s over {len(docs)} distinct SciFact documents", flush=True)
    rows = []
    with open_engine(settings) as engine:
        for size in (int(s) for s in args.sizes.split(",")):
            index = f"bench-scale-{size}-{uuid.uuid4().hex[:6]}"
            ids, titles, texts, vecs = _corpus(size, docs, vectors, args.noise)
            try:
                seconds = _load(engine, index, ids, titles, texts, vecs, shards=args.shards, embedder=embedder,
                                bulk=args.bulk)
                searcher = Searcher(settings.replace(index=index), engine=engine, embedder=embedder)
                row = {"chunks": size, "load_chunks_per_s": size / seconds,
                       "load_vs_embedder": (size / seconds) / embed_rate,
                       **_measure(searcher, engine, index, queries, qvecs, vecs, ids, args.depth),
                       **_footprint(engine, index)}
            finally:
                engine.delete_index(index)
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"date": dt.date.today().isoformat(), "machine": f"{platform.node()} {platform.processor() or ''}"
              f" ({__import__('os').cpu_count()} CPUs)", "url": settings.safe_url, "engine": engine.name,
              "embedder_chunks_per_s": embed_rate, "args": vars(args), "rows": rows}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        nodes = rows[0]["nodes"] if rows else 0
        name = f"scale-{engine.name}-{nodes}node{'s' if nodes != 1 else ''}-{args.sizes.replace(',', '-')}.json"
        (out / name).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
