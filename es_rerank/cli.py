"""The ``es-rerank`` command line: a thin layer over the library; the only place that prints."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import textwrap
from typing import Any

import click

from .config import FUSION_MODES, RERANKER_KINDS, SEARCH_MODES, Settings, connect
from .errors import EsRerankError

logger = logging.getLogger(__name__)


def _fail_cleanly(fn):
    """Turn library and transport errors into one-line messages with exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from elastic_transport import TransportError
        from elasticsearch import ApiError

        try:
            return fn(*args, **kwargs)
        except EsRerankError as e:
            raise click.ClickException(str(e)) from e
        except TransportError as e:
            raise click.ClickException(f"Elasticsearch connection failed: {e.message}") from e
        except ApiError as e:
            raise click.ClickException(f"Elasticsearch error {e.meta.status}: {e.message}") from e

    return wrapper


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    given = {k: v for k, v in overrides.items() if v is not None}
    return Settings.from_env(**{**ctx.obj, **given})


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--url", envvar="ES_URL", default=None, help="Elasticsearch URL [env ES_URL; default http://127.0.0.1:9200].")
@click.option("--index", "index", envvar="ES_RERANK_INDEX", default=None, help="Index name [env ES_RERANK_INDEX; default es-rerank].")
@click.option("--embedding-model", envvar="ES_RERANK_EMBEDDING_MODEL", default=None,
              help="Sentence-transformers model name or local path [env ES_RERANK_EMBEDDING_MODEL].")
@click.option("--reranker-model", envvar="ES_RERANK_RERANKER_MODEL", default=None,
              help="Cross-encoder model name or local path [env ES_RERANK_RERANKER_MODEL].")
@click.option("--device", envvar="ES_RERANK_DEVICE", default=None, help="Torch device (cpu, cuda) [env ES_RERANK_DEVICE].")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="es-rerank")
@click.pass_context
def cli(ctx: click.Context, url, index, embedding_model, reranker_model, device, verbose):
    """Two-stage retrieval for Elasticsearch: hybrid BM25 + kNN with RRF, then a reranker."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if verbose == 0:
        # model loading draws its own progress bars; keep stderr for our bar and our reports
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # the transport logs each failed try with a traceback; our one-line error says it all
        logging.getLogger("elastic_transport").setLevel(logging.ERROR)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"url": url, "index": index, "embedding_model": embedding_model,
               "reranker_model": reranker_model, "device": device}


# -- cluster -----------------------------------------------------------------------

@cli.group()
def cluster():
    """Run a local single-node Elasticsearch without Docker (fetched from Maven Central)."""


def _local_cluster(port: int | None):
    from .cluster import LocalCluster

    return LocalCluster(port=port)


_port_option = click.option("--port", type=int, default=None, envvar="ES_RERANK_CLUSTER_PORT",
                            help="HTTP port [env ES_RERANK_CLUSTER_PORT; default 9200].")


@cluster.command("start")
@_port_option
@click.option("--timeout", type=float, default=180.0, help="Seconds to wait for the node to become healthy.")
@_fail_cleanly
def cluster_start(port, timeout):
    """Fetch (once) and start the local node; a no-op when it already runs."""
    c = _local_cluster(port)
    url = c.start(timeout=timeout)
    status = c.status()
    click.echo(f"Elasticsearch {status['version']} is up at {url} (health {status['health']}); "
               f"export ES_URL={url}")


@cluster.command("stop")
@_port_option
@_fail_cleanly
def cluster_stop(port):
    """Stop the local node."""
    stopped = _local_cluster(port).stop()
    click.echo("stopped" if stopped else "not running")


@cluster.command("status")
@_port_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_fail_cleanly
def cluster_status(port, as_json):
    """Show whether the local node runs; exit 1 when it does not."""
    status = _local_cluster(port).status()
    if as_json:
        click.echo(json.dumps(status, indent=2))
    elif status["running"]:
        click.echo(f"running: Elasticsearch {status['version']} at {status['url']} (health {status['health']})")
    else:
        click.echo(f"not running at {status['url']}")
    sys.exit(0 if status["running"] else 1)


# -- index -------------------------------------------------------------------------

@cli.command("index")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--recreate", is_flag=True, help="Delete the index first and build it anew.")
@click.option("--skip-bad", is_flag=True, help="Exit 0 even when records were rejected (they are still reported).")
@click.option("--chunk-tokens", type=int, default=None, envvar="ES_RERANK_CHUNK_TOKENS", help="Tokens per chunk [default 200].")
@click.option("--chunk-overlap", type=int, default=None, envvar="ES_RERANK_CHUNK_OVERLAP", help="Tokens shared by neighbouring chunks [default 40].")
@click.option("--embed-batch-size", type=int, default=None, envvar="ES_RERANK_EMBED_BATCH_SIZE", help="Chunks per embedding batch [default 32].")
@click.option("--bulk-size", type=int, default=200, help="Actions per bulk request.")
@click.option("--max-document-chars", type=int, default=None,
              help="Reject longer documents [env ES_RERANK_MAX_DOCUMENT_CHARS; default 1000000].")
@click.option("--analyzer", default="standard", help="Analyzer for title and text (e.g. english, where installed).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@click.pass_context
@_fail_cleanly
def index_cmd(ctx, paths, recreate, skip_bad, chunk_tokens, chunk_overlap, embed_batch_size, bulk_size,
              max_document_chars, analyzer, as_json, progress):
    """Chunk, embed and index documents from JSONL, CSV, .txt/.md files or folders.

    JSONL lines hold id (or _id), text, and optionally title and metadata; CSV files
    have a header with id and text (other columns become metadata); folders are read
    for .txt and .md files. Every rejected record is reported with its line.
    """
    s = _settings(ctx, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, embed_batch_size=embed_batch_size,
                  max_document_chars=max_document_chars)
    report = _index(s, paths, recreate=recreate, analyzer=analyzer, bulk_size=bulk_size, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"index {s.index}: {report.documents_read} documents read, {report.documents_indexed} indexed "
                   f"as {report.chunks_indexed} chunks, {len(report.rejected)} rejected "
                   f"({report.seconds:.1f}s, {report.docs_per_second:.1f} docs/s)")
        if report.stale_chunks_deleted:
            click.echo(f"removed {report.stale_chunks_deleted} chunks left over from longer earlier versions")
        for r in report.rejected:
            ident = f" id={r.doc_id}" if r.doc_id else ""
            click.echo(f"rejected {r.where()}{ident}: {r.reason}", err=True)
    if report.rejected and not skip_bad:
        sys.exit(1)


def _index(s: Settings, paths, *, recreate: bool, analyzer: str = "standard", bulk_size: int = 200,
           progress: bool = True):
    from tqdm import tqdm

    from .embedding import build_embedder
    from .indexing import index_paths

    embedder = build_embedder(s)
    bar = tqdm(desc="indexing", unit="doc", disable=not progress, file=sys.stderr)

    def on_progress(report):
        bar.update(report.documents_read - bar.n)  # tqdm throttles redraws itself

    try:
        return index_paths(connect(s), paths, settings=s, embedder=embedder, recreate=recreate,
                           analyzer=analyzer, bulk_chunk_size=bulk_size, on_progress=on_progress)
    finally:
        bar.close()


# -- query -------------------------------------------------------------------------

def _parse_filters(pairs: tuple[str, ...]) -> dict[str, Any] | None:
    filters: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--filter")
        key, value = pair.split("=", 1)
        filters[key.strip()] = value.split(",") if "," in value else value
    return filters or None


@cli.command("query")
@click.argument("text")
@click.option("--depth", type=int, default=None, help="Candidates to retrieve and rerank [env ES_RERANK_DEPTH; default 50].")
@click.option("--final-k", type=int, default=None, help="Hits to return [env ES_RERANK_FINAL_K; default 5].")
@click.option("--mode", type=click.Choice(SEARCH_MODES), default="hybrid", help="First-stage retrieval.")
@click.option("--fusion", type=click.Choice(FUSION_MODES), default=None, envvar="ES_RERANK_FUSION",
              help="RRF on the server, in Python, or detect [default auto].")
@click.option("--reranker", "reranker_kind", type=click.Choice(RERANKER_KINDS), default=None,
              help="Second stage [env ES_RERANK_RERANKER; default cross-encoder].")
@click.option("--instructions", default=None,
              help="LLM rerankers: extra instructions for the prompt, e.g. 'prefer recent documents'.")
@click.option("--allow-reranker-failures", is_flag=True, default=None,
              help="On a reranker failure print the retrieval order (reranked: false) instead of failing.")
@click.option("--no-rerank", is_flag=True, help="Return the retrieval order (same as --reranker none).")
@click.option("--normalize", is_flag=True, help="Report sigmoid(logit) in [0, 1] instead of raw reranker scores.")
@click.option("--filter", "filter_pairs", multiple=True, metavar="KEY=VALUE",
              help="Metadata filter; repeat for AND, comma-separate values for OR.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--explain", is_flag=True, help="Show retrieval rank -> rerank rank and both scores.")
@click.pass_context
@_fail_cleanly
def query_cmd(ctx, text, depth, final_k, mode, fusion, reranker_kind, instructions, allow_reranker_failures,
              no_rerank, normalize, filter_pairs, as_json, explain):
    """Search: retrieve DEPTH candidates, rerank them, print the best FINAL_K."""
    from .client import Searcher
    from .rerankers import build_reranker

    # depth and final_k go to search(), which validates them with messages that say what to change.
    s = _settings(ctx, fusion=fusion, reranker="none" if no_rerank else reranker_kind,
                  allow_reranker_failures=allow_reranker_failures)
    reranker = None
    if s.reranker != "none":
        reranker = build_reranker(s.reranker, s, normalize=normalize, instructions=instructions)
    searcher = Searcher(s, reranker=reranker)
    searcher.load_models(rerank=reranker is not None)
    result = searcher.search(text, depth=depth, final_k=final_k, filters=_parse_filters(filter_pairs),
                             mode=mode, rerank=reranker is not None)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    _print_result(result, explain=explain)


def _print_result(result, *, explain: bool) -> None:
    t = result.timings
    how = f"{result.mode}" + (f" ({result.fusion} RRF)" if result.fusion else "")
    stage2 = f"reranked by {result.reranker}" if result.reranked else "not reranked"
    if result.rerank_error:
        stage2 += f" (reranker failed: {result.rerank_error}; showing the retrieval order)"
    click.echo(f"{len(result.hits)} of {result.candidates} candidates · {how} · {stage2}")
    line = f"retrieval {t.retrieval_ms:.0f} ms · rerank {t.rerank_ms:.0f} ms · total {t.total_ms:.0f} ms"
    if result.usage:
        u = result.usage
        line += (f" · LLM: {u['requests']} requests, {u['prompt_tokens'] + u['completion_tokens']} tokens, "
                 f"{u['fallbacks']} fallbacks")
    click.echo(line + "\n")
    for pos, h in enumerate(result.hits, start=1):
        snippet = textwrap.shorten(" ".join(h.text.split()), width=110, placeholder=" ...")
        title = f"{h.title} " if h.title else ""
        click.echo(f"{pos}. [{h.score:.3f}] {title}({h.chunk_id})")
        click.echo(f"   {snippet}")
        if explain:
            rr = f"{h.rerank_rank}" if h.rerank_rank is not None else "-"
            rs = f"{h.rerank_score:.4f}" if h.rerank_score is not None else "-"
            click.echo(f"   retrieval rank {h.retrieval_rank} -> rerank rank {rr}; "
                       f"retrieval score {h.retrieval_score:.4f}, rerank score {rs}")


def main() -> None:
    cli(prog_name="es-rerank")


# -- evaluation --------------------------------------------------------------------

def _eval_setup(ctx, data_dir: str, split: str, reindex: bool, progress: bool):
    """Load the collection, index its corpus when needed, and return (settings, data, searcher)."""
    from pathlib import Path

    from .client import Searcher
    from .evaluate.data import load_beir

    index = ctx.obj.get("index") or f"eval-{Path(data_dir).resolve().name}"
    s = _settings(ctx, index=index)
    data = load_beir(data_dir, split)
    if data.unknown_query_ids:
        click.echo(f"warning: {len(data.unknown_query_ids)} judged query ids are not in queries.jsonl "
                   "(left out)", err=True)
    if data.unknown_doc_ids:
        click.echo(f"warning: {len(data.unknown_doc_ids)} judged document ids are not in corpus.jsonl "
                   "(they count as misses)", err=True)
    es = connect(s)
    if reindex or not es.indices.exists(index=s.index):
        click.echo(f"indexing {data.corpus_path} into {s.index} ...", err=True)
        report = _index(s, [str(data.corpus_path)], recreate=True, progress=progress)
        # one segment: kNN over a merged HNSW graph gives the same answers run after run
        es.indices.forcemerge(index=s.index, max_num_segments=1)
        click.echo(f"indexed {report.documents_indexed} documents as {report.chunks_indexed} chunks "
                   f"in {report.seconds:.0f}s ({len(report.rejected)} rejected)", err=True)
    return s, data, Searcher(s, es=es)


def _rerankers(s: Settings, names: tuple[str, ...], instructions: str | None = None) -> dict:
    from .rerankers import build_reranker

    # no score cache: every query's rerank latency is real
    return {name: build_reranker(name, s, instructions=instructions, cache=False) for name in dict.fromkeys(names)
            if name != "none"}


def _command_line() -> str:
    import shlex

    return shlex.join(["es-rerank", *sys.argv[1:]])


def _progress_bar(desc: str, enabled: bool):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="query", disable=not enabled, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, update


_data_options = [
    click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
                 help="Collection in BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."),
    click.option("--split", default="test", help="Qrels split."),
    click.option("--final-k", type=int, default=5, help="The k users see."),
    click.option("--fusion", type=click.Choice(FUSION_MODES), default=None, help="Hybrid fusion [default auto]."),
    click.option("--reindex", is_flag=True, help="Index the corpus again even if the index exists."),
    click.option("--max-queries", type=int, default=None, help="Only the first N queries (file order)."),
    click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                 help="Write results.json, results.md (and the plot) here."),
    click.option("--progress/--no-progress", default=True, help="Show progress on stderr."),
]


def _with_data_options(fn):
    for option in reversed(_data_options):
        fn = option(fn)
    return fn


@cli.command("eval")
@_with_data_options
@click.option("--depth", type=int, default=50, help="Candidates retrieved and reranked.")
@click.option("--reranker", "reranker_names", multiple=True, default=("cross-encoder",),
              type=click.Choice(RERANKER_KINDS),
              help="Reranker(s) to evaluate on the hybrid candidates. Repeatable.")
@click.option("--instructions", default=None, help="LLM rerankers: extra instructions for the prompt.")
@click.pass_context
@_fail_cleanly
def eval_cmd(ctx, data_dir, split, final_k, fusion, reindex, max_queries, out_dir, progress, depth, reranker_names,
             instructions):
    """Recall, nDCG and latency of BM25, kNN, hybrid and hybrid + reranker on a BEIR split."""
    from pathlib import Path

    from .evaluate.report import eval_table, write_eval
    from .evaluate.runner import run_eval

    s, data, searcher = _eval_setup(ctx, data_dir, split, reindex, progress)
    rerankers = _rerankers(s, reranker_names, instructions)
    bar, update = _progress_bar("evaluating", progress)
    try:
        report = run_eval(searcher, data, depth=depth, final_k=final_k, rerankers=rerankers, fusion=fusion,
                          max_queries=max_queries, on_query=update)
    finally:
        bar.close()
    report.environment["reranker_model"] = s.reranker_model
    report.environment["command"] = _command_line()
    click.echo(f"{report.queries} queries of {Path(data_dir).name}/{split}, depth {depth}, final_k {final_k}, "
               f"reranker model {s.reranker_model}\n")
    click.echo(eval_table(report))
    click.echo("\n" + report.gap["summary"])
    click.echo(f"\nwall time {report.wall_seconds:.0f}s")
    if out_dir:
        for path in write_eval(report, Path(out_dir)):
            click.echo(f"wrote {path}")


@cli.command("sweep")
@_with_data_options
@click.option("--depths", default="20,50,100", help="Comma-separated depths.")
@click.option("--tolerance", type=float, default=0.01,
              help="Recommended depth: smallest whose reranked recall@k is within this of the best.")
@click.option("--reranker", "reranker_name", type=click.Choice(RERANKER_KINDS[:-1]), default="cross-encoder",
              help="The reranker to sweep.")
@click.pass_context
@_fail_cleanly
def sweep_cmd(ctx, data_dir, split, final_k, fusion, reindex, max_queries, out_dir, progress, depths, tolerance,
              reranker_name):
    """Rerank at several depths: recall@k and added latency against depth, plus a plot."""
    from pathlib import Path

    from .evaluate.report import sweep_sentence, sweep_table, write_sweep
    from .evaluate.runner import run_sweep

    try:
        depth_list = [int(d) for d in depths.split(",") if d.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {depths!r}", param_hint="--depths") from None
    s, data, searcher = _eval_setup(ctx, data_dir, split, reindex, progress)
    reranker = _rerankers(s, (reranker_name,))[reranker_name]
    bar, update = _progress_bar("sweeping", progress)
    try:
        report = run_sweep(searcher, data, depths=depth_list, final_k=final_k, reranker=reranker,
                           reranker_name=reranker_name, tolerance=tolerance, fusion=fusion,
                           max_queries=max_queries, on_query=update)
    finally:
        bar.close()
    report.environment["reranker_model"] = s.reranker_model
    report.environment["command"] = _command_line()
    click.echo(sweep_table(report))
    click.echo("\n" + sweep_sentence(report))
    click.echo(f"\nwall time {report.wall_seconds:.0f}s")
    if out_dir:
        for path in write_sweep(report, Path(out_dir)):
            click.echo(f"wrote {path}")


@cli.command("export-onnx")
@click.argument("model")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--kind", type=click.Choice(["cross-encoder", "embedder"]), default="cross-encoder")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Also write an int8 copy (ONNX: dynamic; OpenVINO: static, calibrated).")
@click.option("--openvino", is_flag=True, help="Also convert to OpenVINO IR for the openvino / openvino-int8 backends.")
@click.option("--calibration-queries", type=click.Path(exists=True, dir_okay=False), default=None,
              help="OpenVINO int8: queries (one per line, or JSONL with 'text'); their candidates are "
                   "retrieved from --index and the pairs calibrate the quantization.")
@click.option("--calibration-depth", type=int, default=10, help="Candidates per calibration query.")
@click.pass_context
@_fail_cleanly
def export_onnx_cmd(ctx, model, out_dir, kind, quantize, openvino, calibration_queries, calibration_depth):
    """Export MODEL (folder or hub name) to ONNX (and OpenVINO) for the faster backends.

    ONNX int8 is dynamic quantization and needs no data. OpenVINO int8 is static quantization:
    it needs --calibration-queries, real queries whose candidates come from the index the model
    will serve (use queries that are not in your evaluation set).
    """
    var = "ES_RERANK_RERANKER" if kind == "cross-encoder" else "ES_RERANK_EMBEDDING"
    if not openvino:
        from .onnx_backend import export_onnx

        files = export_onnx(model, out_dir, kind=kind, quantize=quantize)
        backend = "onnx-int8" if quantize else "onnx"
    else:
        from .openvino_backend import calibration_from_index, export_openvino, read_queries

        calibration = None
        if quantize:
            if not calibration_queries:
                raise click.UsageError("--openvino --quantize int8 needs --calibration-queries FILE")
            calibration = calibration_from_index(_settings(ctx), read_queries(calibration_queries), kind=kind,
                                                 depth=calibration_depth)
            click.echo(f"calibrating on {len(calibration)} {'pairs' if kind == 'cross-encoder' else 'texts'}")
        files = export_openvino(model, out_dir, kind=kind, quantize=quantize, calibration=calibration)
        backend = "openvino-int8" if quantize else "openvino"
    for path in files:
        size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
        click.echo(f"wrote {path} ({size / 1e6:.1f} MB)")
    click.echo(f"use it with {var}_MODEL={out_dir} {var}_BACKEND={backend}")
