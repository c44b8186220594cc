"""`es-rerank eval`, `sweep` and `tune` end to end against the real cluster and real models.

Data: a slice of SciFact (real queries, judgments and abstracts), a small ArguAna-style
collection made from SciFact abstracts (queries that are themselves documents), and a
constructed collection where the best tuning cell is known in advance.

Kept small because the machine is shared: every reranked (query, candidate) pair costs
real model time, so the module reranks a few hundred pairs in all.
"""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from es_rerank.cli import cli

from conftest import SCIFACT
from report_browser import open_report, query_deltas, query_order

pytestmark = pytest.mark.es

N_QUERIES, N_EXTRA_DOCS = 8, 40
EVAL_FOLDERS = ("scifact-slice", "arguana-like", "tune-known")


def _write_beir(root, corpus, queries, qrels, split="test"):
    """Write a BEIR folder: corpus and queries as lists of dicts, qrels as (qid, doc id, grade)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in qrels))
    return root


def _scifact():
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT} (see ../shared/data/README.md)")


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory):
    """A few judged test queries, their relevant documents and a few dozen others."""
    _scifact()
    root = tmp_path_factory.mktemp("scifact-slice")
    lines = (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()
    qrels = [l.split("\t") for l in lines[1:] if l.strip()]
    qids = list(dict.fromkeys(q for q, _, _ in qrels))[:N_QUERIES]
    keep = [r for r in qrels if r[0] in qids]
    wanted = {d for _, d, _ in keep}
    corpus = []
    with open(SCIFACT / "corpus.jsonl") as fh:
        for line in fh:
            doc_id = json.loads(line)["_id"]
            if doc_id in wanted or len(corpus) < N_EXTRA_DOCS:
                corpus.append(line)
    (root / "corpus.jsonl").write_text("".join(corpus))
    queries = [l for l in (SCIFACT / "queries.jsonl").read_text().splitlines() if json.loads(l)["_id"] in qids]
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in keep))
    return root


@pytest.fixture(scope="module", autouse=True)
def drop_eval_indices(engine):
    """Evaluation indices are es-rerank's own, named after the collection: remove this module's."""
    yield
    from es_rerank.lifecycle import delete, list_owned

    for info in list_owned(engine):
        if info.name.startswith(tuple(f"es-rerank-eval-{f}" for f in EVAL_FOLDERS)):
            delete(engine, info.name)


@pytest.fixture
def run(cli_env):
    # pairs cut at 128 tokens: the same model and code path at a third of the cost on shared cores
    def _run(*args, env=None):
        env = dict(cli_env if env is None else env, ES_RERANK_MAX_LENGTH="128")
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    return _run


def _numbers(text):
    return {float(x) for x in re.findall(r"(?<![\w.])\d+\.\d{3}(?![\d])", text)}


def _rescored(out, row):
    """nDCG@10 of a written run file against the written qrels, by ranx reading the TREC files."""
    from ranx import Qrels, Run, evaluate

    return evaluate(Qrels.from_file(str(out / "qrels.trec"), kind="trec"),
                    Run.from_file(str(out / f"{row}.run"), kind="trec"), "ndcg@10", make_comparable=True)


def _comparison_numbers(comparison):
    return {abs(round(comparison[k], 3)) for k in ("mean_delta", "ci_low", "ci_high") if comparison[k] is not None}


# -- eval ------------------------------------------------------------------------------------

def test_eval_end_to_end(run, scifact_slice, tmp_path):
    out = tmp_path / "eval"
    r = run("eval", "--data", str(scifact_slice), "--depth", "10", "--final-k", "5", "--out", str(out), "--no-progress")
    assert r.exit_code == 0, r.output
    assert "the hybrid top 10 for" in r.stdout and "ranked into the top 5" in r.stdout
    data = json.loads((out / "results.json").read_text())
    assert data["queries"] == N_QUERIES and data["blend"] == "none"
    assert [row["setup"] for row in data["rows"]] == ["bm25", "knn", "hybrid", "hybrid+cross-encoder"]
    rows = {row["setup"]: row for row in data["rows"]}
    # every row but hybrid is compared with hybrid, query by query, with a seeded interval
    assert rows["hybrid"]["comparisons"] == {}
    for setup in ("bm25", "knn", "hybrid+cross-encoder"):
        for metric in ("recall@5", "ndcg@10"):
            c = rows[setup]["comparisons"][metric]
            assert len(c["deltas"]) == N_QUERIES and c["wins"] + c["ties"] + c["losses"] == N_QUERIES
            assert c["seed"] == 0 and c["ci_low"] <= c["mean_delta"] <= c["ci_high"]
            assert c["mean_delta"] == pytest.approx(rows[setup]["metrics"][metric] - rows["hybrid"]["metrics"][metric])
    # every number printed in the table is in the JSON (metrics, differences, interval bounds)
    json_numbers = {round(v, 3) for row in data["rows"] for v in row["metrics"].values()}
    json_numbers |= {n for row in data["rows"] for c in row["comparisons"].values() for n in _comparison_numbers(c)}
    table = r.stdout.split("\n\n")[1]
    assert "ΔnDCG@10 vs hybrid [95% CI]" in table
    assert _numbers(table) <= json_numbers
    hybrid, reranked = rows["hybrid"]["metrics"], rows["hybrid+cross-encoder"]["metrics"]
    assert reranked["recall@10"] == pytest.approx(hybrid["recall@10"])  # reranking reorders, never adds
    assert 0 <= hybrid["recall@5"] <= hybrid["recall@10"] <= 1
    c = rows["hybrid+cross-encoder"]["comparisons"]["recall@5"]
    assert f"95% CI {c['ci_low']:+.3f} to {c['ci_high']:+.3f}" in r.stdout  # the gap sentence carries it
    md = (out / "results.md").read_text()
    assert "## Gap analysis" in md and "95% CI" in md and "| hybrid+cross-encoder |" in md
    assert (out / "report.html").is_file()
    assert "wall time" in r.stdout and "(indexing" in r.stdout
    # every row's run file, re-scored by ranx from the TREC files alone, gives the printed nDCG@10
    assert "## Run files" in md
    for setup, row in rows.items():
        assert f"{_rescored(out, setup):.4f}" == f"{row['metrics']['ndcg@10']:.4f}", setup
        assert f"| {setup} |" in md and f"{row['metrics']['ndcg@10']:.3f}" in md

    # the same data and settings give the same numbers (the index is reused; no reranker this time)
    r2 = run("eval", "--data", str(scifact_slice), "--depth", "10", "--final-k", "5", "--reranker", "none",
             "--out", str(tmp_path / "again"), "--no-progress")
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert [row["metrics"] for row in again["rows"]] == [rows[s]["metrics"] for s in ("bm25", "knn", "hybrid")]
    assert "built earlier from the same corpus and settings" in r2.output and "indexed " not in r2.output

    # the report of the real command, in a real browser
    with open_report(out / "report.html") as (page, errors, requests):
        assert page.locator("section.per-query").count() == 1
        assert page.locator("li.q").count() == N_QUERIES
        assert page.locator("li.rel").count() >= 1  # judged-relevant documents are marked
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        deltas = dict(zip(query_order(page), query_deltas(page)))
        assert deltas == pytest.approx(rows["hybrid+cross-encoder"]["comparisons"]["ndcg@10"]["deltas"])
        page.click("button[data-sort=gain]")
        assert query_deltas(page) == sorted(deltas.values(), reverse=True)
        page.click("button[data-sort=loss]")
        assert query_deltas(page) == sorted(deltas.values())
        assert "hybrid+cross-encoder" in page.inner_text("table.metrics")
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []


def test_eval_at_depth_five_passes_the_blend_to_the_rerank_step(run, scifact_slice, tmp_path):
    # a linear blend with reranker weight 0 is the retrieval order: the reranked row must equal hybrid.
    # depth 5 < 10, with no --final-k (it follows the depth down)
    out = tmp_path / "d5"
    r = run("eval", "--data", str(scifact_slice), "--depth", "5", "--max-queries", "4", "--blend", "linear",
            "--blend-weight", "0", "--out", str(out), "--no-progress")
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    assert (data["depth"], data["final_k"], data["blend"], data["blend_weight"]) == (5, 5, "linear", 0.0)
    rows = {row["setup"]: row for row in data["rows"]}
    assert rows["hybrid+cross-encoder"]["metrics"] == rows["hybrid"]["metrics"]
    assert rows["hybrid+cross-encoder"]["comparisons"]["ndcg@10"]["ties"] == 4
    assert set(rows["hybrid"]["metrics"]) >= {"recall@1", "recall@3", "recall@5", "ndcg@10", "mrr@10"}
    assert "blend linear (reranker weight 0)" in r.stdout


def test_eval_rejects_missing_split(run, scifact_slice):
    r = CliRunner().invoke(cli, ["eval", "--data", str(scifact_slice), "--split", "dev"])
    assert r.exit_code == 1 and "qrels/dev.tsv: missing" in r.output


# -- queries that are documents (ArguAna-style) -------------------------------------------

@pytest.fixture(scope="module")
def arguana_like(tmp_path_factory):
    """Each query is a corpus document (same id, same words); its judged answer is another
    document: the rest of the same abstract. The query's own document always ranks first."""
    _scifact()
    docs = []
    with open(SCIFACT / "corpus.jsonl") as fh:
        for line in fh:
            doc = json.loads(line)
            if len(doc["text"].split()) > 120:
                docs.append(doc)
            if len(docs) == 20:
                break
    corpus, queries, qrels = [], [], []
    for i, doc in enumerate(docs):
        words = doc["text"].split()
        if i < 10:
            arg = f"arg-{doc['_id']}"
            text = " ".join(words[:60])
            corpus += [{"_id": arg, "title": doc["title"], "text": text},
                       {"_id": f"counter-{doc['_id']}", "title": "", "text": " ".join(words[60:120])}]
            queries.append({"_id": arg, "text": f"{doc['title']} {text}"})
            qrels.append((arg, f"counter-{doc['_id']}", 1))
        else:
            corpus.append(dict(doc, text=" ".join(words[:100])))
    return _write_beir(tmp_path_factory.mktemp("arguana-like"), corpus, queries, qrels)


def test_own_document_is_dropped_where_queries_are_documents(run, arguana_like, tmp_path):
    kept = run("eval", "--data", str(arguana_like), "--depth", "10", "--reranker", "none", "--keep-self",
               "--out", str(tmp_path / "kept"), "--no-progress")
    assert kept.exit_code == 0, kept.output
    kept_rows = json.loads((tmp_path / "kept" / "results.json").read_text())["rows"]
    # with its own document in the ranking, no query finds its answer first
    assert [row["metrics"]["recall@1"] for row in kept_rows] == [0.0, 0.0, 0.0]
    assert "kept in its ranking (--keep-self)" in kept.stdout

    dropped = run("eval", "--data", str(arguana_like), "--depth", "10", "--reranker", "none",
                  "--out", str(tmp_path / "dropped"), "--no-progress")
    assert dropped.exit_code == 0, dropped.output
    data = json.loads((tmp_path / "dropped" / "results.json").read_text())
    own = data["own_document"]
    assert own["exclude"] and own["automatic"] and own["queries_in_corpus"] == own["queries"] == 10
    assert own["found"] == 10  # every query met its own document among the candidates
    assert "Each query's own document was dropped from its ranking before scoring (BEIR convention" in dropped.stdout
    assert "10 of 10 queries had their own document among the candidates" in dropped.stdout
    rows = {row["setup"]: row["metrics"] for row in data["rows"]}
    assert rows["bm25"]["recall@1"] >= 0.8 and rows["hybrid"]["recall@1"] >= 0.5
    assert "own document was dropped" in (tmp_path / "dropped" / "results.md").read_text()


# -- sweep -----------------------------------------------------------------------------------

def test_sweep_end_to_end(run, scifact_slice, tmp_path):
    out = tmp_path / "sweep"
    r = run("sweep", "--data", str(scifact_slice), "--depths", "5,10", "--final-k", "5", "--max-queries", "5",
            "--out", str(out), "--no-progress")
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    assert [p["depth"] for p in data["points"]] == [5, 10]
    assert data["model"] and data["advice"]["sentence"] in r.stdout
    if data["recommended_depth"] is None:
        assert "No depth beats not reranking" in r.stdout and "Keep hybrid (--reranker none)" in r.stdout
        assert "With only 5 queries, treat every interval as rough." in r.stdout
    else:
        assert f"Recommended depth: {data['recommended_depth']}" in r.stdout
    table = r.stdout.split("\n\n")[0]
    assert "nDCG@10 hybrid" in table and "nDCG@10 reranked" in table
    json_numbers = {round(v, 3) for p in data["points"] for v in [*p["retrieval"].values(), *p["reranked"].values()]}
    json_numbers |= {n for p in data["points"] for k in ("comparison", "recall_comparison")
                     for n in _comparison_numbers(p[k])}
    assert _numbers(table) <= json_numbers
    for p in data["points"]:
        line = next(x for x in table.splitlines() if x.startswith(f"{p['depth']} "))
        assert f"{p['retrieval']['ndcg@10']:.3f}" in line and f"{p['reranked']['ndcg@10']:.3f}" in line
    for p in data["points"]:  # the run files re-score to the printed numbers
        depth = p["depth"]
        assert f"{_rescored(out, f'hybrid@{depth}'):.4f}" == f"{p['retrieval']['ndcg@10']:.4f}"
        assert f"{_rescored(out, f'reranked@{depth}'):.4f}" == f"{p['reranked']['ndcg@10']:.4f}"
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    html = (out / "report.html").read_text()
    assert html.count('<li class="q"') == 5 and "data:image/png;base64," in html


# -- tune ------------------------------------------------------------------------------------

def test_tune_cli_without_a_dev_split_cross_validates(run, scifact_slice, tmp_path):
    out = tmp_path / "tune"
    r = run("tune", "--data", str(scifact_slice), "--depths", "10,15", "--folds", "3", "--max-queries", "6",
            "--latency-queries", "2", "--out", str(out), "--no-progress")
    assert r.exit_code == 0, r.output
    assert "no qrels/dev.tsv: 3-fold cross-validation over the test split" in r.output
    data = json.loads((out / "results.json").read_text())
    assert data["split"] == "test" and data["folds"] == 3 and data["queries"] == 6
    assert data["depths"] == [10, 15] and data["max_depth"] == 15
    cells = data["result"]["cells"]
    assert len(cells) == 2 * 11  # 2 depths x (none, rrf, linear 0.1 .. 0.9)
    assert data["result"]["best"]["mean"] == max(c["mean"] for c in cells)
    # one deep pass: every candidate at depth 15 scored once
    assert 6 * 10 <= data["deep_pass"]["pairs"] <= 6 * 15 and data["timings"]["deep_pass_s"] > 0
    assert data["timings"]["grid_s"] > 0 and data["latency"]["queries"] == 2
    rec, held_out = data["recommendation"], data["kfold"]["comparison"]
    assert rec["helps"] == held_out["better"]
    assert len(held_out["deltas"]) == 6
    assert "\n".join(f"export {k}={v}" for k, v in rec["env"].items()) in r.stdout
    if not rec["helps"]:
        assert "reranking does not help on this data; keep hybrid (options: --reranker none)" in r.stdout
    assert re.search(r"One deep rerank pass scored \d+ \(query, candidate\) pairs .* in \d+\.\d s; evaluating all "
                     r"23 settings from those scores and the folds took \d+\.\d s", r.stdout)
    md = (out / "results.md").read_text()
    assert "## Folds" in md and "export ES_RERANK_RERANKER=" in md
    # the table's rows (hybrid and the best settings) re-score from their run files to the printed means
    assert f"{_rescored(out, 'hybrid'):.4f}" == f"{data['result']['baseline']['mean']:.4f}"
    best = data["result"]["best"]
    assert f"{_rescored(out, best['label'].replace(' ', '_')):.4f}" == f"{best['mean']:.4f}"
    assert f"| {best['label']} | {best['mean']:.4f} |" in md
    html = (out / "report.html").read_text()
    assert html.count('<li class="q"') == 6


def test_tune_rejects_bad_metric_and_depths(run, scifact_slice):
    r = run("tune", "--data", str(scifact_slice), "--metric", "mrr@10")
    assert r.exit_code == 2 and "tune metric must be ndcg@K or recall@K" in r.output
    r = run("tune", "--data", str(scifact_slice), "--depths", "5,8")
    assert r.exit_code == 2 and "no depth of [5, 8] is >= 10" in r.output


class _Oracle:
    """A reranker that knows the answers: it scores texts holding the answer phrase 1, others 0.

    Not a stand-in for a model: the point here is the tuning, whose best cell is known only
    when the scores are. It counts the pairs it scores, to check that tuning scores each once.
    """

    def __init__(self, name, phrase, sign=1.0):
        self.name, self.phrase, self.sign, self.pairs = name, phrase, sign, 0

    def score(self, query, texts):
        self.pairs += len(texts)
        return [self.sign * float(self.phrase in t) for t in texts]


@pytest.fixture(scope="module")
def tune_known(tmp_path_factory):
    """Twelve topics of seven documents; the decoys repeat the query's words, the one relevant
    document says them once and holds the answer phrase, so hybrid ranks it below first."""
    rng = np.random.default_rng(3)
    fillers = ("river mountain harbour valley meadow forest desert island glacier canyon prairie lagoon "
               "orchard quarry vineyard estuary plateau marsh tundra savanna").split()
    corpus, queries, qrels = [], [], []
    topics = ["copper wiring", "solar panels", "bread yeast", "violin strings", "coral reefs", "tax returns",
              "bicycle gears", "glass lenses", "cheese aging", "tide tables", "wool dyeing", "clock springs"]
    for t, topic in enumerate(topics):
        qid = f"t{t:02d}"
        queries.append({"_id": qid, "text": f"how do {topic} work"})
        for j in range(7):
            doc_id = f"{qid}-d{j}"
            noise = " ".join(rng.choice(fillers, size=12))
            if j == 0:
                text = f"A note on {topic}. {noise}. The decisive answer: it depends on care and use."
                qrels.append((qid, doc_id, 1))
            else:
                text = f"{topic} {topic} how {topic} work, {topic} explained. {noise}."
            corpus.append({"_id": doc_id, "title": f"{topic} {j}", "text": text})
    return _write_beir(tmp_path_factory.mktemp("tune-known"), corpus, queries, qrels, split="dev")


def test_tune_picks_the_known_best_cell(tune_known, engine, embedder, settings):
    from es_rerank.client import Searcher
    from es_rerank.evaluate.data import load_beir
    from es_rerank.evaluate.prepare import prepare_index
    from es_rerank.evaluate.runner import run_tune
    from es_rerank.evaluate.tune import Setting

    data = load_beir(tune_known, "dev")
    prepared = prepare_index(engine, data, settings, embedder)
    oracle, contrarian = _Oracle("oracle", "decisive answer"), _Oracle("contrarian", "decisive answer", -1.0)
    with Searcher(settings.replace(index=prepared.name), engine=engine, embedder=embedder) as searcher:
        # the premise: hybrid has the answer within its top 10, but not always first
        ranks = []
        for qid, text in data.queries.items():
            ids = [h.doc_id for h in searcher.retrieve(text, depth=20).hits]
            ranks.append(ids.index(f"{qid}-d0") + 1)
        assert max(ranks) <= 10 and sum(r > 1 for r in ranks) >= 6, ranks
        report = run_tune(searcher, data, rerankers={"oracle": oracle, "contrarian": contrarian},
                          depths=(10, 20), latency_queries=0)
    assert report.max_depth == 20 and report.depths == (10, 20)
    # each (query, candidate) pair was scored once, at depth 20 (plus the 5-candidate warm-up)
    pairs = sum(len(c) for c in report.details.candidates.values())
    assert report.deep_pass["pairs"] == 2 * pairs and oracle.pairs == contrarian.pairs == pairs + 5
    # the oracle puts the answer first: nDCG@10 1.0; ties go to the smaller depth and to blend none
    assert report.chosen == Setting("oracle", 10, "none") and report.result.best.mean == pytest.approx(1.0)
    assert report.result.baseline.mean == pytest.approx(np.mean([1 / np.log2(r + 1) for r in ranks]))
    c = report.comparison
    assert c.better and (c.wins, c.losses) == (sum(r > 1 for r in ranks), 0)
    assert report.recommendation.helps
    assert report.recommendation.env == {"ES_RERANK_RERANKER": "oracle", "ES_RERANK_DEPTH": "10",
                                         "ES_RERANK_BLEND": "none"}
    means = {cell.setting: cell.mean for cell in report.result.cells}
    assert max(m for s, m in means.items() if s.reranker == "contrarian") < report.result.baseline.mean
    assert report.timings["grid_s"] > 0 and report.latency["queries"] == 0


# -- several rerankers (LLM server) ---------------------------------------------------------

def test_eval_compares_all_three_rerankers(run, scifact_slice, tmp_path, llm_url, cli_env):
    env = dict(cli_env, ES_RERANK_LLM_BASE_URL=llm_url, ES_RERANK_LLM_MODEL="gemma3-270m",
               ES_RERANK_LLM_API="completions")
    out = tmp_path / "three"
    # one query at depth 3: the tiny model on two shared cores takes seconds per candidate
    r = run("eval", "--data", str(scifact_slice), "--depth", "3", "--max-queries", "1",
            "--reranker", "cross-encoder", "--reranker", "llm", "--reranker", "listwise", "--out", str(out),
            "--no-progress", env=env)
    assert r.exit_code == 0, r.output
    rows = {row["setup"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert {"hybrid+cross-encoder", "hybrid+llm", "hybrid+listwise"} <= set(rows)
    assert rows["hybrid+cross-encoder"]["tokens_per_query"] is None
    for name in ("hybrid+llm", "hybrid+listwise"):
        assert rows[name]["tokens_per_query"] > 0 and rows[name]["rerank_ms"]["p50"] > 0
        assert rows[name]["metrics"]["recall@3"] == pytest.approx(rows["hybrid"]["metrics"]["recall@3"])
        assert rows[name]["comparisons"]["ndcg@10"]["queries"] == 1
    assert "LLM tokens/query" in r.stdout
    html = (out / "report.html").read_text()
    assert html.count('<section class="per-query">') == 3  # one per reranker
