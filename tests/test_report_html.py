"""The HTML report: escaping and self-containment as text, then a real report in headless Chromium.

The browser test drives Debian's chromium (``apt-get install chromium``) with Playwright
for Python (``pip install playwright``; no browser download needed). It is skipped, with
the reason, where either is missing.
"""

import base64
import hashlib
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from es_rerank.errors import ValidationError
from es_rerank.evaluate.html import Plot, TableRow, plot_tune, query_views, render_report
from es_rerank.evaluate.stats import paired_comparison
from es_rerank.evaluate.tune import apply_setting, evaluate_grid, select
from es_rerank.types import Hit

from report_browser import open_report, query_order

# Each payload sets window.__pwned if it ever runs.
PAYLOADS = {
    "query": "<script>window.__pwned = 'query'</script>",
    "title": "<img src=x onerror=\"window.__pwned='title'\">",
    "doc": "\"><svg onload=\"window.__pwned='doc'\">",
    "setup": "</td><script>window.__pwned='setup'</script>",
    "caption": "\"><script>window.__pwned='caption'</script>",
    "env": "<iframe src=\"javascript:window.top.__pwned='env'\"></iframe>",
    "page": "</title><script>window.__pwned='page'</script>",
    "summary": "<b onmouseover=\"window.__pwned='summary'\">hover</b>",
}
EVIL_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
            '<script>window.top.__pwned="svg"</script><rect width="40" height="20" fill="red"/></svg>')


def _hit(doc, rank, title=None, chunk=0):
    return Hit(f"{doc}#{chunk}", doc, chunk, f"Title of {doc}" if title is None else title, "text", {},
               1 / (60 + rank), rank)


def build_report():
    """A real report from the tune pipeline: 12 queries, a reranker that helps some and hurts others."""
    rng = np.random.default_rng(11)
    cands, scores, qrels, texts = {}, {"cross-encoder": {}}, {}, {}
    for q in range(12):
        qid = f"q{q:02d}"
        docs = [f"{qid}-d{r}" for r in range(1, 21)]
        if q == 0:
            docs[2] = PAYLOADS["doc"]
        hits = [_hit(d, r, PAYLOADS["title"] if (q == 0 and r == 1) else None) for r, d in enumerate(docs, start=1)]
        cands[qid] = hits
        relevant = int(rng.integers(0, 12))
        qrels[qid] = {docs[relevant]: 1 + q % 2}
        s = rng.normal(size=20)
        s[relevant] += 2.5 if q % 3 else -2.5  # two thirds helped, one third hurt
        scores["cross-encoder"][qid] = [float(v) for v in s]
        texts[qid] = PAYLOADS["query"] if q == 0 else f"question number {q} about topic {q * 7}"
    g = evaluate_grid(cands, scores, qrels, depths=(10, 20))
    result = select(g, resamples=2000)
    best = result.best.setting
    reranked = {q: apply_setting(cands[q], scores["cross-encoder"][q], best) for q in g.qids}
    views = query_views(g.qids, texts, cands, reranked, qrels, g.per_query(g.baseline), g.per_query(best))
    recall = evaluate_grid(cands, scores, qrels, metric="recall@10", depths=(10, 20))
    rows = [
        TableRow("hybrid", {"ndcg@10": result.baseline.mean, "recall@10": float(recall.row(recall.baseline).mean())}),
        TableRow(f"hybrid+cross-encoder ({best.label()})",
                 {"ndcg@10": result.best.mean, "recall@10": float(recall.row(best).mean())}, result.comparison),
        TableRow(PAYLOADS["setup"], {"ndcg@10": 0.5}, paired_comparison({"a": 0.1}, {"a": 0.2})),
    ]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(["gain", "loss"], [result.comparison.wins, result.comparison.losses])
    svg = io.StringIO()
    fig.savefig(svg, format="svg")
    plt.close(fig)
    plots = [Plot("nDCG@10 against depth", plot_tune(result)),
             Plot("wins and losses", svg.getvalue(), "image/svg+xml"),
             Plot(PAYLOADS["caption"], EVIL_SVG, "image/svg+xml")]
    html = render_report(
        title="SciFact-like tuning " + PAYLOADS["page"], metric="ndcg@10", rows=rows, queries=views, plots=plots,
        summary=[result.recommendation.sentence, PAYLOADS["summary"]], setup=best.label(),
        environment={"cpu": "test", "note": PAYLOADS["env"]},
    )
    return html, views


@pytest.fixture(scope="module")
def report():
    return build_report()


def test_nothing_from_data_is_left_unescaped(report):
    html, _ = report
    for payload in [*PAYLOADS.values()]:
        assert payload not in html
    # exactly one script element and one style element: ours
    assert len(re.findall(r"<script[\s>]", html, flags=re.I)) == 1
    assert len(re.findall(r"<style[\s>]", html, flags=re.I)) == 1
    assert "&lt;script&gt;window.__pwned = &#x27;query&#x27;&lt;/script&gt;" in html
    # parsed as a browser would: only our own tags, and no event-handler attribute anywhere
    tags, attributes = set(), set()

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.add(tag)
            attributes.update(name for name, _ in attrs)

    Collect().feed(html)
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "table", "thead",
                    "tbody", "tr", "th", "td", "figure", "img", "figcaption", "div", "button", "ol", "li",
                    "header", "span", "dl", "dt", "dd", "script", "section"}, tags
    assert not [a for a in attributes if a.startswith("on")]


def test_report_is_self_contained(report):
    html, _ = report
    # no resource is fetched from anywhere: every src is a data: URI and no link/href loads anything
    assert all(src.startswith("data:") for src in re.findall(r'\bsrc="([^"]*)"', html))
    assert "<link" not in html and "@import" not in html and "url(" not in html
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src &#x27;none&#x27;" in csp
    # the policy's hashes are those of the inline script and style
    for tag in ("script", "style"):
        body = re.search(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S).group(1)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"sha256-{digest}" in csp


def test_render_report_validation():
    with pytest.raises(ValidationError, match="at least one table row"):
        render_report(title="t", metric="ndcg@10", rows=[])
    with pytest.raises(ValidationError, match="top must be an integer >= 1, got 0"):
        render_report(title="t", metric="ndcg@10", rows=[TableRow("a", {})], top=0)
    with pytest.raises(ValidationError, match="got 'text/html'"):
        render_report(title="t", metric="m", rows=[TableRow("a", {})], plots=[Plot("p", b"x", "text/html")])
    with pytest.raises(ValidationError, match="query 'q2' is missing from reranked"):
        query_views(["q2"], {"q2": "x"}, {"q2": []}, {}, {}, {"q2": 0.0}, {"q2": 0.0})


def test_query_views_collapse_chunks_to_documents():
    hits = [_hit("a", 1, chunk=1), _hit("b", 2), _hit("a", 3, chunk=0)]
    (view,) = query_views(["q"], {"q": "x"}, {"q": hits}, {"q": hits[::-1]}, {"q": {"a": 1}}, {"q": 0.5}, {"q": 1.0})
    assert [h.doc_id for h in view.retrieval] == ["a", "b"] and [h.doc_id for h in view.reranked] == ["a", "b"]
    assert view.delta == 0.5


# --- headless Chromium ----------------------------------------------------------------

def test_report_in_headless_chromium(report, tmp_path):
    from PIL import Image

    html, views = report
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    with open_report(path) as (page, errors, requests):
        # nothing injected ran, and the payloads are shown as text
        assert page.evaluate("window.__pwned") is None
        body = page.inner_text("body")
        for key, payload in PAYLOADS.items():
            assert payload in body, key
        assert page.title().endswith(PAYLOADS["page"])
        assert page.locator("li.q").count() == len(views) == 12
        assert page.locator("li.rel").count() >= 1  # judged-relevant documents are marked
        # every plot decoded (the PNG from matplotlib, the SVGs)
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")

        deltas = {v.qid: v.delta for v in views}
        initial = query_order(page)
        assert initial == [v.qid for v in views]
        page.click("button[data-sort=gain]")
        by_gain = query_order(page)
        assert by_gain != initial
        assert by_gain == [v.qid for v in sorted(views, key=lambda v: -v.delta)]  # stable: ties keep order
        assert [deltas[q] for q in by_gain] == sorted(deltas.values(), reverse=True)
        page.click("button[data-sort=loss]")
        assert [deltas[q] for q in query_order(page)] == sorted(deltas.values())
        assert page.get_attribute("button[data-sort=loss]", "aria-pressed") == "true"
        page.click("button[data-sort=order]")
        assert query_order(page) == initial

        shot = page.screenshot(full_page=True)
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=float)
    assert pixels.shape[0] > 900 and pixels.var() > 100.0, f"blank-looking screenshot, variance {pixels.var():.1f}"
    (tmp_path / "report.png").write_bytes(shot)


def test_sections_sort_independently_in_chromium(tmp_path):
    from es_rerank.evaluate.html import QuerySection, QueryView

    def views(sign):
        return [QueryView(f"q{i}", f"query {i}", (_hit(f"d{i}", 1),), (_hit(f"d{i}", 1),), {f"d{i}": 1},
                          0.5, 0.5 + sign * (i - 2) / 10) for i in range(5)]

    html = render_report(title="two sections", metric="ndcg@10", rows=[TableRow("hybrid", {"ndcg@10": 0.5})],
                         sections=[QuerySection("first", views(1)), QuerySection("second", views(-1))])
    path = tmp_path / "two.html"
    path.write_text(html, encoding="utf-8")
    with open_report(path) as (page, errors, _):
        assert page.locator("section.per-query").count() == 2
        page.locator("section.per-query").nth(1).locator("button[data-sort=gain]").click()
        assert query_order(page, 0) == ["q0", "q1", "q2", "q3", "q4"]  # untouched
        assert query_order(page, 1) == ["q0", "q1", "q2", "q3", "q4"]  # second's gains fall with i
        page.locator("section.per-query").nth(0).locator("button[data-sort=gain]").click()
        assert query_order(page, 0) == ["q4", "q3", "q2", "q1", "q0"]
        page.locator("section.per-query").nth(1).locator("button[data-sort=loss]").click()
        assert query_order(page, 1) == ["q4", "q3", "q2", "q1", "q0"]
        assert query_order(page, 0) == ["q4", "q3", "q2", "q1", "q0"]
    assert errors == []
