"""A self-contained HTML report: metric table with paired statistics, plots, and a per-query view.

The page loads nothing from the network: CSS and JavaScript are inline and plots are
embedded as ``data:`` images. Every string that comes from data (queries, titles, doc
ids, setup names, captions) is HTML-escaped, and a Content-Security-Policy allows only
this file's own script and style (by hash), so an injected ``<script>`` or event handler
cannot run even if something slipped through.

Example:
    >>> page = render_report(title="SciFact", metric="ndcg@10",
    ...                      rows=[TableRow("hybrid", {"ndcg@10": 0.697})])
    >>> page.startswith("<!DOCTYPE html>") and "0.697" in page
    True
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from dataclasses import dataclass, field
from html import escape
from typing import Any, Mapping, Sequence

from ..errors import ValidationError
from ..ranking import collapse
from ..types import Hit
from .stats import PairedComparison

logger = logging.getLogger(__name__)

PLOT_TYPES = ("image/png", "image/svg+xml")


@dataclass(frozen=True)
class TableRow:
    """One setup in the metric table.

    Attributes:
        setup: Setup name (e.g. ``hybrid+cross-encoder``).
        metrics: Metric name -> mean value.
        comparison: This setup against the baseline (None for the baseline itself).
        notes: Column name -> text shown as is after the metrics (e.g. latency). Defaults to none.
    """

    setup: str
    metrics: Mapping[str, float]
    comparison: PairedComparison | None = None
    notes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plot:
    """An image to embed: PNG bytes or SVG text/bytes, shown with its caption."""

    caption: str
    data: bytes | str
    mime: str = "image/png"


@dataclass(frozen=True)
class QueryView:
    """One query seen both ways: the retrieval order against the reranked order.

    Attributes:
        qid: Query id.
        query: Query text.
        retrieval: Documents in the baseline's order (collapsed hits), best first.
        reranked: Documents in the setup's order, best first.
        relevant: The query's judgments, ``doc_id -> gain`` (gain > 0 is relevant).
        baseline_value: The baseline's metric value for this query.
        setup_value: The setup's metric value for this query.
    """

    qid: str
    query: str
    retrieval: Sequence[Hit]
    reranked: Sequence[Hit]
    relevant: Mapping[str, int] = field(default_factory=dict)
    baseline_value: float = 0.0
    setup_value: float = 0.0

    @property
    def delta(self) -> float:
        return self.setup_value - self.baseline_value


@dataclass(frozen=True)
class QuerySection:
    """One per-query comparison: the baseline's lists against one setup's, for every query.

    Attributes:
        setup: Name of the compared setup (heading of the right-hand lists).
        views: One per query, shown in this order and sortable by gain or loss.
        baseline: Name of the baseline (heading of the left-hand lists). Defaults to ``hybrid``.
    """

    setup: str
    views: Sequence[QueryView]
    baseline: str = "hybrid"


def query_views(
    qids: Sequence[str],
    queries: Mapping[str, str],
    retrieval: Mapping[str, Sequence[Hit]],
    reranked: Mapping[str, Sequence[Hit]],
    qrels: Mapping[str, Mapping[str, int]],
    baseline_values: Mapping[str, float],
    setup_values: Mapping[str, float],
) -> list[QueryView]:
    """Build :class:`QueryView` objects, collapsing each ranked chunk list to documents.

    Args:
        qids: Queries to show, in this order.
        queries: ``query_id -> text``.
        retrieval: ``query_id ->`` the baseline's ranked hits (chunks or documents).
        reranked: ``query_id ->`` the setup's ranked hits (e.g. from
            :func:`es_rerank.evaluate.tune.apply_setting`).
        qrels: Judgments.
        baseline_values: Per-query metric of the baseline (e.g. ``Grid.per_query``).
        setup_values: Per-query metric of the setup.

    Raises:
        ValidationError: A query id missing from one of the mappings (named).
    """
    views = []
    for qid in qids:
        for name, source in (("queries", queries), ("retrieval", retrieval), ("reranked", reranked),
                             ("baseline_values", baseline_values), ("setup_values", setup_values)):
            if qid not in source:
                raise ValidationError(f"query {qid!r} is missing from {name}")
        views.append(QueryView(qid, queries[qid], tuple(collapse(retrieval[qid])), tuple(collapse(reranked[qid])),
                               dict(qrels.get(qid, {})), float(baseline_values[qid]), float(setup_values[qid])))
    return views


_CSS = """
:root { --fg: #1d2127; --muted: #5b6470; --line: #d8dde3; --gain: #11703a; --loss: #b3261e; --rel: #fff3c4; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 24px; max-width: 1200px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 18px; margin: 28px 0 8px; }
p.summary { margin: 4px 0; }
table.metrics { border-collapse: collapse; margin: 8px 0; }
table.metrics th, table.metrics td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: right; }
table.metrics th:first-child, table.metrics td:first-child { text-align: left; }
table.metrics thead th { background: #f3f5f7; }
.gain { color: var(--gain); } .loss { color: var(--loss); } .tie { color: var(--muted); }
figure { margin: 12px 0; } figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; }
.controls { margin: 8px 0 12px; display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
.controls button { font: inherit; padding: 4px 10px; border: 1px solid var(--line); border-radius: 4px;
                   background: #f8f9fa; cursor: pointer; }
.controls button[aria-pressed="true"] { background: #1d2127; color: #fff; }
ol.queries { list-style: none; padding: 0; margin: 0; }
li.q { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; margin: 0 0 10px; }
li.q header { display: flex; gap: 12px; align-items: baseline; flex-wrap: wrap; }
.qid { color: var(--muted); font-family: ui-monospace, monospace; }
.qtext { font-weight: 600; }
.delta { margin-left: auto; font-variant-numeric: tabular-nums; }
.lists { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; margin-top: 6px; }
.lists h3 { font-size: 13px; margin: 4px 0; color: var(--muted); font-weight: 600; }
.lists ol { margin: 0; padding-left: 28px; }
.lists li { padding: 1px 4px; }
.lists li.rel { background: var(--rel); }
.doc { font-family: ui-monospace, monospace; font-size: 12px; color: var(--muted); }
.badge { font-size: 11px; font-weight: 600; color: #6b4e00; margin-left: 4px; }
.missing { color: var(--muted); font-size: 13px; margin-top: 4px; }
dl.env { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; color: var(--muted); }
dl.env dt { font-weight: 600; } dl.env dd { margin: 0; }
""".strip()

# Reorders each section's query list in place; keys come from data-* attributes written by Python.
_JS = """
(function () {
  document.querySelectorAll("section.per-query").forEach(function (section) {
    var list = section.querySelector("ol.queries");
    if (!list) { return; }
    var buttons = section.querySelectorAll("button[data-sort]");
    function sortBy(key) {
      var items = Array.prototype.slice.call(list.children);
      items.sort(function (a, b) {
        var da = parseFloat(a.dataset.delta), db = parseFloat(b.dataset.delta);
        var ia = parseInt(a.dataset.index, 10), ib = parseInt(b.dataset.index, 10);
        if (key === "gain" && da !== db) { return db - da; }
        if (key === "loss" && da !== db) { return da - db; }
        return ia - ib;
      });
      items.forEach(function (item) { list.appendChild(item); });
      buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.sort === key)); });
      list.dataset.sorted = key;
    }
    buttons.forEach(function (b) { b.addEventListener("click", function () { sortBy(b.dataset.sort); }); });
  });
})();
""".strip()


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _e(value: Any) -> str:
    """HTML-escape any value (quotes too, so it is safe in attributes)."""
    return escape(str(value), quote=True)


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "—" if value is None else format(value, fmt)


def _delta_class(delta: float) -> str:
    return "gain" if delta >= 1e-12 else "loss" if delta <= -1e-12 else "tie"


def _table(rows: Sequence[TableRow], metric: str, baseline: str) -> str:
    names: list[str] = []
    for row in rows:
        names += [m for m in row.metrics if m not in names]
    notes: list[str] = []
    for row in rows:
        notes += [n for n in row.notes if n not in notes]
    with_stats = any(r.comparison is not None for r in rows)
    head = ["Setup", *names]
    if with_stats:
        head += [f"Δ {metric} vs {baseline}", "95% CI of Δ", "wins / ties / losses", "CI excludes 0"]
    head += notes
    out = ['<table class="metrics">', "<thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead>", "<tbody>"]
    for row in rows:
        cells = [f"<td>{_e(row.setup)}</td>"]
        cells += [f"<td>{_e(_num(row.metrics.get(m)))}</td>" for m in names]
        c = row.comparison
        if with_stats and c is None:
            cells += ["<td>—</td>"] * 4
        elif with_stats and c is not None:
            ci = ("—" if c.ci_low is None or c.ci_high is None
                  else f"{c.ci_low:+.4f} to {c.ci_high:+.4f}")
            verdict = "yes (better)" if c.better else "yes (worse)" if c.excludes_zero else "no"
            cells += [f'<td class="{_delta_class(c.mean_delta)}">{_e(format(c.mean_delta, "+.4f"))}</td>',
                      f"<td>{_e(ci)}</td>", f"<td>{c.wins} / {c.ties} / {c.losses}</td>", f"<td>{_e(verdict)}</td>"]
        cells += [f"<td>{_e(row.notes.get(n, '—'))}</td>" for n in notes]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def _plot(plot: Plot) -> str:
    if plot.mime not in PLOT_TYPES:
        raise ValidationError(f"plot mime type must be one of {', '.join(PLOT_TYPES)}, got {plot.mime!r}")
    raw = plot.data.encode("utf-8") if isinstance(plot.data, str) else bytes(plot.data)
    # an <img> never runs scripts, even those inside an SVG
    src = f"data:{plot.mime};base64,{base64.b64encode(raw).decode('ascii')}"
    return (f'<figure><img src="{src}" alt="{_e(plot.caption)}">'
            f"<figcaption>{_e(plot.caption)}</figcaption></figure>")


def _doc_list(hits: Sequence[Hit], relevant: Mapping[str, int], limit: int) -> str:
    items = []
    for h in hits[:limit]:
        gain = relevant.get(h.doc_id, 0)
        badge = f'<span class="badge">relevant (gain {gain})</span>' if gain > 0 else ""
        cls = ' class="rel"' if gain > 0 else ""
        items.append(f'<li{cls} data-doc="{_e(h.doc_id)}"><span class="doc">{_e(h.doc_id)}</span> '
                     f'<span class="title">{_e(h.title)}</span>{badge}</li>')
    return "<ol>" + "".join(items) + "</ol>"


def _query(view: QueryView, index: int, *, baseline: str, setup: str, metric: str, limit: int) -> str:
    delta = view.delta
    shown = {h.doc_id for h in view.retrieval[:limit]} | {h.doc_id for h in view.reranked[:limit]}
    missing = [d for d, g in view.relevant.items() if g > 0 and d not in shown]
    missing_html = (f'<div class="missing">Judged relevant, not in either top {limit}: '
                    f"{_e(', '.join(missing))}</div>" if missing else "")
    return (
        f'<li class="q" data-index="{index}" data-delta="{_e(repr(float(delta)))}" data-qid="{_e(view.qid)}">'
        f'<header><span class="qid">{_e(view.qid)}</span><span class="qtext">{_e(view.query)}</span>'
        f'<span class="delta {_delta_class(delta)}">{_e(metric)} {view.baseline_value:.3f} → '
        f"{view.setup_value:.3f} ({_e(format(delta, '+.3f'))})</span></header>"
        f'<div class="lists"><div><h3>{_e(baseline)}</h3>{_doc_list(view.retrieval, view.relevant, limit)}</div>'
        f'<div><h3>{_e(setup)}</h3>{_doc_list(view.reranked, view.relevant, limit)}</div></div>'
        f"{missing_html}</li>"
    )


def _section(section: QuerySection, *, metric: str, limit: int) -> str:
    views = section.views
    gains = sum(1 for v in views if v.delta >= 1e-12)
    losses = sum(1 for v in views if v.delta <= -1e-12)
    return "\n".join([
        '<section class="per-query">',
        f"<h2>Per query: {_e(section.baseline)} vs {_e(section.setup)}</h2>",
        (f'<p class="summary">{len(views)} queries: {gains} gain, {len(views) - gains - losses} unchanged, '
         f"{losses} lose on {_e(metric)}. Highlighted documents are judged relevant.</p>"),
        ('<div class="controls">Sort: '
         '<button type="button" data-sort="gain" aria-pressed="false">largest gain first</button>'
         '<button type="button" data-sort="loss" aria-pressed="false">largest loss first</button>'
         '<button type="button" data-sort="order" aria-pressed="true">query order</button></div>'),
        '<ol class="queries" data-sorted="order">',
        *(_query(v, i, baseline=section.baseline, setup=section.setup, metric=metric, limit=limit)
          for i, v in enumerate(views)),
        "</ol>",
        "</section>",
    ])


def render_report(
    *,
    title: str,
    metric: str,
    rows: Sequence[TableRow],
    queries: Sequence[QueryView] = (),
    plots: Sequence[Plot] = (),
    summary: Sequence[str] = (),
    baseline: str = "hybrid",
    setup: str = "reranked",
    environment: Mapping[str, Any] | None = None,
    top: int = 10,
    sections: Sequence[QuerySection] = (),
) -> str:
    """Render the report as one self-contained HTML page.

    Args:
        title: Page title and heading.
        metric: The metric the paired statistics and per-query values are about.
        rows: The metric table, one row per setup.
        queries: Per-query views (baseline order vs setup order), shown in this order
            and sortable by gain or loss: the first section. Defaults to none.
        plots: Images to embed. Defaults to none.
        summary: Sentences shown under the title (e.g. the recommendation). Defaults to none.
        baseline: Name of the baseline in headings. Defaults to ``hybrid``.
        setup: Name of the compared setup of ``queries``. Defaults to ``reranked``.
        environment: Where and with what the numbers were produced. Defaults to none.
        top: Documents shown per list. Defaults to 10.
        sections: Further per-query comparisons (one per reranker, say), each sortable on
            its own. Defaults to none.

    Returns:
        The HTML text (UTF-8, no external resources).

    Raises:
        ValidationError: No rows, ``top`` < 1, or a plot of another type than PNG or SVG.
    """
    if not rows:
        raise ValidationError("the report needs at least one table row")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValidationError(f"top must be an integer >= 1, got {top!r}")
    csp = (f"default-src 'none'; img-src data:; style-src '{_sha256(_CSS)}'; "
           f"script-src '{_sha256(_JS)}'; base-uri 'none'; form-action 'none'")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{_e(title)}</h1>",
        *(f'<p class="summary">{_e(s)}</p>' for s in summary),
        "<h2>Metrics</h2>",
        _table(rows, metric, baseline),
    ]
    if plots:
        parts += ["<h2>Plots</h2>", *(_plot(p) for p in plots)]
    all_sections = ([QuerySection(setup, queries, baseline)] if queries else []) + list(sections)
    parts += [_section(x, metric=metric, limit=top) for x in all_sections if x.views]
    if environment:
        parts += ["<h2>Environment</h2>", '<dl class="env">',
                  *(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in environment.items()), "</dl>"]
    parts += [f"<script>{_JS}</script>", "</body></html>", ""]
    return "\n".join(parts)


def plot_tune(result: Any, models: Mapping[str, str] | None = None) -> bytes:
    """PNG of a :class:`~es_rerank.evaluate.tune.TuneResult`: mean metric against depth per blend.

    One panel per reranker (titled with its model when ``models`` names it); a line per
    blend (``none``, ``rrf``, and ``linear`` at its best alpha per depth); the hybrid
    baseline as a dashed line. The metric axis spans 0 to 1.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rerankers = list(result.rerankers)
    fig, axes = plt.subplots(1, len(rerankers), figsize=(5 * len(rerankers), 3.6), squeeze=False,
                             constrained_layout=True)
    for ax, name in zip(axes[0], rerankers):
        cells = [c for c in result.cells if c.setting.reranker == name]
        depths = sorted({c.setting.depth for c in cells})
        for method, style in (("none", "o-"), ("rrf", "s-")):
            ax.plot(depths, [next(c.mean for c in cells if c.setting.depth == d and c.setting.blend == method)
                             for d in depths], style, label=f"blend {method}")
        best_linear = [max(c.mean for c in cells if c.setting.depth == d and c.setting.blend == "linear")
                       for d in depths]
        ax.plot(depths, best_linear, "^-", label="blend linear (best alpha)")
        ax.axhline(result.baseline.mean, color="grey", linestyle="--", label="hybrid (no rerank)")
        ax.set_xlabel("depth (candidates reranked)")
        ax.set_ylabel(result.metric)
        ax.set_xticks(depths)
        ax.set_ylim(0.0, 1.05)
        model = (models or {}).get(name)
        ax.set_title(name if not model else f"{name} ({model})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
