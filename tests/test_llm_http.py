"""The LLM client against real local HTTP servers that misbehave on purpose.

Each server is ``http.server`` in a thread on a free port. It answers what a hostile or
broken deployment would (a redirect to another host, an error echoing the key, a reply
with NaN log-probabilities) and records what it received, so the tests can check what
left this process, not only what came back.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from es_rerank.errors import RerankerError
from es_rerank.rerankers.llm import FALLBACK_SCORE, ListwiseReranker, LLMConfig, LLMPointwiseReranker

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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

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
