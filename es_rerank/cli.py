"""The ``es-rerank`` command line: a thin layer over the library; the only place that prints.

Options that every command shares (``--url``, ``--index``, ``--engine``, the models,
``--device``, ``-v``) are accepted before or after the subcommand. Defaults, environment
variables and help texts come from :class:`es_rerank.config.Settings`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import sys
import textwrap
import time
from typing import Any

import click

from .config import ENGINE_NAMES, RERANKER_KINDS, SEARCH_MODES, Settings, explain, setting_help
from .errors import ConfigError, EsRerankError
from .redact import redact, safe_text

logger = logging.getLogger(__name__)

_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_TYPES = {"int": int, "float": float, "bool": bool}


# -- options built from Settings ------------------------------------------------------------

def setting_option(name: str, *decls: str, flag: bool = False, **kwargs: Any):
    """A click option for the setting ``name``: its type, choices and help come from Settings.

    The option has no default and no ``envvar``: an absent option falls through to the
    environment and then the default, resolved once by :meth:`Settings.from_env`.
    """
    f = _FIELDS[name]
    type_name = str(f.type).split(" ")[0]
    options: dict[str, Any] = {"default": None, "help": setting_help(name), "show_default": False}
    if flag:
        options["is_flag"] = True
    elif f.metadata.get("choices"):
        options["type"] = click.Choice(f.metadata["choices"])
    elif type_name in _TYPES:
        options["type"] = _TYPES[type_name]
    options.update(kwargs)
    named = any(not d.startswith("-") for d in decls)  # the caller chose the parameter's name
    return click.option(*decls, **options) if named else click.option(*decls, name, **options)


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep a shared option's value for the command (given after the subcommand, it wins)."""
    if value is not None and value != 0:
        ctx.find_root().ensure_object(dict)[param.name] = value
        if param.name == "verbose":
            _configure_logging(value)
    return value


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if verbose == 0:
        # model loading draws its own progress bars; keep stderr for our bar and our reports
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # the transport logs each failed try with a traceback; our one-line error says it all
        logging.getLogger("elastic_transport").setLevel(logging.ERROR)
        logging.getLogger("opensearch").setLevel(logging.ERROR)
    root = logging.getLogger()
    if not any(isinstance(h, _RedactingHandler) for h in root.handlers):
        handler = _RedactingHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


class _RedactingHandler(logging.StreamHandler):
    """Log lines go through the one redaction function: URL credentials and secrets never print."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # the current stderr (a test runner may have replaced it)
        super().emit(record)

    def format(self, record: logging.LogRecord) -> str:
        secrets = [os.environ.get(v) for v in ("ES_PASSWORD", "ES_API_KEY", "ES_RERANK_LLM_API_KEY")]
        return safe_text(redact(super().format(record), secrets))


_SHARED = [
    setting_option("url", "--url", expose_value=False, callback=_store),
    setting_option("index", "--index", expose_value=False, callback=_store),
    setting_option("engine", "--engine", expose_value=False, callback=_store),
    setting_option("embedding_model", "--embedding-model", expose_value=False, callback=_store),
    setting_option("reranker_model", "--reranker-model", expose_value=False, callback=_store),
    setting_option("device", "--device", expose_value=False, callback=_store),
    click.option("-v", "--verbose", count=True, expose_value=False, callback=_store,
                 help="Log more (-v info, -vv debug)."),
]


def shared_options(fn):
    """Add the options every command accepts (before or after the subcommand)."""
    for option in reversed(_SHARED):
        fn = option(fn)
    return fn


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    shared = {k: v for k, v in (ctx.find_root().obj or {}).items() if k != "verbose"}
    given = {k: v for k, v in overrides.items() if v is not None}
    return Settings.from_env(**{**shared, **given})


def _secrets() -> list[str | None]:
    return [os.environ.get(v) for v in ("ES_PASSWORD", "ES_API_KEY", "ES_RERANK_LLM_API_KEY")]


def _clean(text: str) -> str:
    """What may reach the terminal: secrets masked, control characters gone."""
    return safe_text(redact(str(text), _secrets()))


def _echo(text: str = "", *, err: bool = False) -> None:
    click.echo(_clean(text), err=err)


def _count(n: int, word: str, plural: str | None = None) -> str:
    """``1 result``, ``3 results``."""
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _fail_cleanly(fn):
    """Library errors become one-line messages with exit code 1; nothing unredacted escapes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except EsRerankError as e:
            raise click.ClickException(_clean(str(e))) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None
        except ModuleNotFoundError as e:
            extra = _EXTRAS.get((e.name or "").split(".")[0])
            if extra is None:
                raise click.ClickException(_clean(f"unexpected error: {e}")) from None
            raise click.ClickException(f"this command needs the {extra} extra, which is not installed: "
                                       f"pip install -e '.[{extra}]' (missing module {e.name})") from None
        except Exception as e:  # noqa: BLE001 - an unexpected failure: say what, never leak a secret
            logger.debug("unexpected error", exc_info=True)
            raise click.ClickException(_clean(f"unexpected error: {type(e).__name__}: {e}")) from None

    return wrapper


# optional modules -> the pyproject extra that installs them
_EXTRAS = {"ranx": "eval", "matplotlib": "eval", "numba": "eval", "sentence_transformers": "torch", "torch": "torch",
           "transformers": "torch", "datasets": "train", "accelerate": "train", "openvino": "openvino", "nncf": "openvino"}


def _version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    from ._versions import ES_VERSION, OPENSEARCH_VERSION, PACKAGE_VERSION

    lines = [f"es-rerank {PACKAGE_VERSION}"]
    for dist in ("elasticsearch", "opensearch-py", "onnxruntime", "tokenizers", "openvino", "torch"):
        try:
            lines.append(f"  {dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    lines.append(f"  tested against Elasticsearch {ES_VERSION} and OpenSearch {OPENSEARCH_VERSION}")
    try:
        settings = Settings.from_env()
        from .engines import open_engine

        with open_engine(settings.replace(request_timeout=3.0)) as engine:
            info = engine.info()
        lines.append(f"  server: {info['engine']} {info['version']} at {settings.safe_url}")
    except Exception as e:  # noqa: BLE001 - the version of the client is still worth printing
        lines.append(f"  server: not reachable ({type(e).__name__})")
    try:
        settings = Settings.from_env()
        lines.append(f"  embedder: {settings.embedding_model} ({settings.embedding_backend})")
        lines.append(f"  reranker: {settings.reranker} {settings.reranker_model} ({settings.reranker_backend})")
    except ConfigError as e:
        lines.append(f"  settings: {e}")
    for line in lines:
        _echo(line)
    ctx.exit(0)


class _Root(click.Group):
    """The root group keeps the arguments it was given, so results can record the command as typed."""

    def make_context(self, info_name, args, parent=None, **extra):
        argv = list(args)
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["es_rerank.argv"] = argv
        return ctx


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@shared_options
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show es-rerank's, the clients', the server's and the models' versions.")
@click.pass_context
def cli(ctx: click.Context):
    """Two-stage retrieval for Elasticsearch and OpenSearch: hybrid BM25 + kNN with RRF, then a reranker."""
    ctx.ensure_object(dict)
    _configure_logging(ctx.obj.get("verbose", 0))


def exit_on_signal(signum: int, frame: Any = None) -> None:
    """SIGTERM unwinds like Ctrl-C: the index lifecycle settles what it started on the way out."""
    sys.exit(128 + signum)


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, exit_on_signal)
    cli(prog_name="es-rerank")


# -- cluster -----------------------------------------------------------------------------

@cli.group()
@shared_options
def cluster():
    """Run a local Elasticsearch or OpenSearch of one or more nodes without Docker (from Maven Central)."""


def _local_cluster(engine: str | None, port: int | None, nodes: int | None = None, heap: str | None = None):
    from .cluster import LocalCluster

    return LocalCluster(engine=engine, port=port, nodes=nodes, heap=heap)


def _display(engine: str) -> str:
    from .cluster import DISTRIBUTIONS

    return DISTRIBUTIONS[engine].display if engine in DISTRIBUTIONS else engine


_cluster_options = [
    click.option("--port", type=int, default=None, envvar="ES_RERANK_CLUSTER_PORT",
                 help="HTTP port [env ES_RERANK_CLUSTER_PORT; default 9200, OpenSearch 9202]."),
    click.option("--engine", "cluster_engine", type=click.Choice(ENGINE_NAMES), default=None,
                 envvar="ES_RERANK_CLUSTER_ENGINE",
                 help="Which engine to run [env ES_RERANK_CLUSTER_ENGINE; default elasticsearch]."),
    click.option("--nodes", type=int, default=None, envvar="ES_RERANK_CLUSTER_NODES",
                 help="How many nodes, on consecutive ports from --port, each with its own folder and heap "
                      "[env ES_RERANK_CLUSTER_NODES; default: as recorded at the last start, else 1]."),
]


def _with_cluster_options(fn):
    for option in reversed(_cluster_options):
        fn = option(fn)
    return fn


@cluster.command("start")
@_with_cluster_options
@click.option("--heap", default=None, envvar="ES_RERANK_CLUSTER_HEAP",
              help="JVM heap of each node, e.g. 512m [env ES_RERANK_CLUSTER_HEAP; default 1g].")
@click.option("--timeout", type=float, default=180.0, help="Seconds to wait for the cluster to become healthy.")
@_fail_cleanly
def cluster_start(port, cluster_engine, nodes, heap, timeout):
    """Fetch (once) and start the local nodes that are not running; a no-op when all run."""
    c = _local_cluster(cluster_engine, port, nodes, heap)
    url = c.start(timeout=timeout)
    status = c.status()
    _echo(f"{_display(status['engine'])} {status['version']} is up at {url} (health {status['health']}, "
          f"{len(status['nodes'])} node(s)); export ES_URL={url}")


@cluster.command("stop")
@_with_cluster_options
@_fail_cleanly
def cluster_stop(port, cluster_engine, nodes):
    """Stop the local nodes (only processes that are provably the nodes es-rerank started there)."""
    stopped = _local_cluster(cluster_engine, port, nodes).stop()
    _echo("stopped" if stopped else "not running")


@cluster.command("status")
@_with_cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_fail_cleanly
def cluster_status(port, cluster_engine, nodes, as_json):
    """Show whether the local nodes run; exit 1 when one does not."""
    status = _local_cluster(cluster_engine, port, nodes).status()
    if as_json:
        _echo(json.dumps(status, indent=2, default=str))
    elif status["running"]:
        plugins = f"; plugins: {', '.join(status['plugins'])}" if status.get("plugins") else ""
        _echo(f"running: {_display(status['engine'])} {status['version']} at {status['url']} "
              f"(health {status['health']}){plugins}")
    else:
        some = any(node["running"] for node in status["nodes"])
        _echo("not every node is running" if some else f"not running at {status['url']}")
    if len(status["nodes"]) > 1 and not as_json:
        for node in status["nodes"]:
            state = "running" if node["running"] else "not running"
            _echo(f"  {node['name']}: {state} at {node['url']} (transport {node['transport_port']}, "
                  f"pid {node['pid'] or '-'})")
    sys.exit(0 if status["running"] else 1)


# -- index ---------------------------------------------------------------------------------

class _LineProgress:
    """Progress for a log rather than a terminal: a plain line at each tenth of the total (at most one
    a second; every 30 s while the total is unknown), with counts, rate and time; tqdm's redraws
    would pile up on one line there. Offers the part of tqdm's interface the index command uses.
    """

    def __init__(self, desc: str, unit: str, total: int | None = None, every_s: float = 30.0):
        self.desc, self.unit, self.total, self.n = desc, unit, total, 0
        self.units = unit[:-1] + "ies" if unit.endswith("y") and unit[-2:-1] not in "aeiou" else unit + "s"
        self.every_s = every_s
        self._started = self._last = time.perf_counter()
        self._tenth = 0
        self._shown = 0  # nothing done, nothing to say (an index reused as it was)

    def refresh(self) -> None:
        pass

    def update(self, k: int) -> None:
        self.n += k
        now = time.perf_counter()
        if self.total:
            tenth = min(10, self.n * 10 // self.total)
            # at most one line a second (a batch can finish many documents at once), and the last
            if tenth > self._tenth and (now - self._last >= 1.0 or self.n >= self.total):
                self._tenth = tenth
                self._line(now)
        elif now - self._last >= self.every_s:
            self._line(now)

    def close(self) -> None:
        if self.n != self._shown:
            self._line(time.perf_counter())

    def _line(self, now: float) -> None:
        elapsed = now - self._started
        of = f"/{self.total} {self.units} ({100 * self.n / self.total:.0f}%)" if self.total else f" {self.units}"
        rate = f", {self.n / elapsed:.1f} {self.units}/s" if elapsed > 0 else ""
        _echo(f"{self.desc}: {self.n}{of}, {elapsed:.1f}s{rate}", err=True)
        self._last, self._shown = now, self.n


def _progress_bar(desc: str, unit: str, enabled: bool, total: int | None = None):
    """tqdm's bar on a terminal; plain lines (:class:`_LineProgress`) when stderr goes to a file or pipe."""
    from tqdm import tqdm

    if enabled and not sys.stderr.isatty():
        return _LineProgress(desc, unit, total)
    return tqdm(desc=desc, unit=unit, total=total, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _run_index(s: Settings, engine, paths, *, recreate: bool, bulk_size: int, progress: bool, include_hidden: bool,
               follow_symlinks: bool, allow_rejected: bool):
    from .embedding import build_embedder
    from .engines import validate_index_name
    from .indexing import index_paths
    from .runtime import timed_load

    validate_index_name(s.index)  # a mistyped name is reported before the model loads
    embedder = build_embedder(s)
    if progress:  # loading takes seconds: say so, or the bar would sit at 0 meanwhile
        _echo(f"loading models: embedder {s.embedding_model} ({s.embedding_backend}) ...", err=True)
    load_s = timed_load(embedder)
    if progress:
        _echo(f"models loaded in {load_s:.1f}s", err=True)
    bar = _progress_bar("indexing", "doc", progress)

    def on_progress(report):
        if report.expected is not None and bar.total != report.expected:
            bar.total = report.expected
            bar.refresh()
        done = report.documents_indexed + len(report.rejected)
        bar.update(done - bar.n)  # tqdm throttles redraws itself

    try:
        return index_paths(engine, paths, settings=s, embedder=embedder, recreate=recreate,
                           bulk_chunk_size=bulk_size, include_hidden=include_hidden, follow_symlinks=follow_symlinks,
                           allow_rejected=allow_rejected, on_progress=on_progress)
    finally:
        bar.close()


@cli.command("index")
@shared_options
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--recreate", is_flag=True,
              help="Build a new index and swap it in when complete (the current one serves until then).")
@click.option("--skip-bad", is_flag=True,
              help="Accept rejected records: exit 0 and switch a new build in anyway (they are still reported). "
                   "Without it a build with rejections is not switched in and the previous index serves on.")
@setting_option("chunk_tokens", "--chunk-tokens")
@setting_option("chunk_overlap", "--chunk-overlap")
@setting_option("embed_batch_size", "--embed-batch-size")
@setting_option("max_document_chars", "--max-document-chars")
@setting_option("analyzer", "--analyzer")
@setting_option("shards", "--shards")
@setting_option("replicas", "--replicas")
@click.option("--bulk-size", type=int, default=200, help="Actions per bulk request.")
@click.option("--include-hidden", is_flag=True, help="Also read hidden files and folders inside folders.")
@click.option("--follow-symlinks", is_flag=True, help="Also follow symlinks that lead out of a given folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar (with total and ETA) on stderr.")
@click.pass_context
@_fail_cleanly
def index_cmd(ctx, paths, recreate, skip_bad, chunk_tokens, chunk_overlap, embed_batch_size, max_document_chars,
              analyzer, shards, replicas, bulk_size, include_hidden, follow_symlinks, as_json, progress):
    """Chunk, embed and index documents from JSONL, CSV, .txt/.md files or folders.

    JSONL lines hold id (or _id), text, and optionally title and metadata; CSV files
    have a header with id and text (other columns become metadata); folders are read
    for .txt and .md files. Every rejected record is reported with its line.
    """
    from .engines import open_engine
    from .errors import BuildRejectedError

    if bulk_size < 1:
        raise click.BadParameter(f"must be >= 1, got {bulk_size}", param_hint="--bulk-size")
    s = _settings(ctx, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, embed_batch_size=embed_batch_size,
                  max_document_chars=max_document_chars, analyzer=analyzer, shards=shards, replicas=replicas)
    refused = None
    with open_engine(s) as engine:
        try:
            report = _run_index(s, engine, paths, recreate=recreate, bulk_size=bulk_size, progress=progress,
                                include_hidden=include_hidden, follow_symlinks=follow_symlinks,
                                allow_rejected=skip_bad)
        except BuildRejectedError as e:  # the report still says what was read and why each record was refused
            if e.report is None:
                raise
            report, refused = e.report, e
    if as_json:
        _echo(json.dumps({**report.to_dict(), "switched": report.rebuilt and refused is None}, indent=2,
                         ensure_ascii=False))
    else:
        _print_index_report(report, switched=refused is None)
    if refused is not None:
        raise click.ClickException(_clean(str(refused)))
    if report.rejected and not skip_bad:
        sys.exit(1)


def _print_index_report(report, *, switched: bool) -> None:
    if not report.rebuilt:
        how = f"wrote into {report.concrete}"
    elif switched:
        how = f"built {report.concrete} and switched {report.index} to it"
    else:
        how = f"built {report.concrete} but did not switch {report.index} to it"
    _echo(f"index {report.index}: {_count(report.documents_read, 'document')} read, "
          f"{report.documents_indexed} indexed as {_count(report.chunks_indexed, 'chunk')}, "
          f"{len(report.rejected)} rejected "
          f"({report.seconds:.1f}s, {report.docs_per_second:.1f} docs/s; {how})")
    if report.replaced and switched:
        _echo(f"replaced and deleted {', '.join(report.replaced)}")
    if report.stale_chunks_deleted:
        _echo(f"removed {report.stale_chunks_deleted} chunks left over from longer earlier versions")
    if report.skipped:
        _echo(f"skipped {_count(len(report.skipped), 'file')} (use --include-hidden / --follow-symlinks where meant):",
              err=True)
        for path, why in report.skipped:
            _echo(f"  skipped {path}: {why}", err=True)
    for r in report.rejected:
        ident = f" id={r.doc_id}" if r.doc_id else ""
        _echo(f"rejected {r.where()}{ident}: {r.reason}", err=True)


# -- query ---------------------------------------------------------------------------------

_FILTER = re.compile(r"^(?P<key>[^<>=!]+?)\s*(?P<op>>=|<=|>|<|=)\s*(?P<value>.*)$", re.S)
_RANGE_OPS = {">=": "gte", "<=": "lte", ">": "gt", "<": "lt"}


def parse_filters(pairs: tuple[str, ...]) -> dict[str, Any] | None:
    """``key=value`` (exact), ``key=a,b`` (any of), ``key>=v`` / ``<=`` / ``>`` / ``<`` (range).

    Repeating a key with range operators combines the bounds (``year>=2020 year<2024``).

    Raises:
        click.BadParameter: A filter that does not parse.
    """
    filters: dict[str, Any] = {}
    for pair in pairs:
        m = _FILTER.match(pair)
        if m is None or not m.group("key").strip():
            raise click.BadParameter(f"expected key=value, key>=value, key<=value, key>value or key<value, "
                                     f"got {pair!r}", param_hint="--filter")
        key, op, value = m.group("key").strip(), m.group("op"), m.group("value").strip()
        if op == "=":
            if key in filters:
                raise click.BadParameter(f"{key!r} is given twice; use {key}=a,b for any of", param_hint="--filter")
            filters[key] = [v.strip() for v in value.split(",")] if "," in value else value
        else:
            bounds = filters.setdefault(key, {})
            if not isinstance(bounds, dict):
                raise click.BadParameter(f"{key!r} has both an exact value and a range", param_hint="--filter")
            bounds[_RANGE_OPS[op]] = _number(value)
    return filters or None


def _number(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return value  # a date, compared by the engine


@cli.command("query")
@shared_options
@click.argument("text")
@setting_option("depth", "--depth")
@setting_option("final_k", "--final-k")
@click.option("--mode", type=click.Choice(SEARCH_MODES), default="hybrid", help="First-stage retrieval.")
@setting_option("fusion", "--fusion")
@setting_option("reranker", "--reranker", "reranker_kind")
@setting_option("blend", "--blend")
@setting_option("blend_weight", "--blend-weight")
@click.option("--chunks", is_flag=True, help="One result per chunk instead of per document (ES_RERANK_RESULTS=chunks).")
@click.option("--instructions", default=None,
              help="LLM rerankers: extra instructions for the prompt, e.g. 'prefer recent documents'.")
@setting_option("allow_reranker_failures", "--allow-reranker-failures", flag=True)
@click.option("--no-rerank", is_flag=True, help="Return the retrieval order (same as --reranker none).")
@click.option("--normalize", is_flag=True, help="Report sigmoid(logit) in [0, 1] instead of raw reranker scores.")
@click.option("--filter", "filter_pairs", multiple=True, metavar="KEY=VALUE",
              help="Filter on title, doc_id or metadata: key=value, key=a,b (any of), key>=v, key<v ... "
                   "Repeat for AND.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--explain", is_flag=True, help="Show retrieval rank -> rerank rank and both scores.")
@click.pass_context
@_fail_cleanly
def query_cmd(ctx, text, depth, final_k, mode, fusion, reranker_kind, blend, blend_weight, chunks, instructions,
              allow_reranker_failures, no_rerank, normalize, filter_pairs, as_json, explain):
    """Search: retrieve DEPTH candidates, rerank them, print the best FINAL_K."""
    from .client import Searcher, validate_query, validate_sizes
    from .rerankers import build_reranker

    started = time.perf_counter()
    # everything that can be checked without the cluster or a model is checked first
    s = _settings(ctx, fusion=fusion, results="chunks" if chunks else None,
                  allow_reranker_failures=allow_reranker_failures)
    kind = "none" if no_rerank else reranker_kind
    validate_query(text)
    validate_sizes(s.depth if depth is None else depth, final_k)
    filters = parse_filters(filter_pairs)
    # options given here win over the index's pipeline, which wins over the defaults
    given = dict(depth=depth, final_k=final_k, blend=blend, blend_weight=blend_weight, reranker=kind)
    with Searcher(s) as searcher:
        searcher.check_index()
        plan = searcher.plan(**given)
        reranker = None
        if plan.values["reranker"] != "none":
            reranker = build_reranker(plan.values["reranker"], plan.settings(s), normalize=normalize,
                                      instructions=instructions)
        if plan.warning:
            _echo(f"warning: {plan.warning}", err=True)
        loads = {"embedder_s": searcher.load_models(rerank=False)["embedder_s"]}
        if reranker is not None:
            from .runtime import timed_load

            loads["reranker_s"] = timed_load(reranker)
        result = searcher.search(text, depth=depth, final_k=final_k, filters=filters, mode=mode,
                                 rerank=False if reranker is None else None, reranker=reranker,
                                 blend=plan.values["blend"], blend_weight=plan.values["blend_weight"])
    load_s = sum(loads.values()) + result.timings.model_load_ms / 1000  # loaded before the search, or in it
    sources = plan.to_dict()  # the reranker was built here: the plan says where its settings came from
    if as_json:
        data = result.to_dict()
        data["settings"] = sources
        data["timings"]["model_load_ms"] = round(load_s * 1000, 3)
        data["timings"]["command_ms"] = round((time.perf_counter() - started) * 1000, 3)
        _echo(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False))
        return
    _print_result(result, explain=explain, load_s=load_s)
    if explain:
        _print_sources(sources)


def _print_sources(info: dict) -> None:
    """Where each pipeline setting came from (``query --explain``)."""
    p = info.get("pipeline")
    _echo("\nsettings: " + (f"the index's pipeline is {p['label']} (applied {p['applied']} by {p['how']})"
                             if p else "the index has no pipeline"))
    for name, v in info["settings"].items():
        _echo(f"  {name:<17} {v['value']!s:<40} ({v['source']})")
    if info.get("model_check"):
        _echo(f"  model check: {info['model_check']}")


def _print_result(result, *, explain: bool, load_s: float) -> None:
    t = result.timings
    how = f"{result.mode}" + (f" ({result.fusion} RRF)" if result.fusion else "")
    stage2 = f"reranked by {result.reranker}" if result.reranked else "not reranked"
    if result.rerank_error:
        stage2 += f" (reranker failed: {result.rerank_error}; showing the retrieval order)"
    _echo(f"{_count(len(result.hits), 'result')} from {_count(result.candidates, 'candidate chunk')} · {how} · "
          f"{stage2}")
    line = (f"retrieval {t.retrieval_ms:.0f} ms · rerank {t.rerank_ms:.0f} ms · search {t.total_ms:.0f} ms "
            f"(+ {load_s * 1000:.0f} ms loading models)")
    if result.usage and result.usage.requests:
        u = result.usage
        line += f" · LLM: {_count(u.requests, 'request')}, {_count(u.tokens, 'token')}, {_count(u.fallbacks, 'fallback')}"
    _echo(line + "\n")
    for pos, h in enumerate(result.hits, start=1):
        snippet = textwrap.shorten(" ".join(h.text.split()), width=110, placeholder=" ...")
        title = f"{h.title} " if h.title else ""
        more = f" +{len(h.passages)} more passages" if h.passages else ""
        _echo(f"{pos}. [{h.score:.3f}] {title}({h.chunk_id}){more}")
        _echo(f"   {snippet}")
        if explain:
            rr = f"{h.rerank_rank}" if h.rerank_rank is not None else "-"
            rs = f"{h.rerank_score:.4f}" if h.rerank_score is not None else "-"
            _echo(f"   retrieval rank {h.retrieval_rank} -> rerank rank {rr}; "
                  f"retrieval score {h.retrieval_score:.4f}, rerank score {rs}"
                  + (f", final score {h.final_score:.4f}" if h.final_score not in (None, h.rerank_score) else ""))


# -- inspect and delete ------------------------------------------------------------------------

@cli.command("indices")
@shared_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_fail_cleanly
def indices_cmd(ctx, as_json):
    """List es-rerank's indices: documents, chunks, embedder, dims, created."""
    from .engines import open_engine
    from .lifecycle import list_owned

    with open_engine(_settings(ctx)) as engine:
        rows = list_owned(engine)
    if as_json:
        _echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2, default=str))
        return
    if not rows:
        _echo("no es-rerank indices")
        return
    _echo(f"{'name':<30} {'index':<42} {'docs':>8} {'chunks':>8} {'dims':>5}  {'created':<25} embedder")
    for r in rows:
        docs = "-" if r.documents is None else r.documents
        _echo(f"{r.name:<30} {r.index:<42} {docs:>8} {r.chunks:>8} {r.dims or '-':>5}  "
              f"{r.created or '-':<25} {r.embedder or '-'}" + ("" if r.state in (None, "ready") else f" [{r.state}]"))
        if r.problem:
            _echo(f"  {r.name}: cannot be read: {r.problem}", err=True)


@cli.command("delete")
@shared_options
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@_fail_cleanly
def delete_cmd(ctx, name, yes):
    """Delete an es-rerank index (by its name or alias). Indices es-rerank did not create are refused,
    and so are indices another alias also serves (every alias affected is named)."""
    from .engines import open_engine, validate_index_name
    from .errors import IndexMissingError
    from .lifecycle import delete, require_owned, require_sole_alias

    validate_index_name(name)
    with open_engine(_settings(ctx)) as engine:
        state = engine.state(name)
        if state.kind == "missing":
            raise IndexMissingError(name)
        require_owned(state)
        require_sole_alias(state, action="deleting it")
        if not yes:
            served = ", ".join(f"{i} (aliases: {', '.join(state.aliases.get(i, ())) or 'none'})"
                               for i in state.indices)
            click.confirm(_clean(f"delete {name}: {served}?"), abort=True)
        deleted = delete(engine, name)
    _echo(f"deleted {', '.join(deleted)}")


@cli.command("delete-docs")
@shared_options
@click.option("--id", "doc_ids", multiple=True, required=True, help="Document id (repeatable).")
@click.pass_context
@_fail_cleanly
def delete_docs_cmd(ctx, doc_ids):
    """Delete documents (all their chunks) from the es-rerank index --index."""
    from .engines import open_engine
    from .indexing import delete_documents

    s = _settings(ctx)
    with open_engine(s) as engine:
        counts = delete_documents(engine, s.index, list(doc_ids))
    for doc_id, n in counts.items():
        _echo(f"{doc_id}: {_count(n, 'chunk')} deleted" if n else f"{doc_id}: not found")
    if not any(counts.values()):
        sys.exit(1)


@cli.command("config")
@shared_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_fail_cleanly
def config_cmd(ctx, as_json):
    """Show the settings in effect (secrets masked) and where each came from, then the local cluster's."""
    from .cluster.local import explain_cluster

    shared = {k: v for k, v in (ctx.find_root().obj or {}).items() if k != "verbose"}
    rows = explain(**shared)
    cluster_rows = explain_cluster()
    if as_json:
        _echo(json.dumps([dataclasses.asdict(r) for r in rows + cluster_rows], indent=2))
        return
    width = max(len(r.env) for r in rows + cluster_rows)
    for r in rows:
        _echo(f"{r.env:<{width}}  {r.value}  ({r.source})")
    _echo("\nlocal cluster (es-rerank cluster):")
    for r in cluster_rows:
        _echo(f"{r.env:<{width}}  {r.value}  ({r.source})")


# -- the index's pipeline ------------------------------------------------------------------------

@cli.group("pipeline")
@shared_options
def pipeline_group():
    """The pipeline an index keeps (reranker, depth, blend; or no reranking) and its evidence.

    query, the Searcher client and serve use it for settings left at their defaults.
    """


def _pipeline_text(p) -> list[str]:
    lines = [p.label(), f"  applied {p.applied or '?'} by {p.how or '?'} (es-rerank {p.version or '?'})"]
    if p.model_fingerprint:
        lines.append(f"  model fingerprint {p.model_fingerprint}")
    ev = p.evidence
    if ev:
        q = ev.get("questions") or {}
        lines.append(f"  chosen on {q.get('queries')} questions of {q.get('data')} ({q.get('split')}), "
                     f"{q.get('fingerprint', '')[:19]}..., tuned for {ev.get('tuned_for')}"
                     + (f" with {ev['folds']}-fold cross-validation" if ev.get("folds") else ""))
        tuned = ev.get("tuned")
        for c in [tuned, *(ev.get("metrics") or {}).values()]:
            if not c or (c is not tuned and c == tuned):  # the tuned metric's comparison, shown once
                continue
            ci = "no interval" if c.get("ci_low") is None else f"CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f}"
            lines.append(f"  {c['metric']:<10} {c['setup_mean']:.4f} vs hybrid {c['baseline_mean']:.4f} "
                         f"(delta {c['mean_delta']:+.4f}, {ci}; {c['wins']} wins, {c['ties']} ties, "
                         f"{c['losses']} losses)")
        c = ev.get("against_current")
        if c:  # train --apply: the trained model against the pipeline it replaced
            lines.append(f"  against {c['pipeline']}: {c['setup_mean']:.4f} vs {c['baseline_mean']:.4f} "
                         f"(delta {c['mean_delta']:+.4f}; {c['wins']} wins, {c['ties']} ties, {c['losses']} losses)")
    else:
        lines.append("  no evidence recorded (set by hand)")
    return lines


@pipeline_group.command("show")
@shared_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_fail_cleanly
def pipeline_show(ctx, as_json):
    """Show the pipeline the index --index uses, with its evidence."""
    from .engines import open_engine
    from .pipelines import read

    s = _settings(ctx)
    with open_engine(s) as engine:
        stored = read(engine, s.index)
    if as_json:
        data = stored.to_dict()
        del data["history"]
        _echo(json.dumps(data, indent=2))
        return
    if stored.pipeline is None:
        _echo(f"{s.index} ({stored.index}) has no pipeline: searches use the settings "
              "(`es-rerank tune --apply` or `es-rerank pipeline set` records one)")
        return
    _echo(f"{s.index} ({stored.index}):")
    for line in _pipeline_text(stored.pipeline):
        _echo(line)


@pipeline_group.command("history")
@shared_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_fail_cleanly
def pipeline_history(ctx, as_json):
    """List the index's pipeline and the previous ones, newest first."""
    from .engines import open_engine
    from .pipelines import read

    s = _settings(ctx)
    with open_engine(s) as engine:
        stored = read(engine, s.index)
    if as_json:
        _echo(json.dumps(stored.to_dict(), indent=2))
        return
    entries = ([("in use", stored.pipeline)] if stored.pipeline is not None else []) + \
        [(f"-{i}", p) for i, p in enumerate(stored.history, start=1)]
    if not entries:
        _echo(f"{s.index} has no pipeline and no history")
    for tag, p in entries:
        lines = _pipeline_text(p)
        _echo(f"{tag:>7}  {lines[0]}")
        for line in lines[1:]:
            _echo(f"         {line.strip()}")


def _apply_pipeline(engine, name: str, pipeline, *, force: bool) -> None:
    """Write ``pipeline`` to ``name`` unless its evidence says it is worse than hybrid (and not forced)."""
    from .evaluate.tuning import worse_than_hybrid
    from .pipelines import apply

    worse = worse_than_hybrid(pipeline.evidence or {})
    if worse and not force:
        raise click.ClickException(_clean(
            f"not applied: {pipeline.label()} is worse than hybrid on these questions: {'; '.join(worse)} (the "
            f"interval lies below 0). {name} keeps its pipeline. Add --force to apply it anyway"))
    stored = apply(engine, name, pipeline)
    note = " despite being worse than hybrid (--force)" if worse else ""
    _echo(f"applied to {name} ({stored.index}){note}: {pipeline.label()}")
    if stored.history:
        _echo(f"previous: {stored.history[0].label()} (`es-rerank pipeline rollback` restores it)")


@pipeline_group.command("set")
@shared_options
@setting_option("reranker", "--reranker", "reranker_kind")
@setting_option("reranker_backend", "--backend")
@setting_option("depth", "--depth")
@setting_option("final_k", "--final-k")
@setting_option("blend", "--blend")
@setting_option("blend_weight", "--blend-weight")
@click.pass_context
@_fail_cleanly
def pipeline_set(ctx, reranker_kind, reranker_backend, depth, final_k, blend, blend_weight):
    """Record a pipeline by hand (no evidence): what is not given comes from the settings.

    The reranker model is --reranker-model (or ES_RERANK_RERANKER_MODEL); a folder is fingerprinted.
    """
    from .engines import open_engine
    from .pipelines import make

    s = _settings(ctx, reranker=reranker_kind, reranker_backend=reranker_backend, blend=blend,
                  blend_weight=blend_weight)
    kind = s.reranker
    pipeline = make(reranker=kind, model=_model_of(s, kind) if kind != "none" else None,
                    backend=s.reranker_backend if kind == "cross-encoder" else None,
                    depth=s.depth if depth is None else depth, final_k=final_k, blend=s.blend,
                    blend_weight=s.blend_weight, how="set")
    with open_engine(s) as engine:
        _apply_pipeline(engine, s.index, pipeline, force=False)


@pipeline_group.command("rollback")
@shared_options
@click.pass_context
@_fail_cleanly
def pipeline_rollback(ctx):
    """Restore the previous pipeline (from the first one: no pipeline, the settings decide)."""
    from .engines import open_engine
    from .pipelines import rollback

    s = _settings(ctx)
    with open_engine(s) as engine:
        stored = rollback(engine, s.index)
    _echo(f"{s.index} now uses " + (stored.pipeline.label() if stored.pipeline is not None
                                    else "no pipeline (the settings decide)"))


# -- evaluation -------------------------------------------------------------------------------

def _command_line() -> str:
    import shlex

    ctx = click.get_current_context(silent=True)
    argv = ctx.meta.get("es_rerank.argv") if ctx is not None else None
    return _clean(shlex.join(["es-rerank", *(sys.argv[1:] if argv is None else argv)]))


def _eval_setup(ctx, data_dir: str, split: str, reindex: bool, progress: bool, *, extra: bool = True):
    """Load the collection, prepare its evaluation index, return (settings, data, searcher, prepared).

    ``extra=False`` (tune without --out) needs neither ranx nor matplotlib: metrics fall back to
    :mod:`es_rerank.evaluate.plain_metrics`.
    """
    from .client import Searcher
    from .embedding import build_embedder
    from .engines import open_engine
    from .evaluate.data import load_beir
    from .evaluate.prepare import prepare_index

    if extra:
        import matplotlib  # noqa: F401 - the eval extra: fail now, not after indexing the corpus
        import ranx  # noqa: F401

    s = _settings(ctx)
    data = load_beir(data_dir, split)
    if data.unknown_query_ids:
        _echo(f"warning: {len(data.unknown_query_ids)} judged query ids are not in queries.jsonl (left out)", err=True)
    if data.unknown_doc_ids:
        _echo(f"warning: {len(data.unknown_doc_ids)} judged document ids are not in corpus.jsonl "
              "(they count as misses)", err=True)
    engine = open_engine(s)
    embedder = build_embedder(s)
    bar = _progress_bar("indexing corpus", "doc", progress)

    def on_progress(report):
        if report.expected is not None and bar.total != report.expected:
            bar.total = report.expected
            bar.refresh()
        bar.update(report.documents_indexed + len(report.rejected) - bar.n)

    try:
        prepared = prepare_index(engine, data, s, embedder, reindex=reindex, on_progress=on_progress)
    finally:
        bar.close()
    if prepared.built:
        r = prepared.report
        _echo(f"indexed {r.documents_indexed} documents as {r.chunks_indexed} chunks into {prepared.name} "
              f"in {prepared.seconds:.0f}s ({len(r.rejected)} rejected)", err=True)
    else:
        _echo(f"using {prepared.name} (built earlier from the same corpus and settings)", err=True)
    s = s.replace(index=prepared.name)
    return s, data, Searcher(s, engine=engine, embedder=embedder), prepared


def _rerankers(s: Settings, names, instructions: str | None = None) -> dict:
    from .rerankers import build_reranker

    # no score cache: every query's rerank latency is real
    return {name: build_reranker(name, s, instructions=instructions, cache=False) for name in dict.fromkeys(names)
            if name != "none"}


def _model_of(s: Settings, kind: str) -> str:
    """The model behind a reranker kind, for the record and the plots."""
    return s.llm_model if kind in ("llm", "listwise") else s.reranker_model


_exclude_self_option = click.option(
    "--exclude-self/--keep-self", "exclude_self", default=None,
    help="Drop each query's own document from its ranking before scoring (BEIR convention for collections "
         "whose queries are documents, e.g. ArguAna). Default: on when most judged query ids are corpus ids.")

_data_options = [
    click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
                 help="Collection in BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."),
    click.option("--split", default="test", help="Qrels split."),
    setting_option("final_k", "--final-k"),
    setting_option("fusion", "--fusion"),
    setting_option("blend", "--blend"),
    setting_option("blend_weight", "--blend-weight"),
    _exclude_self_option,
    click.option("--reindex", is_flag=True, help="Build the collection's evaluation index again."),
    click.option("--max-queries", type=click.IntRange(min=1), default=None,
                 help="Only the first N queries (file order)."),
    click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                 help="Write results.json, results.md and report.html (and the plot) here."),
    click.option("--progress/--no-progress", default=True, help="Show progress on stderr."),
]


def _with_data_options(fn):
    for option in reversed(_data_options):
        fn = option(fn)
    return fn


def _query_bar(desc: str, enabled: bool):
    bar = _progress_bar(desc, "query", enabled)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    return bar, update


def _record(report, prepared, started: float, **extra: Any):
    """The report with the command's own wall time (indexing included) and how it was run."""
    env = {**report.environment, **extra, "command": _command_line(), "index_seconds": round(prepared.seconds, 1),
           "index_built": prepared.built}
    return dataclasses.replace(report, wall_seconds=time.perf_counter() - started, environment=env)


def _wall_line(report, prepared) -> str:
    return (f"wall time {report.wall_seconds:.0f}s (indexing {prepared.seconds:.0f}s"
            f"{'' if prepared.built else ', reused'})")


def _write(paths) -> None:
    for path in paths:
        _echo(f"wrote {path}")


@cli.command("eval")
@shared_options
@_with_data_options
@setting_option("depth", "--depth")
@click.option("--reranker", "reranker_names", multiple=True, type=click.Choice(RERANKER_KINDS),
              help="Reranker(s) to evaluate on the hybrid candidates. Repeatable. Default: cross-encoder "
                   "(with --pipeline: the pipeline's).")
@click.option("--instructions", default=None, help="LLM rerankers: extra instructions for the prompt.")
@click.option("--pipeline", "pipeline_of", default=None, metavar="INDEX",
              help="Evaluate the pipeline INDEX uses (`tune --apply`, `pipeline set`): its reranker, model, "
                   "depth, final_k and blend, each unless given here. The collection's evaluation index answers "
                   "the queries.")
@click.pass_context
@_fail_cleanly
def eval_cmd(ctx, data_dir, split, final_k, fusion, blend, blend_weight, exclude_self, reindex, max_queries, out_dir,
             progress, depth, reranker_names, instructions, pipeline_of):
    """Recall, nDCG and latency of BM25, kNN, hybrid and hybrid + reranker on a BEIR split.

    Every row is compared with hybrid query by query: the mean difference with a 95%
    paired bootstrap interval, and the queries won, tied and lost.
    """
    from pathlib import Path

    from .evaluate.report import eval_table, write_eval
    from .evaluate.evaluation import run_eval

    started = time.perf_counter()
    if final_k is None and depth is not None and depth < _settings(ctx).final_k:
        final_k = depth  # a shallow depth needs no --final-k of its own: the k follows it down
    applied = None
    if pipeline_of is not None:
        applied = _pipeline_to_evaluate(ctx, pipeline_of, reranker=reranker_names[0] if reranker_names else None,
                                        depth=depth, final_k=final_k, blend=blend, blend_weight=blend_weight)
        reranker_names = reranker_names or (applied.values["reranker"],)
        depth, final_k, blend, blend_weight = (applied.values[k] for k in ("depth", "final_k", "blend",
                                                                           "blend_weight"))
        _echo(f"evaluating the pipeline of {pipeline_of}: {applied.pipeline.label()}", err=True)
    base = _settings(ctx, final_k=final_k, depth=depth, blend=blend, blend_weight=blend_weight)
    depth, final_k = base.depth, base.final_k
    s, data, searcher, prepared = _eval_setup(ctx, data_dir, split, reindex, progress)
    if applied is not None:
        s = applied.settings(s)
    with searcher:
        rerankers = _rerankers(s, reranker_names or ("cross-encoder",), instructions)
        bar, update = _query_bar("evaluating", progress)
        try:
            report = run_eval(searcher, data, depth=depth, final_k=final_k, rerankers=rerankers, blend=base.blend,
                              blend_weight=base.blend_weight, fusion=fusion, max_queries=max_queries,
                              exclude_own=exclude_self, on_query=update)
        finally:
            bar.close()
    extra = {} if applied is None else {"pipeline_of": pipeline_of, "pipeline": applied.pipeline.label(),
                                        "pipeline_applied": applied.pipeline.applied}
    report = _record(report, prepared, started, reranker_model=s.reranker_model, **extra)
    blend_text = base.blend + (f" (reranker weight {base.blend_weight:g})" if base.blend == "linear" else "")
    _echo(f"{report.queries} queries of {Path(data_dir).name}/{split}, depth {depth}, final_k {final_k}, "
          f"blend {blend_text}, reranker model {s.reranker_model}\n")
    _echo(eval_table(report))
    if report.own_document["note"]:
        _echo("\n" + report.own_document["note"])
    _echo("\n" + report.gap["summary"])
    _echo("\n" + _wall_line(report, prepared))
    if out_dir:
        _write(write_eval(report, Path(out_dir)))


def _pipeline_to_evaluate(ctx, name: str, **given: Any):
    """The settings of the pipeline ``name`` uses, with the options given on the command line on top."""
    from .engines import open_engine
    from .pipelines import check_model, read, resolve

    base = _settings(ctx)
    with open_engine(base) as engine:
        stored = read(engine, name)
    if stored.pipeline is None:
        raise click.BadParameter(f"{name} has no pipeline (`es-rerank tune --apply` or `es-rerank pipeline set` "
                                 "records one)", param_hint="--pipeline")
    resolved = resolve(base, stored.pipeline, given)
    return check_model(resolved, base.pipeline_model_check)


def _parse_depths(depths: str) -> list[int]:
    try:
        values = [int(d) for d in depths.split(",") if d.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {depths!r}", param_hint="--depths") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected integers >= 1, got {depths!r}", param_hint="--depths")
    return values


@cli.command("sweep")
@shared_options
@_with_data_options
@click.option("--depths", default="20,50,100", help="Comma-separated depths.")
@click.option("--tolerance", type=float, default=0.01,
              help="Recommended depth: among depths where reranking beats none, the smallest whose reranked "
                   "recall@k is within this of their best.")
@click.option("--reranker", "reranker_name", type=click.Choice(RERANKER_KINDS[:-1]), default="cross-encoder",
              help="The reranker to sweep.")
@click.pass_context
@_fail_cleanly
def sweep_cmd(ctx, data_dir, split, final_k, fusion, blend, blend_weight, exclude_self, reindex, max_queries, out_dir,
              progress, depths, tolerance, reranker_name):
    """Rerank at several depths: nDCG@10 and recall@k before and after, their paired difference with a
    95% interval, and the added latency, plus a plot; recommends a depth only where reranking beats none."""
    from pathlib import Path

    from .evaluate.report import sweep_sentence, sweep_table, write_sweep
    from .evaluate.sweep import run_sweep

    started = time.perf_counter()
    depth_list = _parse_depths(depths)
    base = _settings(ctx, final_k=final_k, blend=blend, blend_weight=blend_weight)
    if min(depth_list) < base.final_k:
        raise click.BadParameter(f"every depth must be >= final_k ({base.final_k}), got {depths!r}",
                                 param_hint="--depths")
    s, data, searcher, prepared = _eval_setup(ctx, data_dir, split, reindex, progress)
    with searcher:
        reranker = _rerankers(s, (reranker_name,))[reranker_name]
        bar, update = _query_bar("sweeping", progress)
        try:
            report = run_sweep(searcher, data, depths=depth_list, final_k=base.final_k, reranker=reranker,
                               reranker_name=reranker_name, model=_model_of(s, reranker_name), blend=base.blend,
                               blend_weight=base.blend_weight, tolerance=tolerance, fusion=fusion,
                               max_queries=max_queries, exclude_own=exclude_self, on_query=update)
        finally:
            bar.close()
    report = _record(report, prepared, started, reranker_model=_model_of(s, reranker_name))
    _echo(sweep_table(report))
    if report.own_document["note"]:
        _echo("\n" + report.own_document["note"])
    _echo("\n" + sweep_sentence(report))
    _echo("\n" + _wall_line(report, prepared))
    if out_dir:
        _write(write_sweep(report, Path(out_dir)))


def _tune_split(data_dir: str, split: str | None, folds: int | None) -> tuple[str, int | None, str]:
    """The split to tune on and the folds: a dev split when there is one, else k-fold over test."""
    from pathlib import Path

    if split is not None:
        return split, folds, ""
    if (Path(data_dir) / "qrels" / "dev.tsv").is_file():
        return "dev", folds, ""
    folds = 5 if folds is None else folds
    return "test", folds, f"no qrels/dev.tsv: {folds}-fold cross-validation over the test split's judged queries"


@cli.command("tune")
@shared_options
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Collection in BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).")
@click.option("--split", default=None,
              help="Qrels split to tune on. Default: dev when qrels/dev.tsv exists, else test with --folds 5.")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="k-fold cross-validation: choose on k-1 folds, measure on the held-out one (use it when "
                   "there is no dev split).")
@click.option("--metric", default="ndcg@10", help="What to maximise: ndcg@K or recall@K.")
@click.option("--depths", default="10,20,30,50,100",
              help="Comma-separated depths; one rerank pass at the largest serves them all.")
@click.option("--reranker", "reranker_names", multiple=True, type=click.Choice(RERANKER_KINDS[:-1]),
              help="Reranker(s) to try. Repeatable. Default: the configured one (ES_RERANK_RERANKER).")
@click.option("--instructions", default=None, help="LLM rerankers: extra instructions for the prompt.")
@setting_option("fusion", "--fusion")
@_exclude_self_option
@click.option("--latency-queries", type=click.IntRange(min=0), default=20,
              help="Queries to measure the chosen setting's added latency on (0: estimate it from the deep pass).")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of the folds and the bootstrap.")
@click.option("--reindex", is_flag=True, help="Build the collection's evaluation index again.")
@click.option("--max-queries", type=click.IntRange(min=1), default=None, help="Only the first N queries (file order).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write results.json, results.md and report.html here.")
@click.option("--progress/--no-progress", default=True, help="Show progress on stderr.")
@click.option("--blends", default="none,rrf,linear", help="Comma-separated blends to try (none, rrf, linear).")
@click.option("--apply", "apply_what", type=click.Choice(["recommended", "best"]), default=None, is_flag=False,
              flag_value="recommended",
              help="Record the choice as the pipeline of --index: `recommended` (the advice; hybrid when "
                   "reranking does not help) or `best` (the best reranked cell).")
@click.option("--force", is_flag=True, help="With --apply: apply even a pipeline whose interval says it is worse "
                                            "than hybrid.")
@click.pass_context
@_fail_cleanly
def tune_cmd(ctx, data_dir, split, folds, metric, depths, reranker_names, instructions, fusion, exclude_self,
             latency_queries, seed, reindex, max_queries, out_dir, progress, blends, apply_what, force):
    """Choose depth, blend and reranker on judged queries, or learn that reranking does not help.

    Tries every depth x blend (none, rrf, linear with alpha 0.1..0.9) x reranker from one
    rerank pass at the largest depth, picks the best by --metric, and compares it with
    hybrid (95% paired bootstrap interval, wins/ties/losses, added latency). Prints the
    chosen settings as environment variables.
    """
    from pathlib import Path

    from .evaluate.report import tune_comparison, tune_cost, tune_env_lines, tune_latency, tune_table, write_tune
    from .evaluate.tuning import run_tune, tune_depths
    from .evaluate.tune import check_metric

    started = time.perf_counter()
    try:
        check_metric(metric)
        tune_depths(_parse_depths(depths), metric)
    except EsRerankError as e:
        raise click.BadParameter(str(e), param_hint="--metric / --depths") from None
    blend_list = [b.strip() for b in blends.split(",") if b.strip()]
    from .evaluate.tune import BLENDS as TUNE_BLENDS
    if not blend_list or any(b not in TUNE_BLENDS for b in blend_list):
        raise click.BadParameter(f"blends must be some of {', '.join(TUNE_BLENDS)}, got {blends!r}",
                                 param_hint="--blends")
    base = _settings(ctx)
    if apply_what is not None:
        from .engines import open_engine
        from .pipelines import read

        with open_engine(base) as engine:
            read(engine, base.index)  # the index to apply to exists and is ours: check before the long run
    names = list(reranker_names) if reranker_names else [base.reranker]
    if names == ["none"]:
        raise click.BadParameter("the configured reranker is none: name one or more with --reranker",
                                 param_hint="--reranker")
    split, folds, note = _tune_split(data_dir, split, folds)
    if note:
        _echo(note, err=True)
    s, data, searcher, prepared = _eval_setup(ctx, data_dir, split, reindex, progress, extra=out_dir is not None)
    with searcher:
        rerankers = _rerankers(s, names, instructions)
        bar, update = _query_bar("deep rerank pass", progress)
        try:
            report = run_tune(searcher, data, rerankers=rerankers, metric=metric, depths=_parse_depths(depths),
                              folds=folds, fusion=fusion, max_queries=max_queries, exclude_own=exclude_self,
                              latency_queries=latency_queries, seed=seed, on_query=update, blends=blend_list)
        finally:
            bar.close()
    report = _record(report, prepared, started,
                     reranker_models={n: _model_of(s, n) for n in rerankers})
    rec = report.recommendation
    _echo(f"{report.queries} queries of {Path(data_dir).name}/{split}, metric {metric}"
          + (f", {folds}-fold cross-validation" if folds else "") + "\n")
    _echo(tune_table(report))
    if report.own_document["note"]:
        _echo("\n" + report.own_document["note"])
    if report.dropped_depths:
        _echo(f"\ndepths {', '.join(map(str, report.dropped_depths))} left out: below the cut-off of {metric}")
    _echo("\n" + tune_comparison(report))
    _echo(tune_latency(report))
    _echo(tune_cost(report))
    _echo(f"\n{rec.sentence}" + ("" if rec.helps else f" (options: {' '.join(rec.cli_args)})"))
    _echo("\n" + "\n".join(tune_env_lines(report)))
    _echo("\n" + _wall_line(report, prepared))
    if out_dir:
        _write(write_tune(report, Path(out_dir)))
    if apply_what is not None:
        from .engines import open_engine
        from .evaluate.tuning import pipeline_evidence
        from .pipelines import make

        setting = rec.setting if apply_what == "recommended" else report.chosen
        kind = setting.reranker
        pipeline = make(reranker=kind, model=None if setting.is_baseline else _model_of(s, kind),
                        backend=s.reranker_backend if kind == "cross-encoder" else None,
                        depth=None if setting.is_baseline else setting.depth, blend=setting.blend,
                        blend_weight=setting.alpha, evidence=pipeline_evidence(report, setting, seed=seed),
                        how="tune")
        _echo("")
        with open_engine(base) as engine:
            _apply_pipeline(engine, base.index, pipeline, force=force)


# -- export -------------------------------------------------------------------------------------

@cli.command("export-onnx")
@shared_options
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
    """Export MODEL (folder or hub name) to ONNX (and OpenVINO) for the faster backends (needs torch).

    ONNX int8 is dynamic quantization and needs no data. OpenVINO int8 is static quantization:
    it needs --calibration-queries, real queries whose candidates come from the index the model
    will serve (use queries that are not in your evaluation set).
    """
    var = "ES_RERANK_RERANKER" if kind == "cross-encoder" else "ES_RERANK_EMBEDDING"
    if openvino and quantize and not calibration_queries:
        raise click.UsageError("--openvino --quantize int8 needs --calibration-queries FILE")
    try:
        from .export import calibration_from_index, export_onnx, export_openvino, read_queries
    except ImportError as e:
        raise click.ClickException(f"exporting needs torch: pip install 'es-rerank[torch]' ({e})") from None
    if not openvino:
        files = export_onnx(model, out_dir, kind=kind, quantize=quantize)
        backend = "onnx-int8" if quantize else "onnx"
    else:
        calibration = None
        if quantize:
            calibration = calibration_from_index(_settings(ctx), read_queries(calibration_queries), kind=kind,
                                                 depth=calibration_depth)
            _echo(f"calibrating on {len(calibration)} {'pairs' if kind == 'cross-encoder' else 'texts'}")
        files = export_openvino(model, out_dir, kind=kind, quantize=quantize, calibration=calibration)
        backend = "openvino-int8" if quantize else "openvino"
    for path in files:
        size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
        _echo(f"wrote {path} ({size / 1e6:.1f} MB)")
    _echo(f"use it with {var}_MODEL={out_dir} {var}_BACKEND={backend}")




# -- train, distill ----------------------------------------------------------------------------

def _train_searcher(ctx, data_dir: str | None, *, use_index: bool, reindex: bool, progress: bool):
    """A searcher over the index to mine from: the collection's evaluation index (built like `eval`
    builds it, and shared with it), or with --use-index / no --data the configured index."""
    from pathlib import Path

    from .client import Searcher
    from .embedding import build_embedder
    from .engines import open_engine
    from .evaluate.data import BeirData
    from .evaluate.prepare import prepare_index

    s = _settings(ctx, reranker="none")
    engine = open_engine(s)
    embedder = build_embedder(s)
    if data_dir is None or use_index:
        return Searcher(s, engine=engine, embedder=embedder)
    bar = _progress_bar("indexing corpus", "doc", progress)

    def on_progress(report):
        bar.update(report.documents_indexed + len(report.rejected) - bar.n)

    try:
        prepared = prepare_index(engine, BeirData(Path(data_dir), "corpus", {}, {}), s, embedder, reindex=reindex,
                                 on_progress=on_progress)
    finally:
        bar.close()
    _echo(f"{'indexed the corpus into' if prepared.built else 'mining from'} {prepared.name}", err=True)
    s = s.replace(index=prepared.name)
    return Searcher(s, engine=engine, embedder=embedder)


def _holdout(data_dir: str | None, name: str, used: set[str]):
    from pathlib import Path

    from .evaluate.data import load_beir
    from .training import Split

    if data_dir is None or name == "none" or name in used or not (Path(data_dir) / "qrels" / f"{name}.tsv").is_file():
        return None
    return Split.of(load_beir(data_dir, name, check_corpus=False))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _train_progress(enabled: bool):
    def show(p) -> None:
        if not enabled:
            return
        dev = "" if p.dev is None else f" · dev nDCG@10 {p.dev:.4f} (best {p.best:.4f})"
        loss = "" if p.loss is None else f" · loss {p.loss:.4f}"
        _echo(f"step {p.step}/{p.max_steps}{loss}{dev} · ETA {_duration(p.eta_s)}", err=True)
    return show


_training_options = [
    click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                 help="Model folder to write (atomically: it appears only when complete)."),
    click.option("--overwrite", is_flag=True, help="Replace --out if it exists (once the new model is complete)."),
    click.option("--depth", "mine_depth", type=click.IntRange(min=1), default=30, show_default=True,
                 help="Hybrid candidates retrieved per query."),
    click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True),
    click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Groups (train) or pairs (distill) per step."),
    click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None),
    click.option("--max-length", type=click.IntRange(min=8), default=256, show_default=True, help="Tokens per pair."),
    click.option("--seed", type=click.IntRange(min=0), default=12, show_default=True),
    click.option("--use-index", is_flag=True,
                 help="Mine from the configured index (ES_RERANK_INDEX / --index) instead of the collection's "
                      "evaluation index."),
    click.option("--reindex", is_flag=True, help="Build the collection's evaluation index again."),
    click.option("--progress/--no-progress", default=True, help="Show progress on stderr."),
]


def _with_training_options(fn):
    for option in reversed(_training_options):
        fn = option(fn)
    return fn


@cli.command("train")
@shared_options
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Collection in BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).")
@click.option("--split", default="train", show_default=True, help="Qrels split to train on.")
@click.option("--dev-split", default=None, help="Qrels split to stop early on (default: a held-out slice of train).")
@click.option("--holdout-split", default="test", show_default=True,
              help="Split never learned from: its queries may not be in train or dev, its judged documents are "
                   "never positives, negatives or dev candidates ('none' to turn off).")
@click.option("--synthetic", type=click.IntRange(min=2), default=None,
              help="No judgments: pseudo-queries from N documents of the index (titles / leading sentences).")
@click.option("--query-generator", type=click.Choice(["title", "llm"]), default="title", show_default=True,
              help="With --synthetic: each document's title (or leading sentence), or a question the configured "
                   "LLM (ES_RERANK_LLM_*) writes for it.")
@click.option("--base", default=None, help="Model to start from: a cross-encoder, or an encoder (a new head is "
                                            "added). Default: the packaged all-MiniLM-L6-v2.")
@_with_training_options
@click.option("--loss", type=click.Choice(["mnrl", "listnet", "bce"]), default="mnrl", show_default=True,
              help="mnrl: each positive against its hard negatives; listnet: listwise; bce: pointwise.")
@click.option("--skip-top", type=click.IntRange(min=0), default=3, show_default=True,
              help="Candidates ranked 1..N are never negatives (unjudged positives hide there).")
@click.option("--negatives", type=click.IntRange(min=1), default=4, show_default=True,
              help="Hard negatives per positive.")
@click.option("--eval-steps", type=click.IntRange(min=1), default=None,
              help="Evaluate on dev every N steps (default: four times per epoch).")
@click.option("--patience", type=click.IntRange(min=1), default=2, show_default=True,
              help="Stop after N evaluations without a better dev nDCG@10.")
@click.option("--max-steps", type=int, default=-1, help="Stop after N steps (-1: no limit).")
@click.option("--min-queries", type=click.IntRange(min=1), default=20, show_default=True,
              help="Refuse fewer judged training queries than this.")
@click.option("--dev-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Share of train held out for early stopping when there is no --dev-split.")
@click.option("--max-train-queries", type=click.IntRange(min=1), default=None,
              help="Train on a seeded subset of N training queries (a capped run).")
@click.option("--apply", "apply_it", is_flag=True,
              help="Then run the trained model in --index's current pipeline against that pipeline on the dev "
                   "questions, and record it as the index's pipeline only if it wins (95% interval above 0).")
@click.option("--force", is_flag=True, help="With --apply: apply the trained model even when it does not win.")
@click.pass_context
@_fail_cleanly
def train_cmd(ctx, data_dir, split, dev_split, holdout_split, synthetic, query_generator, base, out_dir, overwrite,
              mine_depth, epochs, batch_size, learning_rate, max_length, seed, use_index, reindex, progress, loss,
              skip_top, negatives, eval_steps, patience, max_steps, min_queries, dev_fraction, max_train_queries,
              apply_it, force):
    """Fine-tune a cross-encoder on your judgments (or --synthetic pseudo-queries) and your index.

    Positives come from the qrels; hard negatives are the hybrid candidates not judged
    relevant, below the top --skip-top. Training stops early on the dev nDCG@10 of reranking
    the dev queries' hybrid candidates. The folder works as ES_RERANK_RERANKER_MODEL.
    """
    from pathlib import Path

    from .training import Split
    from .training import prepare as prep
    from .training.trainer import TrainConfig, check_output, train_cross_encoder

    started = time.perf_counter()
    device = _settings(ctx).device  # --device / ES_RERANK_DEVICE, as for the torch backends
    check_output(Path(out_dir), overwrite=overwrite)
    questions = _training_source(ctx, data_dir, synthetic, query_generator)
    if apply_it:
        _pipeline_target(ctx)  # the index to apply to exists and is ours: check before the long run
    config = TrainConfig(**{k: v for k, v in dict(
        base=base, loss=loss, depth=mine_depth, skip_top=skip_top, negatives=negatives, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, max_length=max_length, seed=seed, eval_steps=eval_steps,
        patience=patience, max_steps=max_steps, device=device).items() if v is not None})
    import datasets  # noqa: F401 - the train extra: fail now, not after retrieving every query
    import ranx  # noqa: F401

    train_split = dev = None
    if synthetic is None:
        from .evaluate.data import load_beir

        train_split = Split.of(load_beir(data_dir, split, check_corpus=False))
        dev = Split.of(load_beir(data_dir, dev_split, check_corpus=False)) if dev_split else None
    holdout = _holdout(data_dir, holdout_split, {split, dev_split} if synthetic is None else set())
    if train_split is not None and holdout is not None:  # refuse before indexing anything
        from .training.data import check_disjoint

        check_disjoint(f"held-out split {holdout.name!r}", holdout.queries, f"train split {split!r}",
                       train_split.queries)
    searcher = _train_searcher(ctx, data_dir, use_index=use_index, reindex=reindex, progress=progress)
    with searcher:
        bar, update = _query_bar("retrieving candidates", progress)
        try:
            if synthetic is None:
                prepared = prep.judged(searcher, train_split, dev=dev, holdout=holdout, depth=config.depth,
                                       skip_top=config.skip_top, negatives=config.negatives, min_queries=min_queries,
                                       dev_fraction=dev_fraction, seed=seed, max_train_queries=max_train_queries,
                                       on_query=update)
            else:
                prepared, report = prep.synthetic(searcher, synthetic, depth=config.depth, skip_top=config.skip_top,
                                                  negatives=config.negatives, dev_fraction=dev_fraction, seed=seed,
                                                  holdout=holdout, questions=questions)
                if questions is not None:
                    _echo(_questions_line(questions), err=True)
                _echo(f"synthetic: {report.kept} of {report.sampled} pseudo-queries kept; dropped "
                      f"{report.dropped_not_retrieved} whose document was not among its {config.depth} candidates, "
                      f"{report.dropped_empty} too short, {report.dropped_no_negatives} without negatives", err=True)
        finally:
            bar.close()
    d = prepared.card
    _echo(f"{d['groups']} training groups from {d['train_queries']} queries; dev: {d['dev_queries']} queries "
          f"({d['dev']}); held out: {d.get('held_out_split') or 'none'}", err=True)
    result = train_cross_encoder(prepared.groups, prepared.dev, config, out_dir, positives=prepared.positives,
                                 overwrite=overwrite, card={"data": d, "command": _command_line()},
                                 on_progress=_train_progress(progress))
    card = result.card
    dev_card, tr = card["dev"], card["training"]
    c = dev_card["trained_vs_hybrid"]
    _echo(f"dev nDCG@10 over {dev_card['queries']} queries: hybrid {dev_card['hybrid']:.4f}, base "
          f"{dev_card['base']:.4f}, trained {dev_card['trained']:.4f} (trained - hybrid {c['mean_delta']:+.4f}, "
          f"95% interval [{c['ci_low'] if c['ci_low'] is None else round(c['ci_low'], 4)}, "
          f"{c['ci_high'] if c['ci_high'] is None else round(c['ci_high'], 4)}])")
    if tr["groups_dropped_short"]:
        _echo(f"{tr['groups_dropped_short']} groups had fewer than {config.negatives} hard negatives and were left out",
              err=True)
    _echo(f"{tr['steps']} of {tr['planned_steps']} steps{' (stopped early)' if tr['stopped_early'] else ''}, best "
          f"at step {tr['best_step']}; wall time {time.perf_counter() - started:.0f}s, peak memory "
          f"{tr['peak_rss_mb']:.0f} MB")
    _echo(f"wrote {result.out}: use it with ES_RERANK_RERANKER_MODEL={result.out}")
    if apply_it:
        _train_apply(ctx, data_dir, use_index, prepared.dev, result.out, force=force, seed=seed,
                     dev_name=dev_split or f"held-out slice of {split}" if synthetic is None else "synthetic dev")


def _pipeline_target(ctx):
    """The pipeline of --index now (raises when the index is missing or not es-rerank's)."""
    from .engines import open_engine
    from .pipelines import read

    base = _settings(ctx)
    with open_engine(base) as engine:
        return read(engine, base.index).pipeline


def _train_apply(ctx, data_dir, use_index, dev, model, *, force: bool, seed: int, dev_name: str) -> None:
    """Compare the trained model with --index's current pipeline on ``dev``; apply it if it wins."""
    from pathlib import Path

    from .engines import open_engine
    from .pipelines import resolve
    from .training.promote import compare

    base = _settings(ctx)
    current = resolve(base, _pipeline_target(ctx))
    with _train_searcher(ctx, data_dir, use_index=use_index, reindex=False, progress=False) as searcher:
        verdict = compare(searcher, dev, current, str(model), base, seed=seed, split=dev_name,
                          data=None if data_dir is None else Path(data_dir).name)
    _echo(verdict.sentence())
    if not verdict.wins and not force:
        raise click.ClickException(_clean(
            f"not applied: the trained model does not beat {base.index}'s current pipeline on the held-out dev "
            f"questions; {base.index} keeps it (the model is written: {model}). Add --force to apply it anyway"))
    with open_engine(base) as engine:
        _apply_pipeline(engine, base.index, verdict.pipeline, force=force)


def _training_source(ctx, data_dir: str | None, synthetic: int | None, generator: str):
    """Refuse a `train` command whose options name no training data, or both kinds; the LLM question
    writer for --query-generator llm (None for judged queries or titles)."""
    if data_dir is None and synthetic is None:
        raise click.UsageError("give --data DIR (judged queries) or --synthetic N (pseudo-queries), or both")
    given = [f"--{n.replace('_', '-')}" for n in ("split", "dev_split", "max_train_queries")
             if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE]
    if synthetic is not None and given:
        raise click.UsageError(f"{', '.join(given)} choose judged queries, and --synthetic trains on pseudo-queries "
                               "only (with --data, the collection gives just the index): drop one or the other")
    return _questions(ctx, generator, synthetic)


def _questions(ctx, generator: str, synthetic: int | None):
    """The LLM question writer for ``--query-generator llm`` (None for titles)."""
    if generator == "title":
        return None
    if synthetic is None:
        raise click.UsageError("--query-generator llm writes the pseudo-queries of --synthetic N: give --synthetic")
    from .rerankers import llm_config
    from .training.questions import LLMQuestions

    return LLMQuestions(llm_config(_settings(ctx)))


def _questions_line(questions) -> str:
    return (f"questions: {questions.requests} written by the LLM {questions.config.model!r} "
            f"({questions.prompt_tokens} prompt + {questions.completion_tokens} completion tokens); "
            f"{questions.unusable} replies held no question")


@cli.command("distill")
@shared_options
@click.option("--teacher", required=True, help="Cross-encoder to imitate (folder or hub name).")
@click.option("--layers", type=click.IntRange(min=1), required=True, help="Transformer layers the student keeps.")
@click.option("--queries", "queries_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Queries, one per line (or JSONL with 'text').")
@click.option("--synthetic", type=click.IntRange(min=5), default=None,
              help="Pseudo-queries from N documents of the index instead of --queries.")
@click.option("--query-generator", type=click.Choice(["title", "llm"]), default="title", show_default=True,
              help="With --synthetic: titles (or leading sentences), or questions written by the configured LLM.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Mine from this BEIR collection's evaluation index (its test judgments are never used).")
@click.option("--backend", "speed_backend", default="onnx", show_default=True,
              help="Backend the speed-up at depth 50 is measured on.")
@click.option("--loss", type=click.Choice(["mse", "listnet"]), default="mse", show_default=True,
              help="mse: reproduce each teacher logit; listnet: match each query's softmax over its candidates "
                   "(the order within a query).")
@_with_training_options
@click.pass_context
@_fail_cleanly
def distill_cmd(ctx, teacher, layers, queries_file, synthetic, query_generator, data_dir, speed_backend, loss,
                out_dir, overwrite, mine_depth, epochs, batch_size, learning_rate, max_length, seed, use_index, reindex,
                progress):
    """Distill --teacher into its first --layers layers, trained on its scores over your candidates.

    Reports fidelity on held-out queries (Spearman, top-5 overlap) and the speed-up against
    the teacher at depth 50 on --backend.
    """
    from pathlib import Path

    from .training.data import sample_documents
    from .training.distill import DistillConfig, distill
    from .training.questions import query_maker
    from .training.trainer import check_output

    started = time.perf_counter()
    device = _settings(ctx).device
    check_output(Path(out_dir), overwrite=overwrite)
    if (queries_file is None) == (synthetic is None):
        raise click.UsageError("give exactly one of --queries FILE or --synthetic N")
    questions = _questions(ctx, query_generator, synthetic)
    config = DistillConfig(**{k: v for k, v in dict(
        teacher=teacher, layers=layers, depth=mine_depth, loss=loss, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, max_length=max_length, seed=seed, speed_backend=speed_backend,
        device=device).items() if v is not None})
    import datasets  # noqa: F401

    if queries_file is not None:
        from .export.openvino import read_queries

        queries = read_queries(queries_file)
    holdout = _holdout(data_dir, "test", set())
    searcher = _train_searcher(ctx, data_dir, use_index=use_index, reindex=reindex, progress=progress)
    with searcher:
        if synthetic is not None:
            exclude = frozenset(d for q in holdout.qrels for d in holdout.qrels[q]) if holdout else frozenset()
            docs = sample_documents(searcher.engine, searcher.settings.index, synthetic, seed=seed, exclude=exclude)
            queries = [q for q in map(query_maker(docs, questions), docs) if len(q.split()) >= 2]
            if questions is not None:
                _echo(_questions_line(questions), err=True)
        bar, update = _query_bar("retrieving candidates", progress)
        try:
            result = distill(searcher, queries, config, out_dir, overwrite=overwrite,
                             card={"command": _command_line()}, on_progress=_train_progress(progress),
                             on_query=update)
        finally:
            bar.close()
    f, sp = result.card["fidelity"], result.card["speed"]
    _echo(f"fidelity on {f['queries']} held-out queries: Spearman {f['spearman_mean']:.3f}, top-5 overlap "
          f"{f['top5_overlap_mean']:.3f}")
    _echo(f"speed on {sp['backend']} at depth {sp['depth']} ({sp['candidates_mean']:g} candidates/query): teacher "
          f"{sp['teacher_s_per_query'] * 1000:.0f} ms, student {sp['student_s_per_query'] * 1000:.0f} ms per query "
          f"({sp['speedup']}x)")
    _echo(f"wall time {time.perf_counter() - started:.0f}s; wrote {result.out}: use it with "
          f"ES_RERANK_RERANKER_MODEL={result.out}")


# -- serve -----------------------------------------------------------------------------------

@cli.command("serve")
@shared_options
@setting_option("serve_host", "--host")
@setting_option("serve_port", "--port")
@setting_option("serve_queue", "--queue")
@setting_option("serve_timeout", "--timeout")
@setting_option("serve_max_body", "--max-body")
@setting_option("serve_max_window", "--max-window")
@setting_option("serve_batch_wait_ms", "--batch-wait-ms")
@setting_option("serve_workers", "--workers")
@setting_option("reranker", "--reranker", "reranker_kind")
@setting_option("serve_ui", "--ui/--no-ui")
@click.option("--qrels", "qrels_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Relevance judgments (TREC qrels or BEIR tsv) for the comparison page: judged hits are "
                   "marked and each side's nDCG@10 shown.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A BEIR collection whose judgments (and query texts) the comparison page uses.")
@click.option("--split", default="test", help="The qrels split of --data.")
@click.option("--no-warm-up", is_flag=True, help="Load the models at the first request instead of before listening.")
@click.pass_context
@_fail_cleanly
def serve_cmd(ctx, serve_host, serve_port, serve_queue, serve_timeout, serve_max_body, serve_max_window,
              serve_batch_wait_ms, serve_workers, reranker_kind, serve_ui, qrels_file, data_dir, split, no_warm_up):
    """Serve Elasticsearch's API with local reranking, in front of the cluster at ES_URL.

    Point any Elasticsearch client at http://HOST:PORT: a search whose retriever is a
    text_similarity_reranker is reranked here, POST /_inference/rerank/{cross-encoder|llm|listwise}
    scores documents, and every other request passes through unchanged. Each caller's own
    Authorization goes to the cluster; ES_API_KEY / ES_USERNAME are not used.
    Open http://HOST:PORT/_es_rerank/ui in a browser to compare hybrid and reranked rankings.
    """
    from .server import is_loopback, serve
    from .server.ui import load_judgments

    if qrels_file is not None and data_dir is not None:
        raise click.UsageError("give --qrels or --data, not both")

    s = _settings(ctx, serve_host=serve_host, serve_port=serve_port, serve_queue=serve_queue,
                  serve_timeout=serve_timeout, serve_max_body=serve_max_body, serve_max_window=serve_max_window,
                  serve_batch_wait_ms=serve_batch_wait_ms, serve_workers=serve_workers, reranker=reranker_kind,
                  serve_ui=serve_ui)
    judgments = load_judgments(qrels_file=qrels_file, data_dir=data_dir, split=split)
    if s.api_key is not None or s.username is not None:
        _echo("note: serve ignores ES_API_KEY / ES_USERNAME: each caller's own credentials go to the cluster",
              err=True)
    where = f"[{s.serve_host}]" if ":" in s.serve_host else s.serve_host
    public = "" if is_loopback(s.serve_host) else " [NOT loopback]"
    _echo(f"es-rerank serve: http://{where}:{s.serve_port} -> {s.safe_url} (reranker {s.reranker}, "
          f"queue {s.serve_queue}, timeout {s.serve_timeout:g}s"
          f"{f', {s.serve_workers} workers (queue and models per worker)' if s.serve_workers > 1 else ''}){public}",
          err=True)
    if s.serve_ui:
        judged = f" ({len(judgments.qrels)} judged queries of {judgments.source})" if judgments is not None else ""
        _echo(f"comparison page: http://{where}:{s.serve_port}/_es_rerank/ui{judged}", err=True)
    verbose = (ctx.find_root().obj or {}).get("verbose", 0)
    serve(s, warm_up=not no_warm_up, log_level="warning" if not verbose else "info" if verbose == 1 else "debug",
          judgments=judgments, judgments_from={"qrels_file": qrels_file, "data_dir": data_dir, "split": split}
          if judgments is not None else None)


__all__ = ["cli", "main", "setting_option", "shared_options", "parse_filters"]
