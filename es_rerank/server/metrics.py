"""Prometheus metrics of the server, in a registry of its own (several apps may share a process).

Exposed at ``GET /_es_rerank/metrics``:

* ``es_rerank_requests_total{endpoint, outcome}``: ``endpoint`` is ``search``, ``inference``,
  ``ui_compare`` (the comparison page's searches) or ``passthrough``; ``outcome`` is ``ok``, ``bad_request``, ``rejected`` (429, queue full),
  ``timeout``, ``cluster_error`` (the cluster answered an error or could not be reached),
  ``reranker_error`` or ``error``;
* ``es_rerank_request_seconds{endpoint}``, ``es_rerank_retrieval_seconds``,
  ``es_rerank_rerank_seconds``: latency histograms;
* ``es_rerank_pairs_scored_total{inference_id}``: (query, candidate) pairs scored;
* ``es_rerank_batch_pairs``: pairs per batched cross-encoder call;
* ``es_rerank_queue_depth`` / ``es_rerank_queue_capacity``: requests admitted now / at most;
* ``es_rerank_reranker_fallbacks_total``: answers served in retrieval order because the
  reranker failed and failures are allowed;
* ``es_rerank_worker_info{pid}``: 1, naming the process that answered. Every figure above is
  that process's own: with ``serve --workers N`` each worker batches, queues and counts on its
  own, and a scrape through the shared port reaches one worker (scrape each, or sum by ``pid``).
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PAIR_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)
OUTCOMES = ("ok", "bad_request", "rejected", "timeout", "cluster_error", "reranker_error", "error")


class Metrics:
    """The server's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("es_rerank_requests", "Requests answered, by endpoint and outcome",
                                ["endpoint", "outcome"], registry=r)
        self.request_seconds = Histogram("es_rerank_request_seconds", "Time to answer a request",
                                         ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.retrieval_seconds = Histogram("es_rerank_retrieval_seconds",
                                           "First stage: embedding and the cluster's searches",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.rerank_seconds = Histogram("es_rerank_rerank_seconds", "Second stage: scoring and ordering",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.pairs = Counter("es_rerank_pairs_scored", "(query, candidate) pairs scored", ["inference_id"],
                             registry=r)
        self.batch_pairs = Histogram("es_rerank_batch_pairs", "Pairs per batched cross-encoder call",
                                     buckets=PAIR_BUCKETS, registry=r)
        self.queue_depth = Gauge("es_rerank_queue_depth", "Rerank requests admitted and not yet finished",
                                 registry=r)
        self.queue_capacity = Gauge("es_rerank_queue_capacity", "Rerank requests admitted at most (then 429)",
                                    registry=r)
        self.worker = Gauge("es_rerank_worker_info", "The serve process that answered this scrape", ["pid"],
                            registry=r)
        self.worker.labels(str(os.getpid())).set(1)
        self.fallbacks = Counter("es_rerank_reranker_fallbacks",
                                 "Answers in retrieval order because the reranker failed (failures allowed)",
                                 registry=r)

    def outcome(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(endpoint, outcome).inc()
        self.request_seconds.labels(endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def outcome_of(status: int, error_type: str | None = None) -> str:
    """The ``outcome`` label for an HTTP status (and error type) we answered."""
    if status < 400:
        return "ok"
    if status == 429:
        return "rejected"
    if status == 504:
        return "timeout"
    if error_type is not None and "reranker" in error_type:
        return "reranker_error"
    if status in (502, 503) or (error_type is not None and "cluster" in error_type):
        return "cluster_error"
    return "bad_request" if status < 500 else "error"
