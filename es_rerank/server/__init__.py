"""``es-rerank serve``: an Elasticsearch-compatible HTTP endpoint with local reranking.

Point any Elasticsearch client at the server instead of the cluster: searches whose
retriever is a ``text_similarity_reranker`` are reranked here with the configured
cross-encoder (or LLM), rerank inference requests are answered here, and everything else
passes through to the cluster unchanged, with the caller's own credentials.

Example:
    >>> from es_rerank.server import create_app, serve
    >>> serve(Settings.from_env(), host="127.0.0.1", port=9201)   # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any

from ..config import Settings
from .app import Server, create_app
from .errors import ApiError

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only reaches this machine.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, warm_up: bool = True,
          log_level: str = "warning", judgments_from: dict[str, Any] | None = None, **app_options: Any) -> None:
    """Run the server until interrupted: one process (uvicorn, one event loop), or with
    ``settings.serve_workers`` > 1 that many processes on the port (:mod:`.workers`).

    Args:
        settings: Server settings.
        host: Address to bind. Defaults to ``settings.serve_host`` (loopback).
        port: Port. Defaults to ``settings.serve_port`` (9201).
        warm_up: Load the embedder and the default reranker before listening. Defaults to True.
        log_level: uvicorn's log level. Defaults to ``warning``.
        judgments_from: With several workers, the ``load_judgments`` arguments each worker loads
            its comparison-page judgments with (``app_options`` cannot cross processes). Defaults to none.
        **app_options: Passed to :func:`create_app` (one process only).
    """
    import uvicorn

    host = settings.serve_host if host is None else host
    port = settings.serve_port if port is None else port
    if not is_loopback(host):
        logger.warning("es-rerank serve binds %s: reachable from other machines. Every search still needs the "
                       "cluster's permission, but the rerank inference endpoint of an unsecured cluster is open "
                       "to anyone who can connect", host)
    if settings.serve_workers > 1:
        from .workers import run_workers

        run_workers(settings, host=host, port=port, workers=settings.serve_workers, warm_up=warm_up,
                    log_level=log_level, judgments=judgments_from)
        return
    app = create_app(settings, **app_options)
    if warm_up:
        app.state.server.service.warm_up()
        if app.state.server.judgments is not None:
            app.state.server.judgments.warm_up()
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False, timeout_keep_alive=30)


class ServerThread:
    """Runs an app with uvicorn in a background thread (tests, benchmarks, notebooks).

    Args:
        app: The ASGI app (:func:`create_app`).
        host: Address. Defaults to ``127.0.0.1``.
        port: Port; 0 picks a free one. Defaults to 0.

    Example:
        >>> with ServerThread(create_app(settings)) as running:             # doctest: +SKIP
        ...     httpx.get(running.url + "/_es_rerank/health").json()["status"]
        'ok'
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="on", server_header=False))
        self.thread = threading.Thread(target=self.server.run, name="es-rerank-serve", daemon=True)

    def start(self, *, timeout: float = 30.0) -> "ServerThread":
        """Start serving; returns once the socket listens.

        Raises:
            RuntimeError: uvicorn did not start within ``timeout`` seconds.
        """
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self, *, timeout: float = 30.0) -> None:
        """Stop serving and wait for the thread (and the app's shutdown) to end."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["create_app", "serve", "is_loopback", "Server", "ServerThread", "ApiError"]
