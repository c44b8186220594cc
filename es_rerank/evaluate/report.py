"""Render evaluation results: terminal tables, Markdown, JSON, plots and the HTML report.

Each command writes ``results.json`` (every number), ``results.md`` (the tables and the
advice) and ``report.html`` (the table, the plots and a per-query view; self-contained,
see :mod:`es_rerank.evaluate.html`) to its output folder. Plots are built from plain
series (:func:`sweep_series`) so tests can check what is drawn, not only pixels.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .html import Plot, QuerySection, TableRow, plot_tune, query_views, render_report
from .evaluation import EvalReport
from .runner import BASELINE, PRIMARY_METRIC, QueryDetails
from .sweep import SweepReport
from .tuning import TuneReport
from .stats import PairedComparison, paired_comparison, paired_phrase
from .metrics import doc_scores
from .trec import RUN_SUFFIX, rescoring_note, run_name, write_runs
from .tune import apply_setting

TOP_CELLS = 10
"""Settings listed in the tune table (the best first), besides hybrid."""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])


def _delta_cell(c: PairedComparison | None) -> str:
    """``+0.012 [-0.004, +0.029]``: the mean difference and its 95% interval."""
    if c is None:
        return "—"
    if c.ci_low is None or c.ci_high is None:
        return f"{c.mean_delta:+.3f} [no CI]"
    return f"{c.mean_delta:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}]"


def _wtl(c: PairedComparison | None) -> str:
    return "—" if c is None else f"{c.wins}/{c.ties}/{c.losses}"


def _pretty(metric: str) -> str:
    name, _, k = metric.partition("@")
    return {"ndcg": "nDCG", "recall": "Recall", "mrr": "MRR", "hit_rate": "Hit rate"}.get(name, name) + f"@{k}"


def _model_label(model: str) -> str:
    """A local model folder by its name (the path adds nothing a reader needs), else as given."""
    path = Path(model)
    local = path.is_absolute() or model.startswith(".") or path.is_dir()
    return path.name if model and local else model


# -- eval --------------------------------------------------------------------------------

def eval_table(report: EvalReport, *, markdown: bool = False) -> str:
    """The chapter's table (Setup | Recall@k | added latency) with the other metrics and the
    paired comparison of every row with hybrid (mean difference [95% CI], wins/ties/losses)."""
    k, d = report.final_k, report.depth
    ks = sorted(x for x in {1, 3, 5, 10, k, d} if x <= d)
    compared = report.compared
    header = ["Setup", *(f"Recall@{x}" for x in ks), "nDCG@10", "MRR@10"]
    for m in compared:
        header += [f"Δ{_pretty(m)} vs hybrid [95% CI]", f"W/T/L {_pretty(m)}"]
    header += ["Retrieval p50/p95 ms", "Added latency p50/p95 ms"]
    with_tokens = any(r.tokens_per_query is not None for r in report.rows)
    if with_tokens:
        header.append("LLM tokens/query")
    rows = []
    for r in report.rows:
        m = r.metrics
        added = f"{r.rerank_ms['p50']:.0f} / {r.rerank_ms['p95']:.0f}" if r.setup.startswith("hybrid+") else "—"
        row = [r.setup, *(f"{m[f'recall@{x}']:.3f}" for x in ks), f"{m['ndcg@10']:.3f}", f"{m['mrr@10']:.3f}"]
        for metric in compared:
            c = r.comparisons.get(metric)
            row += [_delta_cell(c), _wtl(c)]
        row += [f"{r.retrieval_ms['p50']:.0f} / {r.retrieval_ms['p95']:.0f}", added]
        if with_tokens:
            row.append("—" if r.tokens_per_query is None else f"{r.tokens_per_query:.0f} ({r.fallbacks} fallbacks)")
        rows.append(row)
    return _table(header, rows, markdown=markdown)


def _env_lines(env: Mapping[str, Any]) -> list[str]:
    return [f"- {k}: {v}" for k, v in env.items()]


def _own_note(own: Mapping[str, Any]) -> list[str]:
    return [own["note"], ""] if own.get("note") else []


def eval_header(report: EvalReport) -> str:
    blend = report.blend + (f" (reranker weight {report.blend_weight:g})" if report.blend == "linear" else "")
    model = report.environment.get("reranker_model")
    return (f"{report.queries} queries · depth {report.depth} · final_k {report.final_k} · blend {blend}"
            + (f" · reranker model {_model_label(str(model))}" if model else "")
            + f" · wall time {report.wall_seconds:.0f} s")


def eval_markdown(report: EvalReport, *, reranker_note: str = "") -> str:
    lines = [
        f"# Evaluation: {Path(report.data).name} ({report.split} split)",
        "",
        eval_header(report),
        "",
        eval_table(report, markdown=True),
        "",
        "Δ: the setup minus hybrid, averaged over the queries, with a 95% paired bootstrap confidence "
        "interval (10,000 resamples, seed 0); W/T/L: queries it won, tied and lost against hybrid.",
        "",
        *_own_note(report.own_document),
        "## Gap analysis",
        "",
        report.gap["summary"],
        "",
    ]
    if reranker_note:
        lines += [reranker_note, ""]
    lines += ["## Environment", "", *_env_lines(report.environment), ""]
    return "\n".join(lines)


def eval_figure(report: EvalReport):
    """A matplotlib figure: every setup's nDCG@10 difference from hybrid with its 95% interval."""
    plt = _pyplot()
    rows = [r for r in report.rows if r.setup != BASELINE]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.6), constrained_layout=True)
    ys = list(range(len(rows)))
    deltas = [r.comparisons[PRIMARY_METRIC].mean_delta for r in rows]
    lows = [r.comparisons[PRIMARY_METRIC].ci_low for r in rows]
    highs = [r.comparisons[PRIMARY_METRIC].ci_high for r in rows]
    err = [[d - (d if lo is None else lo) for d, lo in zip(deltas, lows)],
           [(d if hi is None else hi) - d for d, hi in zip(deltas, highs)]]
    ax.errorbar(deltas, ys, xerr=err, fmt="o", capsize=4, label="Δ nDCG@10 vs hybrid, 95% CI")
    ax.axvline(0.0, color="grey", linestyle="--")
    ax.set_yticks(ys, [r.setup for r in rows])
    ax.set_xlabel("nDCG@10 difference from hybrid (per-query mean)")
    ax.grid(alpha=0.3)
    model = report.environment.get("reranker_model")
    ax.set_title(f"{Path(report.data).name} {report.split}: {report.queries} queries, depth {report.depth}"
                 + (f", reranker model {_model_label(str(model))}" if model else ""), fontsize=9)
    return fig


def _sections(details: QueryDetails, pairs: Sequence[tuple[str, str, str, str]]) -> list[QuerySection]:
    """Per-query sections for ``(baseline key, setup key, baseline label, setup label)`` pairs."""
    out = []
    qids = list(details.texts)
    for base, setup, base_label, setup_label in pairs:
        views = query_views(qids, details.texts, details.rankings[base], details.rankings[setup], details.qrels,
                            details.values[base], details.values[setup])
        out.append(QuerySection(setup_label, views, base_label))
    return out


def eval_html(report: EvalReport) -> str:
    """The self-contained HTML report of an evaluation."""
    rows = []
    for r in report.rows:
        notes = {"Added latency p50/p95 ms": (f"{r.rerank_ms['p50']:.0f} / {r.rerank_ms['p95']:.0f}"
                                              if r.setup.startswith("hybrid+") else "—")}
        metrics = {_pretty(m): v for m, v in r.metrics.items() if not m.startswith("hit_rate")}
        rows.append(TableRow(r.setup, metrics, r.comparisons.get(PRIMARY_METRIC), notes))
    sections = []
    if report.details is not None:
        sections = _sections(report.details, [(BASELINE, r.setup, BASELINE, r.setup) for r in report.rows
                                              if r.setup.startswith("hybrid+")])
    plots = [Plot("nDCG@10 difference from hybrid per setup, with 95% paired bootstrap intervals",
                  _png(eval_figure(report)))] if len(report.rows) > 1 else []
    return render_report(
        title=f"Evaluation: {Path(report.data).name} ({report.split} split)", metric=PRIMARY_METRIC, rows=rows,
        plots=plots, summary=[eval_header(report), report.gap["summary"],
                              *([report.own_document["note"]] if report.own_document.get("note") else [])],
        environment=report.environment, sections=sections)


def _run_files(runs: Mapping[str, Any]) -> list[str]:
    return [run_name(row) + RUN_SUFFIX for row in runs]


def _with_runs(markdown: str, runs: Mapping[str, Any]) -> str:
    """results.md with the paragraph on re-scoring the run files (before the environment)."""
    if not runs:
        return markdown
    head, sep, tail = markdown.partition("## Environment")
    return head + rescoring_note(_run_files(runs)) + "\n" + sep + tail


def _runs_of(details: QueryDetails | None) -> tuple[Mapping[str, Any], Mapping[str, Mapping[str, int]]]:
    return ({}, {}) if details is None else (details.runs, details.qrels)


def write_eval(report: EvalReport, out: Path, *, reranker_note: str = "") -> list[Path]:
    """``results.json``, ``results.md``, ``report.html``, a TREC run file per row and ``qrels.trec`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, qrels = _runs_of(report.details)
    (out / "results.json").write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    (out / "results.md").write_text(_with_runs(eval_markdown(report, reranker_note=reranker_note), runs))
    (out / "report.html").write_text(eval_html(report), encoding="utf-8")
    written = write_runs(out, runs, qrels) if runs else []
    return [out / "results.json", out / "results.md", out / "report.html", *written]


# -- sweep -------------------------------------------------------------------------------

def sweep_table(report: SweepReport, *, markdown: bool = False) -> str:
    """Per depth: nDCG@10 and recall@k before and after reranking, the paired difference, latency."""
    k = report.final_k
    header = ["Depth", "nDCG@10 hybrid", "nDCG@10 reranked", "ΔnDCG@10 [95% CI]", "W/T/L",
              f"Recall@{k} hybrid", f"Recall@{k} reranked", f"ΔRecall@{k} [95% CI]",
              "Retrieval p50 ms", "Added latency p50/p95 ms"]
    rows = [[str(p.depth), f"{p.retrieval['ndcg@10']:.3f}", f"{p.reranked['ndcg@10']:.3f}",
             _delta_cell(p.comparison), _wtl(p.comparison),
             f"{p.retrieval[f'recall@{k}']:.3f}", f"{p.reranked[f'recall@{k}']:.3f}",
             _delta_cell(p.recall_comparison), f"{p.retrieval_ms['p50']:.0f}",
             f"{p.rerank_ms['p50']:.0f} / {p.rerank_ms['p95']:.0f}"] for p in report.points]
    return _table(header, rows, markdown=markdown)


def sweep_sentence(report: SweepReport) -> str:
    """The advice: a recommended depth only where reranking beats none; else why not."""
    return report.advice.sentence


def sweep_header(report: SweepReport) -> str:
    blend = report.blend + (f" (reranker weight {report.blend_weight:g})" if report.blend == "linear" else "")
    model = f" ({_model_label(report.model)})" if report.model else ""
    return (f"{report.queries} queries · final_k {report.final_k} · reranker {report.reranker}{model} · "
            f"blend {blend} · wall time {report.wall_seconds:.0f} s")


def sweep_markdown(report: SweepReport, plot_name: str = "sweep.png") -> str:
    return "\n".join([
        f"# Depth sweep: {Path(report.data).name} ({report.split} split)",
        "",
        sweep_header(report),
        "",
        sweep_table(report, markdown=True),
        "",
        "Δ: reranked minus hybrid at the same depth, averaged over the queries, with a 95% paired bootstrap "
        "confidence interval; W/T/L: queries reranking won, tied and lost on nDCG@10.",
        "",
        *_own_note(report.own_document),
        sweep_sentence(report),
        "",
        f"![nDCG@10 and recall before and after reranking, the difference, and latency against depth]({plot_name})",
        "",
        "## Environment",
        "",
        *_env_lines(report.environment),
        "",
    ])


def sweep_series(report: SweepReport) -> dict[str, list[float]]:
    """The numbers the sweep plot draws, by name (each list follows ``depths``)."""
    k = report.final_k
    pts = report.points
    return {
        "depths": [p.depth for p in pts],
        "ndcg_hybrid": [p.retrieval["ndcg@10"] for p in pts],
        "ndcg_reranked": [p.reranked["ndcg@10"] for p in pts],
        "recall_hybrid": [p.retrieval[f"recall@{k}"] for p in pts],
        "recall_reranked": [p.reranked[f"recall@{k}"] for p in pts],
        "delta_ndcg": [p.comparison.mean_delta for p in pts],
        "delta_ndcg_low": [p.comparison.mean_delta if p.comparison.ci_low is None else p.comparison.ci_low
                           for p in pts],
        "delta_ndcg_high": [p.comparison.mean_delta if p.comparison.ci_high is None else p.comparison.ci_high
                            for p in pts],
        "rerank_ms_p50": [p.rerank_ms["p50"] for p in pts],
        "rerank_ms_p95": [p.rerank_ms["p95"] for p in pts],
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sweep_figure(report: SweepReport):
    """Four panels against depth: nDCG@10 and recall@k before and after reranking (axes from 0),
    the nDCG@10 difference with its 95% interval, and the latency reranking adds.

    Every line carries a label (``nDCG@10 hybrid (no rerank)``, ``nDCG@10 hybrid + <reranker>`` ...);
    the model is named in the title. Returns the matplotlib figure (close it when done).
    """
    plt = _pyplot()
    k = report.final_k
    s = sweep_series(report)
    depths = s["depths"]
    reranked = f"hybrid + {report.reranker}"
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    (a_ndcg, a_recall), (a_delta, a_ms) = axes
    for ax, key, label in ((a_ndcg, "ndcg", "nDCG@10"), (a_recall, "recall", f"Recall@{k}")):
        ax.plot(depths, s[f"{key}_hybrid"], "s--", label=f"{label} hybrid (no rerank)")
        ax.plot(depths, s[f"{key}_reranked"], "o-", label=f"{label} {reranked}")
        # the whole scale, so that a difference of a few queries looks as small as it is
        # (the headroom above 1 keeps the written differences inside the panel)
        ax.set_ylim(0.0, 1.12)
        ax.set_ylabel(label)
        ax.set_title(f"{label} against depth, before and after reranking")
        for d, before, after in zip(depths, s[f"{key}_hybrid"], s[f"{key}_reranked"]):
            ax.annotate(f"{after - before:+.3f}", (d, max(before, after)), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=8)
    low = [d - lo for d, lo in zip(s["delta_ndcg"], s["delta_ndcg_low"])]
    high = [hi - d for d, hi in zip(s["delta_ndcg"], s["delta_ndcg_high"])]
    a_delta.errorbar(depths, s["delta_ndcg"], yerr=[low, high], fmt="o-", capsize=4,
                     label="Δ nDCG@10 (reranked − hybrid), 95% CI")
    a_delta.axhline(0.0, color="grey", linestyle="--", label="no difference")
    a_delta.set_ylabel("Δ nDCG@10")
    a_delta.set_title(f"Difference per depth ({report.queries} queries, paired bootstrap)")
    a_ms.plot(depths, s["rerank_ms_p50"], "o-", label="p50")
    a_ms.plot(depths, s["rerank_ms_p95"], "^--", label="p95")
    a_ms.set_ylim(bottom=0)
    a_ms.set_ylabel("added latency per query (ms)")
    a_ms.set_title("Latency reranking adds")
    for ax in (a_ndcg, a_recall, a_delta, a_ms):
        ax.set_xlabel("retrieval depth (candidates reranked)")
        ax.set_xticks(depths)
        ax.grid(alpha=0.3)
        if report.recommended_depth is not None:
            ax.axvline(report.recommended_depth, color="grey", linestyle=":",
                       label=f"recommended depth {report.recommended_depth}")
        ax.legend(fontsize=8)
    model = f", model {_model_label(report.model)}" if report.model else ""
    fig.suptitle(f"{Path(report.data).name} {report.split}: {report.queries} queries · reranker "
                 f"{report.reranker}{model} · blend {report.blend}")
    return fig


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    return buf.getvalue()


def plot_sweep(report: SweepReport, path: Path) -> Path:
    """Write :func:`sweep_figure` as a PNG to ``path``."""
    path = Path(path)
    path.write_bytes(_png(sweep_figure(report)))
    return path


def sweep_html(report: SweepReport, plot_png: bytes | None = None) -> str:
    """The self-contained HTML report of a sweep; the per-query view is at the recommended depth
    (or the deepest one when none is recommended)."""
    k = report.final_k
    rows = [TableRow(f"depth {p.depth}", {"nDCG@10 hybrid": p.retrieval["ndcg@10"],
                                         "nDCG@10 reranked": p.reranked["ndcg@10"],
                                         f"Recall@{k} hybrid": p.retrieval[f"recall@{k}"],
                                         f"Recall@{k} reranked": p.reranked[f"recall@{k}"]},
                     p.comparison, {"Added latency p50/p95 ms": f"{p.rerank_ms['p50']:.0f} / {p.rerank_ms['p95']:.0f}"})
            for p in report.points]
    depth = report.recommended_depth if report.recommended_depth is not None else report.points[-1].depth
    sections = []
    if report.details is not None:
        sections = _sections(report.details, [(f"hybrid@{depth}", f"reranked@{depth}", f"hybrid at depth {depth}",
                                               f"hybrid + {report.reranker} at depth {depth}")])
    png = plot_png if plot_png is not None else _png(sweep_figure(report))
    return render_report(
        title=f"Depth sweep: {Path(report.data).name} ({report.split} split)", metric=PRIMARY_METRIC, rows=rows,
        baseline="hybrid at the same depth",
        plots=[Plot("nDCG@10 and recall before and after reranking, the difference with its 95% interval, "
                    "and added latency, against depth", png)],
        summary=[sweep_header(report), *([report.own_document["note"]] if report.own_document.get("note") else []),
                 sweep_sentence(report)],
        environment=report.environment, sections=sections)


def write_sweep(report: SweepReport, out: Path) -> list[Path]:
    """``results.json``, ``results.md``, ``sweep.png``, ``report.html``, TREC run files
    (``hybrid@<depth>.run``, ``reranked@<depth>.run``) and ``qrels.trec`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, qrels = _runs_of(report.details)
    (out / "results.json").write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    plot = plot_sweep(report, out / "sweep.png")
    (out / "results.md").write_text(_with_runs(sweep_markdown(report, plot.name), runs))
    (out / "report.html").write_text(sweep_html(report, plot.read_bytes()), encoding="utf-8")
    written = write_runs(out, runs, qrels) if runs else []
    return [out / "results.json", out / "results.md", plot, out / "report.html", *written]


# -- tune --------------------------------------------------------------------------------

def tune_env_lines(report: TuneReport) -> list[str]:
    """``export NAME=value`` lines that select the recommended setting."""
    return [f"export {k}={v}" for k, v in report.recommendation.env.items()]


def tune_header(report: TuneReport) -> str:
    how = (f"{report.folds}-fold cross-validation (each fold's choice measured on queries it was not chosen on)"
           if report.folds is not None else "chosen and measured on these queries")
    n_cells = len(report.result.cells)
    return (f"{report.queries} queries · metric {report.metric} · depths {', '.join(map(str, report.depths))} · "
            f"rerankers {', '.join(report.rerankers)} · blend none, rrf, linear (alpha "
            f"{', '.join(f'{a:g}' for a in report.alphas)}) · {n_cells} settings · {how}")


def tune_cost(report: TuneReport) -> str:
    """The cost sentence: one deep pass, then the whole grid from its scores."""
    t, dp = report.timings, report.deep_pass
    return (f"One deep rerank pass scored {dp['pairs']} (query, candidate) pairs ({dp['queries']} queries × up to "
            f"{dp['max_depth']} candidates × {len(report.rerankers)} reranker(s)) in {t['deep_pass_s']:.1f} s; "
            f"evaluating all {len(report.result.cells) + 1} settings from those scores"
            f"{' and the folds' if report.folds else ''} took {t['grid_s']:.1f} s "
            f"(retrieval {t['retrieval_s']:.1f} s, latency check {t['latency_s']:.1f} s, "
            f"wall {report.wall_seconds:.1f} s).")


def tune_latency(report: TuneReport) -> str:
    lat = report.latency
    measured = (f"measured {lat['p50']:.0f} ms p50 / {lat['p95']:.0f} ms p95 per query over {lat['queries']} queries"
                if lat["queries"] else "not measured (--latency-queries 0)")
    return (f"Latency {lat['setting']} adds: {measured}; the deep pass implies about "
            f"{lat['estimated_ms_p50']:.0f} ms p50 at depth {lat['depth']}.")


def tune_comparison(report: TuneReport) -> str:
    c = report.comparison
    where = "held out by the folds" if report.kfold is not None else "on the tuning queries"
    return (f"{report.chosen.label()} vs hybrid on {report.metric} ({where}): {c.setup_mean:.4f} vs "
            f"{c.baseline_mean:.4f}, {paired_phrase(c)}.")


def _top_cells(report: TuneReport, n: int = TOP_CELLS):
    return sorted(report.result.cells, key=lambda c: -c.mean)[:n]


def tune_table(report: TuneReport, *, markdown: bool = False) -> str:
    """Hybrid and the best settings by mean, each compared with hybrid on the tuning queries."""
    details = report.details
    header = ["Setting", report.metric, "Δ vs hybrid [95% CI]", "W/T/L"]
    rows = [["hybrid (no rerank)", f"{report.result.baseline.mean:.4f}", "—", "—"]]
    for cell in _top_cells(report):
        c = None
        if details is not None:
            g = details.grid
            c = paired_comparison(g.per_query(g.baseline), g.per_query(cell.setting), metric=report.metric)
        elif cell.setting == report.chosen:
            c = report.result.comparison
        rows.append([cell.setting.label(), f"{cell.mean:.4f}", _delta_cell(c), _wtl(c)])
    return _table(header, rows, markdown=markdown)


def tune_folds_table(report: TuneReport, *, markdown: bool = False) -> str:
    k = report.kfold
    if k is None:
        return ""
    header = ["Fold", "Queries", "Chosen on the other folds", "Its mean on them", "Its mean held out",
              "Hybrid held out"]
    rows = [[str(f.index + 1), str(len(f.held_out)), f.chosen.label(), f"{f.train_mean:.4f}",
             f"{f.held_out_mean:.4f}", f"{f.baseline_held_out_mean:.4f}"] for f in k.folds]
    return _table(header, rows, markdown=markdown)


def tune_markdown(report: TuneReport) -> str:
    rec = report.recommendation
    lines = [
        f"# Tuning: {Path(report.data).name} ({report.split} split)",
        "",
        tune_header(report),
        "",
        f"**Advice: {rec.sentence}.**",
        "",
        tune_comparison(report),
        "",
        tune_latency(report),
        "",
        "```sh",
        *tune_env_lines(report),
        "```",
        "",
        *_own_note(report.own_document),
        "## Best settings",
        "",
        tune_table(report, markdown=True),
        "",
        "Δ: the setting minus hybrid per query, averaged, with a 95% paired bootstrap interval on the queries "
        "the grid was chosen on (the best of many settings measured where it was chosen looks better than it "
        "is; the advice rests on the held-out folds where there are folds).",
        "",
    ]
    if report.kfold is not None:
        lines += ["## Folds", "", tune_folds_table(report, markdown=True), ""]
    if report.dropped_depths:
        lines += [f"Depths {', '.join(map(str, report.dropped_depths))} were left out: below the cut-off of "
                  f"{report.metric}.", ""]
    lines += ["## Cost", "", tune_cost(report), "", "## Environment", "", *_env_lines(report.environment), ""]
    return "\n".join(lines)


def tune_html(report: TuneReport) -> str:
    """The self-contained HTML report of a tuning run: the best settings, the plot, and hybrid vs
    the chosen setting per query."""
    rows = [TableRow("hybrid (no rerank)", {report.metric: report.result.baseline.mean})]
    details = report.details
    for cell in _top_cells(report):
        c = None
        if details is not None:
            g = details.grid
            c = paired_comparison(g.per_query(g.baseline), g.per_query(cell.setting), metric=report.metric)
        rows.append(TableRow(cell.setting.label(), {report.metric: cell.mean}, c))
    sections = []
    if details is not None:
        chosen, g = report.chosen, details.grid
        reranked = {q: apply_setting(details.candidates[q], details.scores[chosen.reranker][q], chosen,
                                     rank_constant=details.rank_constant) for q in g.qids}
        views = query_views(g.qids, details.texts, details.candidates, reranked, details.qrels,
                            g.per_query(g.baseline), g.per_query(chosen))
        sections = [QuerySection(chosen.label(), views, "hybrid")]
    env = "; ".join(tune_env_lines(report))
    return render_report(
        title=f"Tuning: {Path(report.data).name} ({report.split} split)", metric=report.metric, rows=rows,
        plots=[Plot(f"Mean {report.metric} against depth per blend and reranker; hybrid dashed",
                    plot_tune(report.result, _tune_models(report)))],
        summary=[tune_header(report), f"Advice: {report.recommendation.sentence}.", tune_comparison(report),
                 tune_latency(report), f"Settings: {env}", tune_cost(report),
                 *([report.own_document["note"]] if report.own_document.get("note") else [])],
        environment=report.environment, sections=sections)


def _tune_models(report: TuneReport) -> dict[str, str]:
    models = report.environment.get("reranker_models") or {}
    return {name: _model_label(str(m)) for name, m in dict(models).items() if m}


HELD_OUT_RUN = "held-out"


def tune_runs(report: TuneReport) -> dict[str, dict[str, dict[str, float]]]:
    """The run of every row of the tune table (hybrid, then the best settings), rebuilt from the
    deep pass's scores exactly as the grid ranked them; with folds also ``held-out``, each query
    ranked by its own fold's choice (its mean is the held-out figure). Empty without per-query
    details."""
    details = report.details
    if details is None:
        return {}
    g = details.grid

    def ranked(s, q: str) -> dict[str, float]:
        scores = None if s.is_baseline else details.scores[s.reranker][q]
        return doc_scores(apply_setting(details.candidates[q], scores, s, rank_constant=details.rank_constant))

    runs = {"hybrid": {q: ranked(g.baseline, q) for q in g.qids}}
    for cell in _top_cells(report):
        runs[cell.setting.label()] = {q: ranked(cell.setting, q) for q in g.qids}
    if report.kfold is not None:
        # the cross-validated estimate as one run: each query ranked by the setting its fold chose without it
        chosen = {q: fold.chosen for fold in report.kfold.folds for q in fold.held_out}
        runs[HELD_OUT_RUN] = {q: ranked(chosen[q], q) for q in g.qids}
    return runs


def write_tune(report: TuneReport, out: Path) -> list[Path]:
    """``results.json``, ``results.md``, ``report.html``, a TREC run file per row of the table and
    ``qrels.trec`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = tune_runs(report)
    (out / "results.json").write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    (out / "results.md").write_text(_with_runs(tune_markdown(report), runs))
    (out / "report.html").write_text(tune_html(report), encoding="utf-8")
    written = write_runs(out, runs, report.details.qrels) if runs and report.details is not None else []
    return [out / "results.json", out / "results.md", out / "report.html", *written]


__all__ = ["eval_table", "eval_markdown", "eval_html", "write_eval", "sweep_table",
           "sweep_sentence", "sweep_series", "sweep_figure", "plot_sweep", "sweep_html", "write_sweep",
           "tune_table", "tune_markdown", "tune_html", "write_tune", "tune_env_lines", "tune_runs"]
