"""The CLI through click's CliRunner, against a real node of each engine and real files."""

import json

import pytest
from click.testing import CliRunner

from es_rerank.cli import cli

from conftest import SAMPLE

pytestmark = [pytest.mark.es, pytest.mark.both_engines]


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


def test_index_then_query(run, node, cli_env):
    r = run("index", str(SAMPLE), "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["documents_read"] == report["documents_indexed"] == 32 and report["documents_rejected"] == 0
    assert node.count(cli_env["ES_RERANK_INDEX"]) == report["chunks_indexed"]

    r = run("query", "what happens to my data if I close my account", "--depth", "20", "--final-k", "3")
    assert r.exit_code == 0, r.output
    assert r.output.count("\n1. [") == 1 and "3. [" in r.output and "4. [" not in r.output
    assert "reranked by cross-encoder" in r.output

    r = run("query", "close my account", "--depth", "10", "--final-k", "2", "--json")
    data = json.loads(r.stdout)
    assert len(data["hits"]) == 2 and data["reranked"] is True
    assert {"retrieval_score", "retrieval_rank", "rerank_score", "rerank_rank"} <= set(data["hits"][0])
    assert set(data["timings"]) == {"embed_ms", "retrieval_ms", "es_took_ms", "rerank_ms", "total_ms", "model_load_ms",
                                    "command_ms"}

    r = run("query", "close my account", "--depth", "10", "--final-k", "2", "--explain")
    assert "retrieval rank" in r.output and "-> rerank rank 1" in r.output

    r = run("query", "invoice", "--final-k", "3", "--filter", "category=billing", "--json")
    assert {h["metadata"]["category"] for h in json.loads(r.stdout)["hits"]} == {"billing"}


def test_progress_in_a_log_is_plain_lines_after_the_models_load(run, cli_env):
    """stderr that is not a terminal gets one line per step with the totals, no carriage returns."""
    r = run("index", str(SAMPLE))
    assert r.exit_code == 0, r.output
    err = r.stderr
    assert err.index("loading models: embedder") < err.index("models loaded in") < err.index("indexing: "), err
    assert "indexing: 32/32 docs (100%)" in err and "\r" not in err, err
    r = run("query", "refund", "--final-k", "1", "--depth", "1")
    assert r.exit_code == 0 and "1 result from 1 candidate chunk · " in r.output, r.output


def test_broken_jsonl_reports_lines_and_keeps_valid_docs(run, node, cli_env, tmp_path):
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
    # a build with rejections is not switched in unless they are accepted: the name was not created
    assert "but did not switch" in r.output and "2 of 4 records were rejected" in r.output, r.output
    assert not node.exists(cli_env["ES_RERANK_INDEX"])
    r = run("index", str(p), "--no-progress", "--skip-bad")
    assert r.exit_code == 0 and "2 rejected" in r.output
    assert node.count(cli_env["ES_RERANK_INDEX"]) == 2


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
    assert "cannot reach Elasticsearch/OpenSearch at http://127.0.0.1:9: is it running?" in r.output


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


def test_shared_options_work_after_the_subcommand(run, cli_env):
    """`es-rerank query "x" --index docs` works as well as `es-rerank --index docs query "x"`."""
    env_without_index = {k: v for k, v in cli_env.items() if k != "ES_RERANK_INDEX"}
    index = cli_env["ES_RERANK_INDEX"]
    r = CliRunner().invoke(cli, ["index", str(SAMPLE), "--index", index, "--no-progress"], env=env_without_index)
    assert r.exit_code == 0, r.output
    after = CliRunner().invoke(cli, ["query", "close my account", "--index", index, "--final-k", "2", "--json"],
                               env=env_without_index)
    before = CliRunner().invoke(cli, ["--index", index, "query", "close my account", "--final-k", "2", "--json"],
                                env=env_without_index)
    assert after.exit_code == before.exit_code == 0, after.output + before.output
    assert [h["chunk_id"] for h in json.loads(after.stdout)["hits"]] == \
        [h["chunk_id"] for h in json.loads(before.stdout)["hits"]]


@pytest.mark.parametrize("args,message", [
    (["query", "x", "--depth", "5", "--final-k", "10"], "final_k must be <= depth, got 10 > 5"),
    (["query", "   "], "query is empty"),
    (["query", "x", "--filter", "nonsense"], "expected key=value"),
])
def test_argument_errors_come_before_any_model_loads(cli_env, args, message):
    """Simple mistakes are reported at once: no model is loaded (the log says when one is)."""
    r = CliRunner().invoke(cli, ["-v", *args], env=cli_env)
    assert r.exit_code != 0 and message in r.output
    assert "loading embedder" not in r.output and "loading cross-encoder" not in r.output


def test_models_load_is_logged_and_timed_apart(run, cli_env):
    """The positive control of the test above: a real query logs its model loads."""
    run("index", str(SAMPLE), "--no-progress")
    r = run("-v", "query", "close my account", "--final-k", "2")
    assert r.exit_code == 0 and "loading embedder" in r.output and "loading cross-encoder" in r.output
    assert "ms loading models" in r.output


def test_filters_exact_title_range_and_unknown_fields(run, cli_env, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps(d) for d in [
        {"id": "a", "title": "Refund for a double charge", "text": "We refund double charges.", "year": 2019,
         "category": "billing"},
        {"id": "b", "title": "Refund policy", "text": "Refunds take five days.", "year": 2021, "category": "billing"},
        {"id": "c", "title": "Reset your password", "text": "Use the reset link.", "year": 2023,
         "category": "account"},
    ]) + "\n")
    assert run("index", str(docs), "--no-progress").exit_code == 0
    r = run("query", "refund", "--depth", "3", "--final-k", "3", "--json", "--filter",
            "title=Refund for a double charge")
    assert r.exit_code == 0, r.output
    assert [h["doc_id"] for h in json.loads(r.stdout)["hits"]] == ["a"]
    r = run("query", "refund", "--depth", "3", "--final-k", "3", "--json", "--filter", "year>=2020")
    assert sorted(h["doc_id"] for h in json.loads(r.stdout)["hits"]) == ["b", "c"]
    r = run("query", "refund", "--depth", "3", "--final-k", "3", "--json", "--filter", "year>2019",
            "--filter", "year<2023")
    assert [h["doc_id"] for h in json.loads(r.stdout)["hits"]] == ["b"]
    r = CliRunner().invoke(cli, ["query", "refund", "--filter", "categry=billing"], env=cli_env)
    assert r.exit_code == 1 and "unknown filter field 'categry'; the index has:" in r.output
    assert "category" in r.output


def test_fusion_server_without_support_says_what_to_use(run, engine):
    """Where the cluster cannot fuse (the local Maven nodes: no rank-rrf module or license on
    Elasticsearch, no neural-search plugin on OpenSearch) ``--fusion server`` says why and what
    to use instead; where it can, the query just works."""
    run("index", str(SAMPLE), "--no-progress")
    r = run("query", "refund", "--fusion", "server")
    if engine.server_fusion():
        assert r.exit_code == 0, r.output
        return
    why = {"elasticsearch": "server-side RRF needs", "opensearch": "needs the neural-search plugin"}[engine.name]
    assert r.exit_code == 1 and why in r.output and "--fusion client" in r.output, r.output
    assert "parsing_exception" not in r.output


def test_indices_config_delete_and_delete_docs(run, node, cli_env):
    index = cli_env["ES_RERANK_INDEX"]
    run("index", str(SAMPLE), "--no-progress")
    r = run("indices", "--json")
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows[index]["documents"] == 32 and rows[index]["chunks"] >= 32 and rows[index]["dims"] == 384
    r = run("config")
    line = next(x for x in r.output.splitlines() if x.startswith("ES_RERANK_INDEX "))
    assert line.split() == ["ES_RERANK_INDEX", index, "(environment)"]
    assert "ES_RERANK_DEVICE" in r.output and "ES_RERANK_CLUSTER_HEAP" in r.output and "(not set)" not in \
        next(x for x in r.output.splitlines() if x.startswith("ES_RERANK_DEVICE "))
    r = run("delete-docs", "--id", "bill-cancel", "--id", "no-such-doc")
    assert r.exit_code == 0 and "bill-cancel: 1 chunk deleted" in r.output and "no-such-doc: not found" in r.output
    assert node.count(index, {"term": {"doc_id": "bill-cancel"}}) == 0
    assert node.count(index, {"term": {"doc_id": "bill-refund"}}) >= 1  # only the named document went
    (concrete,) = node.alias_targets(index)
    r = run("delete", index, input="n\n")
    assert r.exit_code == 1 and node.alias_targets(index) == [concrete]
    r = run("delete", index, "--yes")
    assert r.exit_code == 0 and not node.exists(index) and not node.exists(concrete)


def test_version_names_client_server_and_models(cli_env, engine):
    r = CliRunner().invoke(cli, ["--version"], env=cli_env)
    assert r.exit_code == 0
    assert "es-rerank 0.2.0" in r.output and "elasticsearch" in r.output and "onnxruntime" in r.output
    assert f"server: {engine.name} {engine.info()['version']} at {cli_env['ES_URL']}" in r.output
    assert "embedder: " in r.output and "reranker: " in r.output


def test_index_with_the_cluster_down_is_one_clear_line(cli_env):
    env = dict(cli_env, ES_URL="http://127.0.0.1:9", ES_REQUEST_TIMEOUT="2")
    r = CliRunner().invoke(cli, ["index", str(SAMPLE), "--no-progress"], env=env)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "cannot reach Elasticsearch/OpenSearch at http://127.0.0.1:9: is it running?" in r.output


def test_terminal_control_sequences_never_reach_the_terminal(run, cli_env, tmp_path):
    """A title that sets the window title and writes the clipboard (OSC 0 / OSC 52) prints inert."""
    hostile = tmp_path / "hostile.jsonl"
    title = "Refunds \x1b]0;pwned\x07 \x1b]52;c;ZWNobyBoaQ==\x07 \x9b31m red \u202eevil"
    hostile.write_text(json.dumps({"id": "bad\x1b[2Jid", "title": title, "text": "refund policy \x1b[31m text"}) + "\n")
    r = run("index", str(hostile), "--no-progress")
    assert r.exit_code == 0, r.output
    for args in (["query", "refund", "--final-k", "1", "--explain"], ["query", "refund", "--final-k", "1", "--json"],
                 ["indices"]):
        out = run(*args).output
        assert args[0] == "indices" or "refund" in out.lower()
        assert not any(ch in out for ch in ("\x1b", "\x07", "\x9b", "\u202e")), args


def test_shards_replicas_and_hnsw_are_set_and_recorded(run, node, cli_env):
    """Index settings for larger corpora: shards, replicas (applied after the build) and the HNSW
    parameters reach the index and its marker."""
    r = run("index", str(SAMPLE), "--no-progress", "--shards", "2", "--replicas", "0")
    assert r.exit_code == 0, r.output
    (concrete,) = node.alias_targets(cli_env["ES_RERANK_INDEX"])
    settings = node.index_settings(concrete)
    assert settings["number_of_shards"] == "2" and settings["number_of_replicas"] == "0", settings
    assert settings.get("auto_expand_replicas") in (None, "false"), settings
    mark = node.meta(concrete)["es_rerank"]
    assert (mark["shards"], mark["replicas"], mark["hnsw_m"], mark["hnsw_ef_construction"]) == (2, 0, 16, 100)
    r = run("index", str(SAMPLE), "--no-progress", "--shards", "0")
    assert r.exit_code != 0 and "shards must be >= 1, got 0" in r.output, r.output


def test_pipeline_text_shows_the_tuned_comparison_once():
    """`pipeline show`: the tuned metric's comparison is printed once, the other metrics after it."""
    from es_rerank import pipelines
    from es_rerank.cli import _pipeline_text

    ndcg = {"metric": "ndcg@10", "setup_mean": 0.7657, "baseline_mean": 0.7117, "mean_delta": 0.054,
            "ci_low": 0.039, "ci_high": 0.069, "wins": 185, "ties": 551, "losses": 73}
    recall = {**ndcg, "metric": "recall@10", "setup_mean": 0.8623, "baseline_mean": 0.8356}
    evidence = {"questions": {"queries": 809, "data": "scifact", "split": "train", "fingerprint": "sha256:f5"},
                "tuned_for": "ndcg@10", "tuned": ndcg, "metrics": {"ndcg@10": dict(ndcg), "recall@10": recall}}
    lines = _pipeline_text(pipelines.make(reranker="cross-encoder", model="m", depth=30, blend="linear",
                                          blend_weight=0.7, evidence=evidence, how="tune"))
    assert sum(line.strip().startswith("ndcg@10") for line in lines) == 1, lines
    assert sum(line.strip().startswith("recall@10") for line in lines) == 1, lines
    held_out = {**ndcg, "setup_mean": 0.74}  # cross-validated: the tuned comparison differs, both shown
    lines = _pipeline_text(pipelines.make(reranker="cross-encoder", model="m", depth=30, evidence={
        **evidence, "tuned": held_out}, how="tune"))
    assert sum(line.strip().startswith("ndcg@10") for line in lines) == 2, lines


def test_plain_progress_lines_name_their_unit_in_the_plural_and_stay_quiet_when_nothing_ran(capsys):
    """Lines for a log (not a terminal): 'queries', not 'querys'; a reused index (0 done) prints nothing."""
    from es_rerank.cli import _LineProgress

    idle = _LineProgress("indexing corpus", "doc")
    idle.close()
    assert capsys.readouterr().err == ""

    bar = _LineProgress("retrieving candidates", "query", total=4)
    bar.update(4)
    bar.close()
    err = capsys.readouterr().err
    assert err.startswith("retrieving candidates: 4/4 queries (100%), ") and "queries/s" in err, err
    assert err.count("\n") == 1, err  # the last line is not printed twice

    docs = _LineProgress("indexing", "doc", total=1)
    docs.update(1)
    assert "1/1 docs (100%)" in capsys.readouterr().err
    assert _LineProgress("x", "key").units == "keys"
