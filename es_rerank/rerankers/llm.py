"""LLM rerankers over any OpenAI-compatible chat/completions API.

Two styles, as in the literature:

- :class:`LLMPointwiseReranker` asks the model, for each candidate, whether it is
  relevant, and turns the answer into a number: ``P(yes) / (P(yes) + P(no))`` from
  the returned token log-probabilities where the server gives them, else 1.0 / 0.0
  parsed from the text. Free-text ``instructions`` ("prefer recent documents") are
  folded into the prompt.
- :class:`ListwiseReranker` (RankGPT-style) shows the model numbered candidates and
  asks for an ordering; a sliding window walks lists longer than the window from the
  back to the front, and every returned permutation is validated and repaired.

A reply that cannot be used gets a defined fallback (pointwise: :data:`FALLBACK_SCORE`,
below every real score; listwise: the window keeps its incoming order). Fallbacks are
counted in :meth:`usage`, never dropped silently. Network failures after the retries
raise :class:`~es_rerank.errors.RerankerError` (the searcher may then fall back to the
retrieval order when asked to).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import ConfigError, RerankerError

logger = logging.getLogger(__name__)

FALLBACK_SCORE = -1.0
DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"


@dataclass
class LLMConfig:
    """Where and how to call the LLM.

    Attributes:
        base_url: API root ending in ``/v1``. Defaults to a local llama.cpp/vLLM server.
        model: Model name sent with each request. Defaults to ``local``.
        api_key: Bearer token (``ES_RERANK_LLM_API_KEY``); never logged.
        timeout: Seconds per request. Defaults to 60.
        retries: Extra attempts on connection errors, 429 and 5xx. Defaults to 2.
        concurrency: Requests in flight at once (pointwise). Defaults to 4.
        api: ``chat`` (``/chat/completions``, for instruction-tuned models; default) or
            ``completions`` (``/completions``, for base models or servers without a chat
            template).
    """

    base_url: str = DEFAULT_BASE_URL
    model: str = "local"
    api_key: str | None = None
    timeout: float = 60.0
    retries: int = 2
    concurrency: int = 4
    api: str = "chat"

    def __post_init__(self) -> None:
        if self.api not in ("chat", "completions"):
            raise ConfigError(f"LLM api must be 'chat' or 'completions', got {self.api!r}")
        if self.timeout <= 0:
            raise ConfigError(f"LLM timeout must be > 0, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"LLM retries must be >= 0, got {self.retries}")
        if self.concurrency < 1:
            raise ConfigError(f"LLM concurrency must be >= 1, got {self.concurrency}")

    def __repr__(self) -> str:
        key = None if self.api_key is None else "***"
        return (f"LLMConfig(base_url={self.base_url!r}, model={self.model!r}, api_key={key!r}, "
                f"timeout={self.timeout}, retries={self.retries}, concurrency={self.concurrency}, api={self.api!r})")


class LLMClient:
    """A minimal, thread-safe client for the OpenAI-compatible text endpoints."""

    def __init__(self, config: LLMConfig):
        self.config = config

    def generate(self, prompt: str, **params: Any) -> dict[str, Any]:
        """Send ``prompt`` as one user message (chat) or as the raw prompt (completions)."""
        if self.config.api == "chat":
            return self.post("/chat/completions", {"messages": [{"role": "user", "content": prompt}], **params})
        return self.post("/completions", {"prompt": prompt, **params})

    def post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST a request; retry transient failures (connection, 429, 5xx) with exponential backoff.

        Raises:
            RerankerError: The server is unreachable, times out, or answers an error
                after the retries (the message never includes the API key).
        """
        url = self.config.base_url.rstrip("/") + path
        body = json.dumps({"model": self.config.model, **payload}).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        last: Exception | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.config.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                last = e
                if e.code != 429 and e.code < 500:
                    detail = e.read().decode("utf-8", "replace")[:300]
                    raise RerankerError(f"LLM server at {url} answered {e.code}: {detail}") from e
            except (urllib.error.URLError, TimeoutError, OSError, ValueError) as e:
                last = e
        raise RerankerError(f"LLM server at {url} failed after {self.config.retries + 1} attempts: {last}") from last


class _Usage:
    """Thread-safe running counters; callers read deltas around a call."""

    FIELDS = ("requests", "prompt_tokens", "completion_tokens", "fallbacks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, **kwargs: int) -> None:
        with self._lock:
            for k, v in kwargs.items():
                self._counts[k] += int(v)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _shorten(text: str, max_words: int) -> str:
    words = text.split()
    return " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")


# -- pointwise -----------------------------------------------------------------------

def pointwise_prompt(query: str, document: str, instructions: str | None = None) -> str:
    """The relevance question for one candidate, ending where the answer goes.

    Everything goes in one user turn (some chat templates drop system messages), with
    two worked examples so that base models answer in the same Yes/No form.

    Example:
        >>> pointwise_prompt("q", "d").splitlines()[-3:]
        ['Query: q', 'Document: d', 'Relevant:']
    """
    head = "Judge whether each document is relevant to its search query. Answer Yes or No."
    if instructions:
        head += f"\nAlso follow these instructions from the user: {' '.join(instructions.split())}"
    return (f"{head}\n\n"
            "Query: reset my password\nDocument: Choose Forgot password on the sign-in page.\nRelevant: Yes\n\n"
            "Query: reset my password\nDocument: Paid plans keep file versions for 180 days.\nRelevant: No\n\n"
            f"Query: {query}\nDocument: {document}\nRelevant:")


def _token_word(token: str) -> str:
    return re.sub(r"[^a-z]", "", token.lower())


def _first_token_alternatives(choice: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(token, logprob) pairs for the first generated token, from chat or completions logprobs."""
    logprobs = choice.get("logprobs") or {}
    content = logprobs.get("content")
    if content:  # chat: [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]
        first = content[0]
        alts = first.get("top_logprobs") or [first]
        return [(str(a.get("token", "")), float(a["logprob"])) for a in alts if "logprob" in a]
    top = logprobs.get("top_logprobs")
    if top and isinstance(top[0], Mapping):  # completions: [{token: logprob, ...}, ...]
        return [(str(t), float(lp)) for t, lp in top[0].items() if lp is not None]
    return []


def pointwise_score(reply: Mapping[str, Any]) -> float | None:
    """Turn a reply into a relevance score in [0, 1], or None when it cannot be read.

    With log-probabilities: ``P(yes) / (P(yes) + P(no))`` over the first token's top
    alternatives (a word missing from the list gets the smallest listed probability,
    an upper bound). Without: 1.0 for an answer starting with yes, 0.0 for no.
    """
    try:
        choice = reply["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(choice, Mapping):
        return None
    text = choice.get("text")
    if text is None:
        text = (choice.get("message") or {}).get("content") or ""
    alternatives = _first_token_alternatives(choice)
    probs: dict[str, float] = {}
    for token, logprob in alternatives:
        word = _token_word(token)
        if word in ("yes", "no"):
            probs[word] = probs.get(word, 0.0) + math.exp(logprob)
    if probs:
        floor = min(math.exp(lp) for _, lp in alternatives)
        p_yes, p_no = probs.get("yes", floor), probs.get("no", floor)
        return p_yes / (p_yes + p_no)
    word = _token_word(text.strip().split()[0]) if text.strip() else ""
    if word.startswith("yes"):
        return 1.0
    if word.startswith("no"):
        return 0.0
    return None


def reply_text(reply: Mapping[str, Any]) -> str:
    """The generated text of a chat or completions reply ('' when absent)."""
    try:
        choice = reply["choices"][0]
    except (KeyError, IndexError, TypeError):
        return ""
    if not isinstance(choice, Mapping):
        return ""
    if choice.get("text") is not None:
        return str(choice["text"])
    return str((choice.get("message") or {}).get("content") or "")


class LLMPointwiseReranker:
    """Scores each (query, candidate) with an LLM's yes/no relevance judgment.

    Args:
        config: Server, model, key, timeout, retries, concurrency.
        instructions: Free text folded into the prompt (e.g. "prefer recent documents").
        max_words: Words of each candidate shown to the model. Defaults to 200.

    Example:
        >>> r = LLMPointwiseReranker(LLMConfig(base_url="http://127.0.0.1:8080/v1"))  # doctest: +SKIP
        >>> r.score("close account", ["How to close your account", "Pricing"])  # doctest: +SKIP
        [0.93, 0.08]
    """

    def __init__(self, config: LLMConfig | None = None, *, instructions: str | None = None, max_words: int = 200):
        self.config = config if config is not None else LLMConfig()
        self.instructions = instructions
        self.max_words = max_words
        self.name = f"llm:{self.config.model}"
        self._client = LLMClient(self.config)
        self._usage = _Usage()
        self._pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="llm-rerank")

    def usage(self) -> dict[str, int]:
        """Running totals: requests, prompt/completion tokens, fallbacks."""
        return self._usage.snapshot()

    def _one(self, query: str, text: str) -> float:
        prompt = pointwise_prompt(query, _shorten(text, self.max_words), self.instructions)
        if self.config.api == "chat":
            reply = self._client.generate(prompt, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=10)
        else:
            reply = self._client.generate(prompt, max_tokens=1, temperature=0.0, logprobs=10)
        usage = reply.get("usage") or {}
        self._usage.add(requests=1, prompt_tokens=usage.get("prompt_tokens", 0),
                        completion_tokens=usage.get("completion_tokens", 0))
        score = pointwise_score(reply)
        if score is None:
            self._usage.add(fallbacks=1)
            logger.warning("unreadable LLM judgment %r; using fallback score %s",
                           str(reply.get("choices"))[:200], FALLBACK_SCORE)
            return FALLBACK_SCORE
        return score

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        return list(self._pool.map(lambda t: self._one(query, t), texts))


# -- listwise ------------------------------------------------------------------------

def listwise_prompt(query: str, passages: Sequence[str], instructions: str | None = None) -> str:
    """RankGPT's request: numbered passages, then an ``[i] > [j]`` ordering, in one user turn."""
    n = len(passages)
    parts = [f"I will provide you with {n} passages, each indicated by a numerical identifier []. "
             f"Rank the passages based on their relevance to the search query: {query}"]
    if instructions:
        parts.append(f"Also follow these instructions from the user: {' '.join(instructions.split())}")
    parts.append("")
    parts += [f"[{i}] {' '.join(p.split())}" for i, p in enumerate(passages, start=1)]
    parts.append(f"\nSearch query: {query}\nRank the {n} passages above based on their relevance to the search "
                 "query, most relevant first. The output format should be [] > [], e.g., [2] > [1]. "
                 "Only respond with the ranking, do not say anything else.\nRanking:")
    return "\n".join(parts)


@dataclass(frozen=True)
class Permutation:
    """A repaired ordering of ``n`` items (0-based) and what had to be repaired."""

    order: tuple[int, ...]
    unknown: int
    repeated: int
    missing: int

    @property
    def repaired(self) -> bool:
        return bool(self.unknown or self.repeated or self.missing)


def parse_permutation(text: str, n: int) -> Permutation:
    """Read ``[3] > [1] > [2]`` (or any list of numbers) into a full permutation of ``n``.

    Numbers outside 1..n are dropped (unknown), a number seen again is dropped
    (repeated), and the numbers never mentioned are appended in their original order
    (missing). The result always holds each of ``0..n-1`` exactly once.

    Example:
        >>> parse_permutation("[3] > [1] > [3] > [9]", 4).order
        (2, 0, 1, 3)
    """
    seen: list[int] = []
    unknown = repeated = 0
    for match in re.findall(r"\d+", text or ""):
        i = int(match) - 1
        if not 0 <= i < n:
            unknown += 1
        elif i in seen:
            repeated += 1
        else:
            seen.append(i)
    missing = [i for i in range(n) if i not in seen]
    return Permutation(tuple(seen + missing), unknown, repeated, len(missing))


def sliding_windows(n: int, window: int, step: int) -> list[tuple[int, int]]:
    """Windows ``[start, end)`` from the back of the list to the front, as RankGPT walks them.

    Example:
        >>> sliding_windows(50, 20, 10)
        [(30, 50), (20, 40), (10, 30), (0, 20)]
    """
    if window < 2 or not 1 <= step <= window:
        raise ConfigError(f"need window >= 2 and 1 <= step <= window, got window={window}, step={step}")
    if n <= window:
        return [(0, n)] if n else []
    spans = []
    end = n
    while True:
        start = max(end - window, 0)
        spans.append((start, end))
        if start == 0:
            return spans
        end -= step


class ListwiseReranker:
    """RankGPT-style listwise reranking with a sliding window.

    Args:
        config: Server, model, key, timeout, retries.
        window: Candidates per LLM call. Defaults to 20.
        step: How far the window moves towards the top each call. Defaults to 10.
        instructions: Free text folded into the prompt.
        max_words: Words of each candidate shown. Defaults to 80 (20 passages must fit the context).

    ``score`` returns ``n - position`` for the final order (higher is better).
    """

    def __init__(self, config: LLMConfig | None = None, *, window: int = 20, step: int = 10,
                 instructions: str | None = None, max_words: int = 80):
        sliding_windows(window, window, step)  # validate now
        self.config = config if config is not None else LLMConfig()
        self.window = window
        self.step = step
        self.instructions = instructions
        self.max_words = max_words
        self.name = f"listwise:{self.config.model}"
        self._client = LLMClient(self.config)
        self._usage = _Usage()
        self.repairs = 0

    def usage(self) -> dict[str, int]:
        return self._usage.snapshot()

    def order(self, query: str, texts: Sequence[str]) -> list[int]:
        """Indices of ``texts``, best first."""
        order = list(range(len(texts)))
        for start, end in sliding_windows(len(texts), self.window, self.step):
            current = order[start:end]
            passages = [_shorten(texts[i], self.max_words) for i in current]
            reply = self._client.generate(listwise_prompt(query, passages, self.instructions),
                                          temperature=0.0, max_tokens=8 * len(current) + 16)
            usage = reply.get("usage") or {}
            self._usage.add(requests=1, prompt_tokens=usage.get("prompt_tokens", 0),
                            completion_tokens=usage.get("completion_tokens", 0))
            content = reply_text(reply)
            perm = parse_permutation(content, len(current))
            if not any(ch.isdigit() for ch in content):
                self._usage.add(fallbacks=1)  # nothing usable: the window keeps its order
                logger.warning("listwise reply without a ranking: %r", content[:200])
            elif perm.repaired:
                self.repairs += 1
            order[start:end] = [current[i] for i in perm.order]
        return order

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        n = len(texts)
        scores = [0.0] * n
        for position, i in enumerate(self.order(query, texts)):
            scores[i] = float(n - position)
        return scores
