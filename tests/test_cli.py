"""The CLI through click's CliRunner, against the real cluster and real files."""

import json

import pytest
from click.testing import CliRunner

from es_rerank.cli import cli

from conftest import SAMPLE

pytestmark = pytest.mark.es


@pytest.fixture
def run(cli_env):
    runner = CliRunner()

    def _run(*args, input=None):
        return runner.invoke(cli, list(args), env=cli_env, input=input, catch_exceptions=False)

    return _run


def test_help_is_fast_and_lists_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for cmd in ("cluster", "index", "query"):
        assert cmd in result.output


def test_index_then_query(run, es, cli_env):
    r = run("index", str(SAMPLE), "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["documents_read"] == report["documents_indexed"] == 32 and report["documents_rejected"] == 0
    assert es.count(index=cli_env["ES_RERANK_INDEX"])["count"] == report["chunks_indexed"]

    r = run("query", "what happens to my data if I close my account", "--depth", "20", "--final-k", "3")
    assert r.exit_code == 0, r.output
    assert r.output.count("\n1. [") == 1 and "3. [" in r.output and "4. [" not in r.output
    assert "reranked by cross-encoder" in r.output

    r = run("query", "close my account", "--depth", "10", "--final-k", "2", "--json")
    data = json.loads(r.stdout)
    assert len(data["hits"]) == 2 and data["reranked"] is True
    assert {"retrieval_score", "retrieval_rank", "rerank_score", "rerank_rank"} <= set(data["hits"][0])
    assert set(data["timings"]) == {"embed_ms", "retrieval_ms", "es_took_ms", "rerank_ms", "total_ms"}

    r = run("query", "close my account", "--depth", "10", "--final-k", "2", "--explain")
    assert "retrieval rank" in r.output and "-> rerank rank 1" in r.output

    r = run("query", "invoice", "--final-k", "3", "--filter", "category=billing", "--json")
    assert {h["metadata"]["category"] for h in json.loads(r.stdout)["hits"]} == {"billing"}


def test_broken_jsonl_reports_lines_and_keeps_valid_docs(run, es, cli_env, tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_text("\n".join([
        json.dumps({"id": "ok1", "text": "first valid document"}),
        "{broken",
        json.dumps({"id": "ok2", "text": "second valid document"}),
        json.dumps({"id": "no-text"}),
    ]) + "\n")
    r = run("index", str(p), "--no-progress")
    assert r.exit_code == 1
    assert f"rejected {p}:2: invalid JSON" in r.output
    assert f"rejected {p}:4 id=no-text: missing 'text'" in r.output
    assert "4 documents read, 2 indexed" in r.output
    assert es.count(index=cli_env["ES_RERANK_INDEX"])["count"] == 2
    r = run("index", str(p), "--no-progress", "--skip-bad")
    assert r.exit_code == 0 and "2 rejected" in r.output


def test_query_errors_are_one_line(run, cli_env):
    r = run("query", "anything")
    assert r.exit_code == 1 and "does not exist" in r.output and "Traceback" not in r.output


def test_validation_errors_are_named(run):
    run("index", str(SAMPLE), "--no-progress")
    r = run("query", "x", "--depth", "5", "--final-k", "8")
    assert r.exit_code == 1 and "final_k must be <= depth, got 8 > 5" in r.output


def test_unreachable_cluster_fails_fast(cli_env):
    env = dict(cli_env, ES_URL="http://127.0.0.1:9", ES_REQUEST_TIMEOUT="2")
    r = CliRunner().invoke(cli, ["query", "anything"], env=env)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "cannot reach Elasticsearch at http://127.0.0.1:9" in r.output or "connection failed" in r.output


def test_export_openvino_int8_calibrates_on_retrieved_candidates(run, sample_index, cli_env, tmp_path):
    """export-onnx --openvino --quantize int8: pairs come from the real index; the result serves queries."""
    out = tmp_path / "ov"
    r = run("export-onnx", cli_env["ES_RERANK_RERANKER_MODEL"], "--out", str(out), "--openvino", "--quantize", "int8")
    assert r.exit_code != 0 and "needs --calibration-queries" in r.output
    queries = tmp_path / "queries.txt"
    queries.write_text("close my account\nrefund a yearly plan\nrecover deleted files\nshare a folder\n")
    r = run("export-onnx", cli_env["ES_RERANK_RERANKER_MODEL"], "--out", str(out), "--openvino", "--quantize", "int8",
            "--calibration-queries", str(queries), "--calibration-depth", "5")
    assert r.exit_code == 0, r.output
    assert "calibrating on 20 pairs" in r.output
    assert (out / "openvino_model_int8.xml").is_file() and (out / "openvino_model_int8.bin").is_file()
    env = {**cli_env, "ES_RERANK_RERANKER_MODEL": str(out), "ES_RERANK_RERANKER_BACKEND": "openvino-int8"}
    r = CliRunner().invoke(cli, ["query", "close my account", "--depth", "5", "--final-k", "2", "--json"], env=env,
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert len(data["hits"]) == 2 and data["reranked"] is True
    assert data["hits"][0]["rerank_score"] >= data["hits"][1]["rerank_score"]
