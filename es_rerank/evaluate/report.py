"""Render evaluation results: terminal tables, Markdown, JSON and the depth-sweep plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .runner import EvalReport, SweepReport


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])


def eval_table(report: EvalReport, *, markdown: bool = False) -> str:
    """The chapter's table (Setup | Recall@k | added latency) with the other metrics beside it."""
    k, d = report.final_k, report.depth
    ks = sorted(x for x in {1, 3, 5, 10, k, d} if x <= d)
    header = ["Setup", *(f"Recall@{x}" for x in ks), "nDCG@10", "MRR@10",
              "Retrieval p50/p95 ms", "Added latency p50/p95 ms"]
    with_tokens = any(r.tokens_per_query is not None for r in report.rows)
    if with_tokens:
        header.append("LLM tokens/query")
    rows = []
    for r in report.rows:
        m = r.metrics
        added = f"{r.rerank_ms['p50']:.0f} / {r.rerank_ms['p95']:.0f}" if r.setup.startswith("hybrid+") else "—"
        row = [r.setup, *(f"{m[f'recall@{x}']:.3f}" for x in ks), f"{m['ndcg@10']:.3f}",
               f"{m['mrr@10']:.3f}", f"{r.retrieval_ms['p50']:.0f} / {r.retrieval_ms['p95']:.0f}", added]
        if with_tokens:
            row.append("—" if r.tokens_per_query is None else f"{r.tokens_per_query:.0f} ({r.fallbacks} fallbacks)")
        rows.append(row)
    return _table(header, rows, markdown=markdown)


def sweep_table(report: SweepReport, *, markdown: bool = False) -> str:
    k = report.final_k
    header = ["Depth", f"Recall@{k} retrieval", f"Recall@{k} reranked", "nDCG@10 reranked",
              "Retrieval p50 ms", "Added latency p50/p95 ms"]
    rows = [[str(p.depth), f"{p.retrieval[f'recall@{k}']:.3f}", f"{p.reranked[f'recall@{k}']:.3f}",
             f"{p.reranked['ndcg@10']:.3f}", f"{p.retrieval_ms['p50']:.0f}",
             f"{p.rerank_ms['p50']:.0f} / {p.rerank_ms['p95']:.0f}"] for p in report.points]
    return _table(header, rows, markdown=markdown)


def sweep_sentence(report: SweepReport) -> str:
    k = report.final_k
    best = max(p.reranked[f"recall@{k}"] for p in report.points)
    return (f"Recommended depth: {report.recommended_depth} — the smallest depth whose reranked recall@{k} is "
            f"within {report.tolerance:.3f} of the best ({best:.3f}).")


def _env_lines(env: dict) -> list[str]:
    return [f"- {k}: {v}" for k, v in env.items()]


def eval_markdown(report: EvalReport, *, reranker_note: str = "") -> str:
    lines = [
        f"# Evaluation: {Path(report.data).name} ({report.split} split)",
        "",
        f"{report.queries} queries · depth {report.depth} · final_k {report.final_k} · "
        f"wall time {report.wall_seconds:.0f} s",
        "",
        eval_table(report, markdown=True),
        "",
        "## Gap analysis",
        "",
        report.gap["summary"],
        "",
    ]
    if reranker_note:
        lines += [reranker_note, ""]
    lines += ["## Environment", "", *_env_lines(report.environment), ""]
    return "\n".join(lines)


def sweep_markdown(report: SweepReport, plot_name: str = "sweep.png") -> str:
    return "\n".join([
        f"# Depth sweep: {Path(report.data).name} ({report.split} split)",
        "",
        f"{report.queries} queries · final_k {report.final_k} · reranker {report.reranker} · "
        f"wall time {report.wall_seconds:.0f} s",
        "",
        sweep_table(report, markdown=True),
        "",
        sweep_sentence(report),
        "",
        f"![recall and latency against depth]({plot_name})",
        "",
        "## Environment",
        "",
        *_env_lines(report.environment),
        "",
    ])


def plot_sweep(report: SweepReport, path: Path) -> Path:
    """Two panels against depth: recall@k (retrieval vs reranked) and the latency reranking adds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = report.final_k
    depths = [p.depth for p in report.points]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax1.plot(depths, [p.reranked[f"recall@{k}"] for p in report.points], "o-", label=f"hybrid + {report.reranker}")
    ax1.plot(depths, [p.retrieval[f"recall@{k}"] for p in report.points], "s--", label="hybrid (no rerank)")
    ax1.axvline(report.recommended_depth, color="grey", linestyle=":", label=f"recommended depth {report.recommended_depth}")
    ax1.set_xlabel("retrieval depth (candidates reranked)")
    ax1.set_ylabel(f"Recall@{k}")
    ax1.set_title(f"Recall@{k} against depth")
    ax1.set_xticks(depths)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.plot(depths, [p.rerank_ms["p50"] for p in report.points], "o-", label="p50")
    ax2.plot(depths, [p.rerank_ms["p95"] for p in report.points], "^--", label="p95")
    ax2.set_xlabel("retrieval depth (candidates reranked)")
    ax2.set_ylabel("added latency per query (ms)")
    ax2.set_title("Latency reranking adds")
    ax2.set_xticks(depths)
    ax2.set_ylim(bottom=0)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(f"{Path(report.data).name} {report.split}: {report.queries} queries")
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_eval(report: EvalReport, out: Path, *, reranker_note: str = "") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    (out / "results.md").write_text(eval_markdown(report, reranker_note=reranker_note))
    return [out / "results.json", out / "results.md"]


def write_sweep(report: SweepReport, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    plot = plot_sweep(report, out / "sweep.png")
    (out / "results.md").write_text(sweep_markdown(report, plot.name))
    return [out / "results.json", out / "results.md", plot]
