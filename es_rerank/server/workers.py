"""``es-rerank serve --workers N``: N server processes on one port, sharing nothing but the cluster.

uvicorn's supervisor binds the port once and starts N worker processes (``spawn``, so no
model or thread is inherited); the kernel hands each new connection to one of them. Each
worker builds its own app with :func:`worker_app`: its own models, its own micro-batcher,
its own admission queue (``serve_queue`` requests per worker) and its own metrics, which
name the worker (``es_rerank_worker_info{pid}`` and the ``X-ES-Rerank-Worker`` header), so
a scrape or an answer says which worker gave it. A worker that dies is replaced by the
supervisor.

The settings travel to the workers in one environment variable, :data:`SPEC_VAR`, without
their secrets: each worker reads those from its own environment, as a single server does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

from ..config import Settings
from ..errors import ConfigError

logger = logging.getLogger(__name__)

SPEC_VAR = "ES_RERANK_SERVE_WORKER_SPEC"
"""What each worker builds: the settings (secrets left out), the judgments to load, whether to warm up."""

MAX_WORKERS = 64


def worker_spec(settings: Settings, *, warm_up: bool, judgments: dict[str, Any] | None) -> str:
    """The JSON handed to every worker: settings without secrets, the judgments' source, warm-up."""
    secret = {f.name for f in dataclasses.fields(settings) if f.metadata.get("secret")}
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name not in secret}
    return json.dumps({"settings": values, "warm_up": warm_up, "judgments": judgments})


def worker_app() -> Any:
    """Build one worker's app from :data:`SPEC_VAR` (uvicorn calls this factory in each worker process).

    Raises:
        ConfigError: The variable is missing or not a spec.
    """
    from . import create_app
    from .ui import load_judgments

    raw = os.environ.get(SPEC_VAR)
    if not raw:
        raise ConfigError(f"{SPEC_VAR} is not set: start workers with `es-rerank serve --workers N`")
    try:
        spec = json.loads(raw)
        settings = Settings.from_env(**spec["settings"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{SPEC_VAR} does not hold a worker spec: {e}") from e
    judgments = load_judgments(**spec["judgments"]) if spec.get("judgments") else None
    app = create_app(settings, judgments=judgments)
    if spec.get("warm_up"):
        app.state.server.service.warm_up()
        if judgments is not None:
            judgments.warm_up()
    logger.info("serve worker pid %d ready", os.getpid())
    return app


def run_workers(settings: Settings, *, host: str, port: int, workers: int, warm_up: bool, log_level: str,
                judgments: dict[str, Any] | None = None) -> None:
    """Run ``workers`` server processes on ``host:port`` until interrupted.

    Args:
        settings: Server settings (their secrets are read again by each worker from its environment).
        host: Address to bind.
        port: Port.
        workers: Processes, 2 to 64.
        warm_up: Each worker loads its models before it takes connections.
        log_level: uvicorn's log level.
        judgments: ``load_judgments`` keyword arguments for the comparison page, or None.

    Raises:
        ConfigError: ``workers`` is out of range.
    """
    import uvicorn

    if isinstance(workers, bool) or not isinstance(workers, int) or not 2 <= workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be an integer from 2 to {MAX_WORKERS} here, got {workers!r}",
                          setting="serve_workers")
    os.environ[SPEC_VAR] = worker_spec(settings, warm_up=warm_up, judgments=judgments)
    uvicorn.run("es_rerank.server.workers:worker_app", factory=True, workers=workers, host=host, port=port,
                log_level=log_level, server_header=False, timeout_keep_alive=30)
