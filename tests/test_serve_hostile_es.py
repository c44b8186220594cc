"""``es-rerank serve`` as a real process, sent bodies no client should send.

The server is ``python -m es_rerank serve`` on a port from ``PORTS`` (19500-19599, the range
these tests may use) in front of the cluster at ES_URL, with a short
``ES_RERANK_SERVE_BODY_TIMEOUT``. Requests are written byte by byte on raw sockets: a body
nested 100,000 deep, and bodies that stop arriving after their headers and a few bytes. Each
gets Elasticsearch's error JSON, and the server keeps answering everyone else meanwhile.
The times measured are reported, and bounded only far above the setting: the failure these
tests catch is an answer that never comes.
"""

import json
import os
import select
import socket
import subprocess
import sys
import time

import pytest

from conftest import report_line

pytestmark = pytest.mark.es

PORTS = range(19500, 19600)
BODY_TIMEOUT = 2.0
NEVER = 60.0  # a socket read this long means the server would have waited for ever


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


@pytest.fixture(scope="module")
def serve_url(es_url):
    """The server, models not loaded: no request here gets as far as a model."""
    port = _free_port()
    env = dict(os.environ, ES_URL=es_url, ES_RERANK_SERVE_BODY_TIMEOUT=str(BODY_TIMEOUT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "es_rerank", "serve", "--port", str(port), "--no-warm-up"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"es-rerank serve did not start:\n{proc.communicate()[0]}")
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out, out


class Answer:
    def __init__(self, raw: bytes, took: float):
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        self.body = _dechunk(body) if self.headers.get("transfer-encoding") == "chunked" else body
        self.took = took

    def json(self):
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, data = out + rest[:n], rest[n + 2:]


def send(address: str, request: bytes) -> socket.socket:
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=NEVER)
    sock.sendall(request)
    return sock


def answer(sock: socket.socket, since: float) -> Answer:
    """Read the response on ``sock`` to the end (every request asks to close); ``since`` starts its clock."""
    raw = b""
    with sock:
        while chunk := sock.recv(65536):
            raw += chunk
    assert raw, "the server closed the connection without an answer"
    return Answer(raw, time.monotonic() - since)


def post(path: str, body: bytes, *, length: int | None = None) -> bytes:
    """A request whose headers announce ``length`` bytes of body (default: all of ``body``)."""
    length = len(body) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: es-rerank\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode() + body


def assert_es_error(resp: Answer, status: int, type_: str, reason: str) -> None:
    err = resp.json()
    assert resp.status == status and err["status"] == status, err
    assert err["error"]["type"] == type_ and err["error"]["root_cause"][0]["type"] == type_, err
    assert reason in err["error"]["reason"], err


DEEP = b'{"retriever":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
PATHS = ["/_search", "/some-index/_search", "/_inference/rerank/cross-encoder"]


@pytest.mark.parametrize("path", PATHS)
def test_a_body_nested_100000_deep_is_a_400(request, serve_url, path):
    began = time.monotonic()
    resp = answer(send(serve_url, post(path, DEEP)), began)
    assert_es_error(resp, 400, "x_content_parse_exception", "request body is nested 100001 levels deep; the limit is")
    report_line(request, f"{path}: 100,000-deep body answered 400 in {resp.took * 1000:.0f} ms")


@pytest.mark.parametrize("path", PATHS + ["/_bulk"])
def test_a_stalled_body_is_a_408_after_the_body_timeout(request, serve_url, path):
    """Headers announce 500 bytes, 9 arrive, then nothing: 408 with Connection: close.

    ``/_bulk`` passes through to the cluster streamed: the stall is caught there too.
    """
    began = time.monotonic()
    resp = answer(send(serve_url, post(path, b'{"query":', length=500)), began)
    assert_es_error(resp, 408, "es_rerank_body_timeout_exception",
                    f"no bytes for {BODY_TIMEOUT:g}s after 9 bytes (ES_RERANK_SERVE_BODY_TIMEOUT)")
    assert resp.headers["connection"] == "close"
    assert BODY_TIMEOUT <= resp.took < NEVER
    report_line(request, f"{path}: stalled body answered 408 after {resp.took:.2f} s "
                         f"(ES_RERANK_SERVE_BODY_TIMEOUT={BODY_TIMEOUT:g})")


def test_stalled_bodies_hold_up_nobody_else(request, serve_url):
    """Four stalled requests wait for their 408s while the health check and searches are answered."""
    began = time.monotonic()
    stalled = [send(serve_url, post(path, b'{"size": 0, ', length=500)) for path in PATHS + ["/_bulk"]]
    health = answer(send(serve_url, b"GET /_es_rerank/health HTTP/1.1\r\nHost: es-rerank\r\n"
                                    b"Connection: close\r\n\r\n"), began)
    search = answer(send(serve_url, post("/_search", json.dumps({"size": 0, "query": {"match_all": {}}}).encode())),
                    began)
    ready, _, _ = select.select(stalled, [], [], 0)
    assert ready == [], "a stalled request was answered before the others: it did not wait for its timeout"
    assert health.status == 200 and health.json()["status"] == "ok"
    assert search.status == 200 and "hits" in search.json()
    answers = [answer(sock, began) for sock in stalled]
    assert [a.status for a in answers] == [408] * 4
    report_line(request, f"while 4 bodies stalled: health in {health.took * 1000:.0f} ms, search in "
                         f"{search.took * 1000:.0f} ms; the 408s after {min(a.took for a in answers):.2f}-"
                         f"{max(a.took for a in answers):.2f} s")


def test_a_slow_body_that_keeps_coming_is_read_whole(serve_url):
    """The timeout is for a pause, not for the whole body: bytes every 0.5 s for longer than it are fine."""
    body = json.dumps({"size": 0, "query": {"match_all": {}}}).encode()
    pieces = [body[i:i + 8] for i in range(0, len(body), 8)]
    assert len(pieces) * 0.5 > BODY_TIMEOUT
    sock = send(serve_url, post("/_search", b"", length=len(body)))
    began = time.monotonic()
    for piece in pieces:
        time.sleep(0.5)
        sock.sendall(piece)
    resp = answer(sock, began)
    assert resp.status == 200 and "hits" in resp.json()
    assert resp.took > BODY_TIMEOUT
