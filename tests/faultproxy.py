"""A fault-injecting HTTP proxy between es-rerank and a real cluster (Jepsen-style, on loopback).

Every request is forwarded to the real cluster; at the one request chosen with :meth:`FaultProxy.arm`
the cluster still receives and applies it, and then the proxy injects the fault:

- ``delay``: the answer is held past the client's timeout, then the connection is closed;
- ``drop``: the connection is closed without an answer (the cluster applied the request);
- ``sigint`` / ``sigterm`` / ``sigkill``: the signal goes to the client process while it waits
  for the answer (``pid``; by default this process), then the connection is closed;
- ``cut``: no answer, and from then on every connection is closed at once (the client can no
  longer change anything: what the cluster sees of a process killed at that moment);
- ``hold``: the request is held (not forwarded) until :meth:`release`, then forwarded normally.

Nothing here imitates the cluster: answers are the cluster's own, or none.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import urlsplit

FAULTS = ("delay", "drop", "sigint", "sigterm", "cut")
_SIGNALS = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade", "content-length"}


class FaultProxy:
    """Forward to ``upstream``; inject one fault at the n-th request after :meth:`arm`.

    Args:
        upstream: The real cluster's URL (``http://127.0.0.1:9200``).
        delay: Seconds a ``delay`` fault holds the answer (set it above the client's timeout).
    """

    def __init__(self, upstream: str, *, delay: float = 3.0):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 9200)
        self.delay = delay
        self.log: list[tuple[str, str]] = []  # (method, path) of every request since the last arm/reset
        self.injected: tuple[str, str, str] | None = None  # (fault, method, path) once injected
        self._lock = threading.Lock()
        self._armed: tuple[int, str, int] | None = None
        self._cut = False
        self._held = threading.Event()
        self._release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fault-proxy")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        """Forget the log and any fault; forward everything again."""
        with self._lock:
            self.log = []
            self._armed = None
            self._cut = False
            self.injected = None
            self._held.clear()
            self._release.clear()

    def arm(self, n: int, fault: str, *, pid: int | None = None) -> None:
        """Inject ``fault`` at the ``n``-th request (1-based) from now."""
        if fault not in FAULTS + ("sigkill", "hold"):
            raise ValueError(f"unknown fault {fault!r}")
        self.reset()
        with self._lock:
            self._armed = (n, fault, os.getpid() if pid is None else pid)

    def wait_held(self, timeout: float = 60) -> bool:
        """Wait until a ``hold`` fault holds its request."""
        return self._held.wait(timeout)

    def release(self) -> None:
        self._release.set()

    # -- one request --------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else None
        with self._lock:
            if self._cut:
                fault = "refuse"
            else:
                self.log.append((h.command, h.path))
                fault = None
                if self._armed is not None and len(self.log) == self._armed[0]:
                    fault, pid = self._armed[1], self._armed[2]
                    self.injected = (fault, h.command, h.path)
                    if fault == "cut":
                        self._cut = True
        if fault == "refuse":
            self._close(h)
            return
        if fault == "hold":
            self._held.set()
            self._release.wait()
            fault = None
        status, headers, data = self._forward(h.command, h.path, dict(h.headers), body)
        if fault is None:
            self._answer(h, status, headers, data)
            return
        if fault == "delay":
            time.sleep(self.delay)
        elif fault in _SIGNALS:
            os.kill(pid, _SIGNALS[fault])
            time.sleep(0.2)  # let the signal land while the client still waits for this answer
        self._close(h)

    def _forward(self, method: str, path: str, headers: dict, body: bytes | None) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            out = {k: v for k, v in headers.items() if k.lower() not in _HOP | {"host"}}
            if body is not None:
                out["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=out)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP], data
        finally:
            conn.close()

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, status: int, headers: list, data: bytes) -> None:
        h.send_response_only(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
        h.wfile.flush()

    @staticmethod
    def _close(h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@dataclass(frozen=True)
class Case:
    """One faulted run: the fault, at which request, what the run gave, and every request it sent.

    ``outcome`` is the run's result or the exception it raised; ``log`` the requests as the proxy saw
    them (a client retry shifts the numbering against an unfaulted run: ``request`` is the one hit).
    """

    n: int
    fault: str
    outcome: object
    log: tuple[tuple[str, str], ...]

    @property
    def request(self) -> tuple[str, str] | None:
        return self.log[self.n - 1] if len(self.log) >= self.n else None

    def sent(self, method: str, prefix: str) -> bool:
        """Whether a request like this reached the cluster (every logged request was forwarded)."""
        return any(m == method and p.startswith(prefix) for m, p in self.log)


def walk(proxy: FaultProxy, run: Callable[[], object], n_requests: int, faults=FAULTS) -> Iterator[Case]:
    """Run ``run`` once per request number and fault, each with that fault armed; yield each :class:`Case`."""
    for n in range(1, n_requests + 1):
        for fault in faults:
            proxy.arm(n, fault)
            try:
                outcome = run()
            except BaseException as e:  # noqa: BLE001 - the fault's effect is what the caller checks
                outcome = e
            log = tuple(proxy.log)
            proxy.reset()
            yield Case(n, fault, outcome, log)
