"""The ASGI app: Elasticsearch's API in front of the cluster, with local reranking.

Routes:

* ``GET|POST /{index}/_search`` and ``/_search``: a body whose ``retriever`` is a
  ``text_similarity_reranker`` naming one of our rerankers is answered here; any other
  search passes through.
* ``POST /_inference/rerank/{inference_id}`` for our rerankers (``cross-encoder``, ``llm``,
  ``listwise``): Elasticsearch's rerank inference API. Other ids pass through.
* ``GET /_es_rerank/health`` and ``GET /_es_rerank/metrics`` (Prometheus).
* ``GET|HEAD /``: the cluster's banner; where it has none (Elasticsearch's integ-test build
  answers 405), one built from the node's info, so clients' ``info()`` and ``ping()`` work.
* ``GET /_es_rerank/ui``: the comparison page, and its endpoints (:mod:`es_rerank.server.ui`);
  off with ``ES_RERANK_SERVE_UI=false``.
* everything else: passed through to the cluster unchanged, streamed both ways.

Reranking requests are admitted up to ``serve_queue`` at a time; more get 429 with
``Retry-After`` at once. An admitted request runs in a worker thread (the event loop never
runs a model) and is answered within ``serve_timeout`` (else 504); its thread keeps its
slot until it ends, so work can never pile up beyond the queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Callable, Mapping

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..config import Settings
from ..embedding import Embedder
from ..engines import Engine
from ..rerankers import Reranker
from .answers import BANNER_NODE_FIELDS, root_banner
from .errors import ApiError, bad_request, from_exception
from .metrics import Metrics, outcome_of
from .pipeline import RerankService, caller_headers
from .proxy import Passthrough, body_chunks
from .translate import is_rerank_search, parse_inference, parse_search
from .ui import (COMPARE_PATH, JUDGED_PATH, SECURITY_HEADERS, STATIC_FILES, UI_PATH, Judgments, compare,
                 parse_compare, static_file)

logger = logging.getLogger(__name__)

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
_NOT_JSON = object()


class Admission:
    """At most ``capacity`` reranking requests in progress; the rest are turned away at once.

    Thread-safe: slots are taken on the event loop and given back by worker threads.
    """

    def __init__(self, capacity: int, metrics: Metrics):
        self.capacity = capacity
        self.metrics = metrics
        self.in_flight = 0
        self._seconds: float | None = None  # moving average of a request's time in its slot
        self._lock = threading.Lock()
        metrics.queue_capacity.set(capacity)

    def try_acquire(self) -> bool:
        with self._lock:
            if self.in_flight >= self.capacity:
                return False
            self.in_flight += 1
            self.metrics.queue_depth.set(self.in_flight)
            return True

    def release(self, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.metrics.queue_depth.set(self.in_flight)
            self._seconds = seconds if self._seconds is None else 0.8 * self._seconds + 0.2 * seconds

    @property
    def retry_after(self) -> int:
        """Seconds worth waiting before a retry: about one request's time in its slot, at least 1."""
        with self._lock:
            return max(1, math.ceil(self._seconds or 1.0))


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise bad_request(f"duplicate field [{key}] in the request body", type="x_content_parse_exception")
        seen[key] = value
    return seen


#: Deepest nesting of arrays and objects read from a request body. Python's JSON decoder (and
#: the code that walks a body) recurses once per level: 100,000 "[" would overflow the stack.
#: Real search bodies nest a few dozen levels at most.
MAX_NESTING = 200

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


def nesting(body: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest; brackets inside strings do not count.

    Linear and without recursion, so it measures a body before anything recursive reads it.

    Example:
        >>> nesting(b'{"a": [1, {"b": "]]}{[["}]}'), nesting(b"[" * 100_000)
        (3, 100000)
    """
    steps = _JSON_STRING.sub(b"", body).translate(_STEP, _NOT_BRACKET)
    if not steps:
        return 0
    return max(0, int(np.cumsum(np.frombuffer(steps, dtype=np.int8), dtype=np.int64).max()))


def parse_json(body: bytes, content_type: str | None) -> Any:
    """The decoded body; ``_NOT_JSON`` for an empty body or a non-JSON media type (SMILE, CBOR ...).

    Raises:
        ApiError: 400 for a JSON body that does not parse, repeats a field or nests deeper
            than :data:`MAX_NESTING` levels.
    """
    if content_type and "json" not in content_type.lower():
        return _NOT_JSON
    if not body.strip():
        return _NOT_JSON
    depth = nesting(body)
    if depth > MAX_NESTING:
        raise bad_request(f"request body is nested {depth} levels deep; the limit is {MAX_NESTING}",
                          type="x_content_parse_exception")
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except UnicodeDecodeError as e:
        raise bad_request(f"request body is not UTF-8: {e.reason} at byte {e.start}", type="parse_exception") from None
    except json.JSONDecodeError as e:
        raise bad_request(f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                          type="parse_exception") from None


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refused once it is larger than ``limit`` bytes (nothing more is read)
    or when its next bytes do not arrive within ``timeout`` seconds.

    Raises:
        ApiError: 413 naming the size and the limit; 408 for a body that stopped arriving.
    """
    def too_large(size: int) -> ApiError:
        return ApiError(413, "content_too_long_exception",
                        f"request body is larger than the limit of {limit} bytes (got {size}; "
                        "ES_RERANK_SERVE_MAX_BODY)")

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared))
    chunks, size = [], 0
    async for chunk in body_chunks(request, timeout):
        size += len(chunk)
        if size > limit:
            raise too_large(size)
        chunks.append(chunk)
    return b"".join(chunks)


def decoded_body(body: bytes, encoding: str | None, limit: int) -> bytes | None:
    """The body without its ``Content-Encoding`` (gzip or deflate, as Elasticsearch's clients send
    with ``http_compress``); None for an encoding we do not read (the request then passes through).

    Raises:
        ApiError: 400 for a body that does not decompress; 413 when it decompresses to more
            than ``limit`` bytes (a small bomb is refused, never expanded).
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise bad_request(f"request body is not valid {encoding}: {e}", type="parse_exception") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ApiError(413, "content_too_long_exception",
                       f"request body decompresses to more than the limit of {limit} bytes (ES_RERANK_SERVE_MAX_BODY)")
    return out


class Server:
    """The app's state: the service, the passthrough, admission, worker threads and metrics.

    Args:
        settings: Server settings (``serve_*``, the cluster URL, models).
        engine, embedder, rerankers, batch_wait_ms: See :class:`~es_rerank.server.pipeline.RerankService`.
        max_window: Largest ``rank_window_size`` (and inference inputs). Defaults to
            ``settings.serve_max_window``.
        judgments: Relevance judgments for the comparison page. Defaults to None.
    """

    def __init__(self, settings: Settings, *, engine: Engine | None = None, embedder: Embedder | None = None,
                 rerankers: Mapping[str, Reranker] | None = None, batch_wait_ms: float | None = None,
                 max_window: int | None = None, judgments: Judgments | None = None):
        self.settings = settings
        self.judgments = judgments
        self.metrics = Metrics()
        self.admission = Admission(settings.serve_queue, self.metrics)
        self.service = RerankService(settings, engine=engine, embedder=embedder, rerankers=rerankers,
                                     metrics=self.metrics, batch_wait_ms=batch_wait_ms,
                                     in_flight=lambda: self.admission.in_flight)
        self.proxy = Passthrough(settings)
        self.pool = ThreadPoolExecutor(max_workers=settings.serve_queue, thread_name_prefix="es-rerank-serve")
        self.max_window = settings.serve_max_window if max_window is None else max_window
        self.timeout = settings.serve_timeout
        self.secrets = settings.secrets

    async def close(self) -> None:
        await self.proxy.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        await run_in_threadpool(self.service.close)

    # -- answers ----------------------------------------------------------------------------------

    def product_headers(self) -> dict[str, str]:
        """``X-Elastic-Product``, which Elasticsearch's clients require on every success."""
        name = self.service.engine_name or self.settings.engine
        return {} if name == "opensearch" else {"X-Elastic-Product": "Elasticsearch"}

    def json_response(self, payload: Any, status: int = 200, *, headers: Mapping[str, str | list[str]] | None = None,
                      pretty: bool = False, product: bool = True) -> Response:
        """A JSON answer; ``product=False`` leaves out ``X-Elastic-Product`` (a relayed refusal has none)."""
        content = json.dumps(payload, ensure_ascii=False, allow_nan=False, indent=2 if pretty else None)
        response = Response(content.encode("utf-8"), status_code=status, media_type="application/json",
                            headers=self.product_headers() if product else None)
        for name, value in (headers or {}).items():  # a list repeats the header (WWW-Authenticate)
            for item in value if isinstance(value, list) else [value]:
                response.raw_headers.append((name.lower().encode("latin-1"), item.encode("latin-1")))
        return response

    def error_response(self, error: ApiError, endpoint: str, started: float, *, pretty: bool = False) -> Response:
        outcome = "cluster_error" if error.relayed else outcome_of(error.status, error.type)
        self.metrics.outcome(endpoint, outcome, time.perf_counter() - started)
        if error.status >= 500:
            logger.warning("%s answered %d: %s", endpoint, error.status, error.reason)
        return self.json_response(error.body(), error.status, headers=error.headers, pretty=pretty,
                                  product=not error.relayed)

    async def admitted(self, endpoint: str, started: float, work: Callable[[float], Any], *,
                       pretty: bool = False) -> Response:
        """Run ``work(deadline)`` in a worker thread if a slot is free, else answer 429."""
        if not self.admission.try_acquire():
            wait = self.admission.retry_after
            return self.error_response(ApiError(
                429, "es_rejected_execution_exception",
                f"es-rerank is busy: {self.admission.capacity} reranking requests are in progress "
                f"(ES_RERANK_SERVE_QUEUE); retry in {wait}s", headers={"Retry-After": str(wait)}), endpoint, started)
        # the clock started when the request came in, not when it was admitted
        deadline = time.monotonic() + self.timeout - (time.perf_counter() - started)
        began = time.perf_counter()
        try:
            job = self.pool.submit(work, deadline)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self.admission.release(0.0)
            return self.error_response(ApiError(503, "es_rerank_unavailable_exception", "es-rerank is shutting down"),
                                       endpoint, started)
        job.add_done_callback(lambda _: self.admission.release(time.perf_counter() - began))
        waiting = asyncio.wrap_future(job)
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception())  # a late failure is not "unretrieved"
        try:
            payload = await asyncio.wait_for(asyncio.shield(waiting), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            return self.error_response(ApiError(
                504, "es_rerank_timeout_exception",
                f"no answer within {self.timeout:g}s (ES_RERANK_SERVE_TIMEOUT)"), endpoint, started, pretty=pretty)
        except Exception as e:  # noqa: BLE001 - every failure becomes an Elasticsearch error answer
            if time.monotonic() >= deadline:  # e.g. the reranker gave up at the deadline: a timeout, not a fault
                return self.error_response(ApiError(
                    504, "es_rerank_timeout_exception",
                    f"no answer within {self.timeout:g}s (ES_RERANK_SERVE_TIMEOUT)"), endpoint, started, pretty=pretty)
            return self.error_response(from_exception(e, secrets=self.secrets), endpoint, started, pretty=pretty)
        self.metrics.outcome(endpoint, "ok", time.perf_counter() - started)
        return self.json_response(payload, pretty=pretty)

    async def pass_through(self, request: Request, body: bytes | None = None) -> Response:
        started = time.perf_counter()
        try:
            response = await self.proxy.forward(request, body)
        except ApiError as e:
            return self.error_response(e, "passthrough", started)
        self.metrics.outcome("passthrough", outcome_of(response.status_code), time.perf_counter() - started)
        return response

    # -- routes -------------------------------------------------------------------------------------

    async def search(self, request: Request) -> Response:
        started = time.perf_counter()
        index = request.path_params.get("index")
        try:
            body = await read_body(request, self.settings.serve_max_body, self.settings.serve_body_timeout)
            plain = decoded_body(body, request.headers.get("content-encoding"), self.settings.serve_max_body)
            parsed = _NOT_JSON if plain is None else parse_json(plain, request.headers.get("content-type"))
            if parsed is _NOT_JSON or not is_rerank_search(parsed):
                return await self.pass_through(request, body)  # as it came (still compressed)
            spec = parse_search(parsed, dict(request.query_params), max_window=self.max_window)
            if not self.service.knows(spec.inference_id):  # an inference endpoint of the cluster's own
                return await self.pass_through(request, body)
            # no inference_id: the index's pipeline may name the reranker (RerankService.plan answers
            # the 400 where neither it nor the settings do)
        except ApiError as e:
            return self.error_response(e, "search", started)
        headers = {k.lower(): v for k, v in request.headers.items()}
        return await self.admitted("search", started,
                                   lambda deadline: self.service.search(spec, index, headers, deadline=deadline),
                                   pretty=spec.pretty)

    async def authenticate(self, request: Request) -> Response | None:
        """Ask the cluster who the caller is; its 401/403 answer, relayed, when it refuses them.

        A cluster without security does not know the endpoint (400/404): everyone may rerank,
        as everyone may search. Secured Elasticsearch and OpenSearch authenticate before
        routing, so a caller they refuse is refused here too.
        """
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in caller_headers(
            {k.lower(): v for k, v in request.headers.items()}).items()]
        upstream = await self.proxy.send("GET", self.proxy.base + "/_security/_authenticate", headers, None)
        if upstream.status_code not in (401, 403):
            await upstream.aclose()
            return None
        content = await upstream.aread()
        await upstream.aclose()
        response = Response(content, status_code=upstream.status_code)
        kept = [(k, v) for k, v in upstream.headers.raw
                if k.lower() in (b"content-type", b"www-authenticate", b"x-elastic-product")]
        response.raw_headers = [h for h in response.raw_headers if h[0] == b"content-length"] + kept
        return response

    async def inference(self, request: Request) -> Response:
        started = time.perf_counter()
        inference_id = request.path_params["inference_id"]
        if not self.service.knows(inference_id):
            return await self.pass_through(request)
        try:
            body = await read_body(request, self.settings.serve_max_body, self.settings.serve_body_timeout)
            plain = decoded_body(body, request.headers.get("content-encoding"), self.settings.serve_max_body)
            if plain is None:
                raise bad_request(f"unsupported Content-Encoding {request.headers.get('content-encoding')!r}: "
                                  "send gzip, deflate or none", type="parse_exception")
            parsed = parse_json(plain, request.headers.get("content-type"))
            if parsed is _NOT_JSON:
                raise bad_request("the rerank request needs a JSON body: {\"query\": ..., \"input\": [...]}",
                                  type="parse_exception")
            req = parse_inference(parsed, max_inputs=self.max_window)
            refused = await self.authenticate(request)
        except ApiError as e:
            return self.error_response(e, "inference", started)
        if refused is not None:
            self.metrics.outcome("inference", "cluster_error", time.perf_counter() - started)
            return refused
        pretty = request.query_params.get("pretty") not in (None, "false")
        return await self.admitted("inference", started,
                                   lambda deadline: self.service.infer(inference_id, req, deadline=deadline),
                                   pretty=pretty)

    async def health(self, request: Request) -> Response:
        cluster: dict[str, Any] = {"url": self.proxy.safe_url, "reachable": False, "status": None}
        try:
            upstream = await self.proxy.send("GET", self.proxy.base + "/_cluster/health", [], None)
            content = await upstream.aread()
            await upstream.aclose()
            cluster.update(reachable=True, status=upstream.status_code)
            if upstream.status_code == 200:
                cluster["health"] = json.loads(content).get("status")
            elif upstream.status_code == 401:
                cluster["health"] = "unknown (secured: es-rerank holds no credentials)"
        except ApiError as e:
            cluster["error"] = e.reason
        body = {
            "status": "ok" if cluster["reachable"] else "unavailable",
            "cluster": cluster,
            "engine": self.service.engine_name,
            "rerankers": {"default": self.service.default_inference_id, "available": list(self.service.inference_ids),
                          "batch_wait_ms": self.service.batch_wait_ms},
            "queue": {"in_flight": self.admission.in_flight, "capacity": self.admission.capacity},
            "worker": {"pid": os.getpid()},  # with serve --workers N, the process that answered
        }
        return self.json_response(body, 200 if cluster["reachable"] else 503)

    async def root(self, request: Request) -> Response:
        """``GET /`` and ``HEAD /``: the cluster's own answer, or a banner built from its node info.

        Elasticsearch's clients (``info()``, ``ping()``) and ``curl host:9201/`` expect the
        banner with ``version.number``; a cluster with no handler for ``/`` (Elasticsearch's
        Maven integ-test build answers 405) gets one built from ``GET /_nodes/_local``, asked
        with the caller's own credentials. Any other answer (a banner, a 401) is relayed.
        """
        started = time.perf_counter()
        try:
            upstream = await self.proxy.open(request)
            if upstream.status_code not in (400, 404, 405):
                self.metrics.outcome("passthrough", outcome_of(upstream.status_code), time.perf_counter() - started)
                return await self.proxy.relay(request, upstream)
            await upstream.aclose()
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in caller_headers(
                {k.lower(): v for k, v in request.headers.items()}).items()]
            fields = ",".join(["cluster_name"] + [f"nodes.*.{f}" for f in BANNER_NODE_FIELDS])
            nodes = await self.proxy.send("GET", f"{self.proxy.base}/_nodes/_local?filter_path={fields}", headers, None)
            if nodes.status_code != 200:  # a refusal (401/403) or an error: the cluster's own answer
                self.metrics.outcome("passthrough", outcome_of(nodes.status_code), time.perf_counter() - started)
                return await self.proxy.relay(request, nodes)
            info = json.loads(await nodes.aread())
            await nodes.aclose()
            state = await self.proxy.send(
                "GET", f"{self.proxy.base}/_cluster/state/metadata?filter_path=metadata.cluster_uuid", headers, None)
            uuid = (json.loads(await state.aread()).get("metadata") or {}).get("cluster_uuid") \
                if state.status_code == 200 else None  # a caller without cluster monitor rights: left out
            await state.aclose()
        except ApiError as e:
            return self.error_response(e, "passthrough", started)
        self.metrics.outcome("passthrough", "ok", time.perf_counter() - started)
        if request.method == "HEAD":
            return Response(status_code=200, headers=self.product_headers())
        pretty = request.query_params.get("pretty") not in (None, "false")
        return self.json_response(root_banner(info, uuid), pretty=pretty)

    async def unexpected(self, request: Request, exc: Exception) -> Response:
        """A failure no route turned into an answer: still Elasticsearch's error JSON, never a
        plain-text page (the error is logged with its traceback)."""
        error = from_exception(exc, secrets=self.secrets)
        return self.json_response(error.body(), error.status, headers=error.headers, product=not error.relayed)

    async def metrics_text(self, request: Request) -> Response:
        content, media_type = self.metrics.render()
        return Response(content, media_type=media_type)

    async def other(self, request: Request) -> Response:
        return await self.pass_through(request)

    # -- the comparison page ------------------------------------------------------------------------

    async def ui_file(self, request: Request) -> Response:
        name, media_type = STATIC_FILES[request.url.path[len(UI_PATH):]]
        return Response(static_file(name), media_type=media_type, headers=SECURITY_HEADERS)

    @staticmethod
    def _no_login_box(response: Response) -> Response:
        """The cluster's refusal without ``WWW-Authenticate``: the page shows it; the browser asks nothing."""
        response.raw_headers = [(k, v) for k, v in response.raw_headers if k.lower() != b"www-authenticate"]
        return response

    async def ui_compare(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            if "application/json" not in (request.headers.get("content-type") or "").lower():
                # also keeps other sites' plain form posts out (they cannot send JSON without asking)
                raise ApiError(415, "media_type_header_exception",
                               f"send the request as application/json, got {request.headers.get('content-type')!r}")
            body = await read_body(request, self.settings.serve_max_body, self.settings.serve_body_timeout)
            parsed = parse_json(body, request.headers.get("content-type"))
            spec = parse_compare(None if parsed is _NOT_JSON else parsed, rerankers=self.service.inference_ids,
                                 max_window=self.max_window)
        except ApiError as e:
            return self.error_response(e, "ui_compare", started)
        headers = {k.lower(): v for k, v in request.headers.items()}
        return self._no_login_box(await self.admitted(
            "ui_compare", started,
            lambda deadline: compare(self.service, spec, headers, judgments=self.judgments, deadline=deadline)))

    async def ui_judged(self, request: Request) -> Response:
        """The judged queries (ids, and texts when known), for callers the cluster accepts."""
        refused = await self.authenticate(request)
        if refused is not None:
            return self._no_login_box(refused)
        j = self.judgments
        if j is None:
            return self.json_response({"source": None, "queries": []})
        queries = [{"qid": q, "text": j.queries.get(q)} for q in j.qrels]
        return self.json_response({"source": j.source, "queries": queries})

    async def ui_indices(self, request: Request) -> Response:
        """Names the caller may list (aliases and indices, hidden ones left out), asked of the cluster
        with the caller's credentials; a refusal is the cluster's, without a login box."""
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in caller_headers(
            {k.lower(): v for k, v in request.headers.items()}).items()]
        names: set[str] = set()
        for path, key in (("/_cat/aliases?format=json&h=alias", "alias"), ("/_cat/indices?format=json&h=index",
                                                                            "index")):
            try:
                upstream = await self.proxy.send("GET", self.proxy.base + path, headers, None)
            except ApiError as e:
                return self._no_login_box(self.error_response(e, "ui_indices", time.perf_counter()))
            content = await upstream.aread()
            await upstream.aclose()
            if upstream.status_code != 200:
                response = Response(content, status_code=upstream.status_code, media_type="application/json")
                return response
            names |= {row[key] for row in json.loads(content) if isinstance(row.get(key), str)}
        return self.json_response({"names": sorted(n for n in names if not n.startswith("."))})

    async def ui_missing(self, request: Request) -> Response:
        reason = (f"no such file of the comparison page: {request.url.path}" if self.settings.serve_ui
                  else "the comparison page is off (ES_RERANK_SERVE_UI=false)")
        return self.json_response(ApiError(404, "resource_not_found_exception", reason).body(), 404)


def create_app(settings: Settings | None = None, *, engine: Engine | None = None, embedder: Embedder | None = None,
               rerankers: Mapping[str, Reranker] | None = None, batch_wait_ms: float | None = None,
               max_window: int | None = None, judgments: Judgments | None = None) -> Starlette:
    """The es-rerank server as an ASGI app (run it with uvicorn, or :func:`es_rerank.server.serve`).

    Args:
        settings: Defaults to ``Settings.from_env()``. Credentials in it are never used:
            each caller's own ``Authorization`` goes to the cluster.
        engine: An engine whose client holds no credentials. Defaults to one detected on first use.
        embedder: The default query embedder. Defaults to ``settings``'s.
        rerankers: Inference id -> reranker, replacing the built-in ones of those ids.
        batch_wait_ms: Micro-batching wait; 0 turns batching off. Defaults to
            ``settings.serve_batch_wait_ms``.
        max_window: Largest ``rank_window_size``. Defaults to ``settings.serve_max_window`` (1000).
        judgments: Relevance judgments the comparison page marks hits with
            (:func:`es_rerank.server.ui.load_judgments`). Defaults to None.

    Returns:
        The app; ``app.state.server`` is its :class:`Server` (``service.warm_up()`` loads the models).

    Example:
        >>> import uvicorn                                                  # doctest: +SKIP
        >>> uvicorn.run(create_app(), host="127.0.0.1", port=9201)          # doctest: +SKIP
    """
    settings = settings if settings is not None else Settings.from_env()
    server = Server(settings, engine=engine, embedder=embedder, rerankers=rerankers, batch_wait_ms=batch_wait_ms,
                    max_window=max_window, judgments=judgments)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await server.close()

    routes = [
        Route("/_es_rerank/health", server.health, methods=["GET"]),
        Route("/_es_rerank/metrics", server.metrics_text, methods=["GET"]),
    ]
    if settings.serve_ui:
        routes += [Route(UI_PATH + suffix, server.ui_file, methods=["GET"]) for suffix in STATIC_FILES]
        routes += [Route(COMPARE_PATH, server.ui_compare, methods=["POST"]),
                   Route(JUDGED_PATH, server.ui_judged, methods=["GET"]),
                   Route(UI_PATH + "/indices", server.ui_indices, methods=["GET"])]
    else:
        routes.append(Route(UI_PATH, server.ui_missing, methods=ALL_METHODS))
    routes.append(Route(UI_PATH + "/{rest:path}", server.ui_missing, methods=ALL_METHODS))
    routes += [
        Route("/_inference/rerank/{inference_id}", server.inference, methods=["POST"]),
        Route("/", server.root, methods=["GET", "HEAD"]),
        Route("/_search", server.search, methods=["GET", "POST"]),
        Route("/{index}/_search", server.search, methods=["GET", "POST"]),
        Route("/{path:path}", server.other, methods=ALL_METHODS),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Exception: server.unexpected})
    app.state.server = server
    return app
