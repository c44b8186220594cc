"""`es-rerank eval` and `sweep` end to end on a slice of SciFact, against the real cluster."""

import json
import re

import pytest
from click.testing import CliRunner

from es_rerank.cli import cli

from conftest import SCIFACT

pytestmark = pytest.mark.es

N_QUERIES, N_EXTRA_DOCS = 12, 250


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory):
    """A dozen judged test queries, their relevant documents and a few hundred others."""
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT} (see ../shared/data/README.md)")
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
        if info.name.startswith("es-rerank-eval-scifact-slice"):
            delete(engine, info.name)


@pytest.fixture
def run(cli_env):
    def _run(*args):
        return CliRunner().invoke(cli, list(args), env=cli_env, catch_exceptions=False)

    return _run


def _numbers(text):
    return {float(x) for x in re.findall(r"(?<![\w.])\d+\.\d{3}(?![\d])", text)}


def test_eval_end_to_end(run, scifact_slice, tmp_path):
    out = tmp_path / "eval"
    r = run("eval", "--data", str(scifact_slice), "--depth", "20", "--final-k", "5", "--out", str(out), "--no-progress")
    assert r.exit_code == 0, r.output
    assert "the hybrid top 20 for" in r.stdout and "ranked into the top 5" in r.stdout
    data = json.loads((out / "results.json").read_text())
    assert data["queries"] == N_QUERIES
    assert [row["setup"] for row in data["rows"]] == ["bm25", "knn", "hybrid", "hybrid+cross-encoder"]
    # every quality number printed in the table is in the JSON
    json_numbers = {round(v, 3) for row in data["rows"] for v in row["metrics"].values()}
    table = r.stdout.split("\n\n")[1]
    assert _numbers(table) <= json_numbers
    hybrid = next(row for row in data["rows"] if row["setup"] == "hybrid")["metrics"]
    reranked = next(row for row in data["rows"] if row["setup"] == "hybrid+cross-encoder")["metrics"]
    assert reranked["recall@20"] == pytest.approx(hybrid["recall@20"])  # reranking reorders, never adds
    assert 0 <= hybrid["recall@5"] <= hybrid["recall@20"] <= 1
    assert "## Gap analysis" in (out / "results.md").read_text()

    # the same data and settings give the same quality numbers (the index is reused now)
    r2 = run("eval", "--data", str(scifact_slice), "--depth", "20", "--final-k", "5", "--out", str(tmp_path / "again"),
             "--no-progress")
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert [row["metrics"] for row in again["rows"]] == [row["metrics"] for row in data["rows"]]
    assert "built earlier from the same corpus and settings" in r2.output and "indexed " not in r2.output


def test_sweep_end_to_end(run, scifact_slice, tmp_path):
    out = tmp_path / "sweep"
    r = run("sweep", "--data", str(scifact_slice), "--depths", "5,10,20", "--final-k", "5", "--out", str(out),
            "--no-progress")
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    assert [p["depth"] for p in data["points"]] == [5, 10, 20]
    assert data["recommended_depth"] in (5, 10, 20)
    assert f"Recommended depth: {data['recommended_depth']}" in r.stdout
    json_numbers = {round(v, 3) for p in data["points"] for v in [*p["retrieval"].values(), *p["reranked"].values()]}
    table = r.stdout.split("\n\n")[0]
    assert _numbers(table) <= json_numbers
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image

    assert matplotlib.image.imread(out / "sweep.png").shape[0] > 100


def test_eval_rejects_missing_split(run, scifact_slice):
    r = CliRunner().invoke(cli, ["eval", "--data", str(scifact_slice), "--split", "dev"])
    assert r.exit_code == 1 and "qrels/dev.tsv: missing" in r.output


def test_eval_compares_all_three_rerankers(run, scifact_slice, tmp_path, llm_url, cli_env):
    env = dict(cli_env, ES_RERANK_LLM_BASE_URL=llm_url, ES_RERANK_LLM_MODEL="gemma3-270m",
               ES_RERANK_LLM_API="completions")
    out = tmp_path / "three"
    r = CliRunner().invoke(cli, ["eval", "--data", str(scifact_slice), "--depth", "10", "--final-k", "5",
                                 "--max-queries", "3", "--reranker", "cross-encoder", "--reranker", "llm",
                                 "--reranker", "listwise", "--out", str(out), "--no-progress"],
                           env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = {row["setup"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert {"hybrid+cross-encoder", "hybrid+llm", "hybrid+listwise"} <= set(rows)
    assert rows["hybrid+cross-encoder"]["tokens_per_query"] is None
    for name in ("hybrid+llm", "hybrid+listwise"):
        assert rows[name]["tokens_per_query"] > 0 and rows[name]["rerank_ms"]["p50"] > 0
        assert rows[name]["metrics"]["recall@10"] == pytest.approx(rows["hybrid"]["metrics"]["recall@10"])
    assert "LLM tokens/query" in r.stdout
