"""The LLM client against real local HTTP servers that misbehave on purpose.

Each server is ``http.server`` in a thread on a free port. It answers what a hostile or
broken deployment would (a redirect to another host, an error echoing the key, a reply
with NaN log-probabilities, no answer at all) and records what it received, so the tests
can check what left this process, not only what came back. The hung server listens on a
port from ``HUNG_PORTS`` (19400-19499), the range these tests may use.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from es_rerank.errors import RerankerError
from es_rerank.rerankers.llm import FALLBACK_SCORE, ListwiseReranker, LLMConfig, LLMPointwiseReranker

from conftest import report_line

KEY = "sk-test-0123456789abcdef"


class Server:
    """A local HTTP server: ``answer(handler, body) -> (status, headers, body)``; requests recorded."""

    def __init__(self, answer):
        self.answer = answer
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self._reply(body)

            def do_GET(self):
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": ""})
                self._reply("")

            def _reply(self, received):
                status, headers, body = outer.answer(self, received)
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = self._bind(Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def _bind(handler):
        return ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def judgment(yes_logprob: float = -0.2, no_logprob: float = -2.0) -> str:
    """A completions reply with first-token log-probabilities (json writes NaN as NaN, as some servers do)."""
    return json.dumps({"choices": [{"text": " Yes", "logprobs": {"top_logprobs": [
        {" Yes": yes_logprob, " No": no_logprob}]}}], "usage": {"prompt_tokens": 50, "completion_tokens": 1}})


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_not_followed_and_the_key_stays_home(status):
    """A 3xx to another server: an error naming the status and Location; the other server sees nothing."""
    with Server(lambda h, _: (200, {"Content-Type": "application/json"}, judgment())) as elsewhere:
        location = f"http://mallory:hunter2@127.0.0.1:{elsewhere.port}/v1/completions"
        with Server(lambda h, _: (status, {"Location": location}, "")) as configured:
            cfg = LLMConfig(base_url=f"http://127.0.0.1:{configured.port}/v1", api_key=KEY, api="completions",
                            retries=2, timeout=5)
            sent = []
            for reranker in (LLMPointwiseReranker(cfg), ListwiseReranker(cfg)):
                with pytest.raises(RerankerError) as info:
                    reranker.score("close my account", ["To close your account open Settings.", "Pricing"])
                reranker.close()
                message = str(info.value)
                assert f"answered {status} redirecting to http://***@127.0.0.1:{elsewhere.port}/v1/completions" in message
                assert "set ES_RERANK_LLM_BASE_URL to the final URL" in message
                assert "hunter2" not in message and KEY not in message
                sent.append(len(configured.requests) - sum(sent))
            # a 3xx is never retried: pointwise sent at most one request per candidate (the
            # second may be cancelled once the first failed), listwise one for its window
            assert 1 <= sent[0] <= 2 and sent[1] == 1
            # the configured server got the key: it is the one the user chose
            assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in configured.requests)
        assert elsewhere.requests == []  # neither the key nor the request ever reached the other host


def test_url_credentials_go_as_basic_auth_and_never_into_errors(caplog):
    user, password = "alice", "s3cr/t#x?"
    seen: list[str] = []

    def refuse(h, _):
        seen.append(h.headers.get("Authorization", ""))
        # a server that echoes what it got, as some error pages do
        return 401, {"Content-Type": "text/plain"}, f"bad credentials {h.headers.get('Authorization')} for {password}"

    caplog.set_level(logging.DEBUG)
    with Server(refuse) as server:
        url = f"http://{user}:s3cr%2Ft%23x%3F@127.0.0.1:{server.port}/v1"
        cfg = LLMConfig(base_url=url, api="completions", timeout=5)
        reranker = LLMPointwiseReranker(cfg)
        with pytest.raises(RerankerError, match=f"LLM server at http://127.0.0.1:{server.port}/v1/completions "
                                                "answered 401: bad credentials") as info:
            reranker.score("q", ["d"])
    assert seen == ["Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()]
    assert server.requests[0]["path"] == "/v1/completions"
    token = seen[0].split()[1]
    shown = [str(info.value), repr(info.value.__cause__), repr(cfg), repr(reranker), caplog.text]
    for text in shown:
        assert "s3cr" not in text and token not in text, text


def test_unreachable_url_with_credentials_names_the_host_only():
    cfg = LLMConfig(base_url="http://alice:hunter2@127.0.0.1:9/v1", api="completions", timeout=2, retries=0)
    with pytest.raises(RerankerError, match=r"LLM server at http://127.0.0.1:9/v1/completions failed after 1 attempts"
                       ) as info:
        LLMPointwiseReranker(cfg).score("q", ["d"])
    assert "hunter2" not in str(info.value) and "alice" not in str(info.value)


def test_error_body_echoing_the_api_key_is_redacted():
    with Server(lambda h, _: (403, {}, f"key {h.headers.get('Authorization')} is not allowed")) as server:
        cfg = LLMConfig(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=KEY, api="completions", timeout=5)
        with pytest.raises(RerankerError, match=r"answered 403: key Bearer \*\*\* is not allowed") as info:
            LLMPointwiseReranker(cfg).score("q", ["d"])
    assert KEY not in str(info.value)


@pytest.mark.parametrize("yes,no", [(math.nan, -2.0), (-0.2, math.nan), (math.inf, -2.0), (0.9, -2.0),
                                    (-math.inf, -math.inf)])
def test_non_finite_logprobs_from_the_wire_become_the_fallback(yes, no):
    """NaN arrives as a JSON literal that Python parses; the score is the documented fallback, counted."""
    good, bad = judgment(), judgment(yes, no)

    def answer_by_prompt(h, received):
        prompt = json.loads(received)["prompt"]
        return 200, {"Content-Type": "application/json"}, bad if "<document>poisoned</document>" in prompt else good

    with Server(answer_by_prompt) as server:
        cfg = LLMConfig(base_url=f"http://127.0.0.1:{server.port}/v1", api="completions", timeout=5)
        scored = LLMPointwiseReranker(cfg).score_with_usage("q", ["fine", "poisoned", "fine too"])
    assert scored.scores[1] == FALLBACK_SCORE
    assert all(math.isfinite(s) for s in scored.scores)
    assert scored.scores[0] == scored.scores[2] == pytest.approx(math.exp(-0.2) / (math.exp(-0.2) + math.exp(-2.0)))
    assert scored.usage.fallbacks == 1 and scored.usage.requests == 3 and scored.usage.prompt_tokens == 150


def test_non_object_json_is_an_error_not_a_crash():
    with Server(lambda h, _: (200, {"Content-Type": "application/json"}, '["Yes"]')) as server:
        cfg = LLMConfig(base_url=f"http://127.0.0.1:{server.port}/v1", api="completions", timeout=5, retries=1)
        with pytest.raises(RerankerError, match="ValueError: expected a JSON object, got list"):
            LLMPointwiseReranker(cfg).score("q", ["d"])
        assert len(server.requests) == 2  # retried once, like any unreadable body


# -- a server that never answers: cancellation ------------------------------------------------------

HUNG_PORTS = range(19400, 19500)


class HungServer(Server):
    """Reads each request, records it, then never answers until the test ends.

    ``answer(handler, body)`` may still answer some requests: return None to hang.
    """

    def __init__(self, answer=lambda h, body: None):
        self.arrived = threading.Event()
        self.release = threading.Event()
        outer = self

        def hang_or_answer(handler, body):
            outer.arrived.set()
            reply = answer(handler, body)
            if reply is None:
                outer.release.wait(600)
                raise ConnectionAbortedError("released unanswered")  # ends the handler: no reply is sent
            return reply

        super().__init__(hang_or_answer)
        self.httpd.handle_error = lambda request, address: None  # the abort above is the point, not a failure

    @staticmethod
    def _bind(handler):
        for port in HUNG_PORTS:
            try:
                return ThreadingHTTPServer(("127.0.0.1", port), handler)
            except OSError:
                continue
        raise RuntimeError(f"no free port in {HUNG_PORTS.start}-{HUNG_PORTS.stop - 1}")

    def __exit__(self, *exc):
        self.release.set()
        super().__exit__(*exc)


def _wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the requests never arrived"
        time.sleep(0.02)


def _call_in_thread(fn):
    """Run ``fn`` in a thread; returns a dict that gets ``error`` (or ``result``) and ``took`` (s)."""
    out: dict = {}

    def run():
        began = time.monotonic()
        try:
            out["result"] = fn()
        except Exception as e:  # noqa: BLE001 - handed to the test to assert on
            out["error"] = e
        out["took"] = time.monotonic() - began

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    out["thread"] = thread
    return out


@pytest.mark.parametrize("kind", ["pointwise", "listwise"])
def test_close_cancels_calls_blocked_on_a_server_that_never_answers(request, kind):
    """close() ends a call in flight at once; it raises RerankerError and sends no retry, and
    nothing of the call is sent after it (neither its queued candidates nor its later windows)."""
    with HungServer() as server:
        cfg = LLMConfig(base_url=f"http://127.0.0.1:{server.port}/v1", api="completions", timeout=300, retries=2,
                        concurrency=2)
        reranker = LLMPointwiseReranker(cfg) if kind == "pointwise" else ListwiseReranker(cfg, window=2, step=1)
        call = _call_in_thread(lambda: reranker.score("q", ["a", "b", "c", "d", "e"]))
        in_flight = 2 if kind == "pointwise" else 1  # two candidates (three wait their turn), or the first window
        _wait_for(lambda: len(server.requests) == in_flight)
        began = time.monotonic()
        closing = _call_in_thread(reranker.close)
        for thread in (closing["thread"], call["thread"]):
            thread.join(60)  # a bound far below the 900 s the requests and retries would take
        assert not closing["thread"].is_alive() and "error" not in closing, "close() waited for the hung requests"
        assert not call["thread"].is_alive(), "the call did not end when the reranker was closed"
        took = time.monotonic() - began
        assert isinstance(call.get("error"), RerankerError), call
        assert "was cancelled" in str(call["error"])
        time.sleep(0.5)  # a retry, were one sent, would have arrived by now
        assert len(server.requests) == in_flight, "a cancelled request was retried, or the call went on"
    report_line(request, f"{kind}: the call ended {took:.2f} s after close()")


def test_one_failed_request_ends_the_call_without_waiting_for_the_hung_ones(request):
    """A 400 for one candidate fails the call at once; the request still hanging is cancelled."""
    def answer(h, body):
        return (400, {}, "bad candidate") if "<document>bad</document>" in json.loads(body)["prompt"] else None

    with HungServer(answer) as server:
        cfg = LLMConfig(base_url=f"http://127.0.0.1:{server.port}/v1", api="completions", timeout=300, concurrency=2)
        reranker = LLMPointwiseReranker(cfg)
        call = _call_in_thread(lambda: reranker.score("q", ["slow", "bad"]))
        call["thread"].join(60)
        assert not call["thread"].is_alive(), "the call waited for the hung request"
        assert isinstance(call.get("error"), RerankerError) and "answered 400: bad candidate" in str(call["error"])
        closing = _call_in_thread(reranker.close)  # returns once the hung request's thread has ended
        closing["thread"].join(60)
        assert not closing["thread"].is_alive(), "the hung request was not cancelled when the call failed"
    report_line(request, f"the call failed after {call['took']:.2f} s; close() took {closing['took']:.2f} s")


@pytest.mark.es
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_query_command_stops_at_once_when_interrupted_during_llm_calls(request, signum, sample_index, cli_env):
    """``es-rerank query --reranker llm`` against a server that never answers: the signal ends it.

    The requests would take 3 x 300 s (timeout and retries). SIGINT (Ctrl-C) ends the
    command with "interrupted", SIGTERM with status 143; neither prints a traceback.
    """
    with HungServer() as server:
        env = dict(os.environ, **cli_env, ES_RERANK_LLM_BASE_URL=f"http://127.0.0.1:{server.port}/v1",
                   ES_RERANK_LLM_API="completions", ES_RERANK_LLM_TIMEOUT="300", HF_HUB_OFFLINE="1")
        # a runner started in the background by a non-interactive shell ignores SIGINT, and a child
        # inherits that: give the command the disposition a terminal gives it
        proc = subprocess.Popen([sys.executable, "-m", "es_rerank", "query", "reset my password", "--reranker", "llm"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            if not server.arrived.wait(180):
                proc.kill()
                pytest.fail(f"no LLM request arrived:\n{proc.communicate()[0]}")
            time.sleep(0.5)  # the other requests of the pool reach the server too
            began = time.monotonic()
            proc.send_signal(signum)
            out, _ = proc.communicate(timeout=60)  # far below the 900 s the requests would take
            took = time.monotonic() - began
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    report_line(request, f"{signal.Signals(signum).name}: query exited {took:.2f} s after the signal "
                         f"({len(server.requests)} LLM requests were in flight)")
    assert "Traceback" not in out, out
    if signum == signal.SIGINT:
        assert proc.returncode == 1 and "Error: interrupted" in out, out
    else:
        assert proc.returncode == 128 + signal.SIGTERM, out
