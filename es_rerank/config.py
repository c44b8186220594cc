"""Settings: one frozen dataclass, resolved as explicit argument > environment > default.

Example:
    >>> from es_rerank.config import Settings
    >>> s = Settings.from_env(index="help-centre")
    >>> s.index
    'help-centre'
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_RERANKER_MODEL = "cross-encoder/ms-marco-MiniLM-L-6-v2"

FUSION_MODES = ("auto", "server", "client")
SEARCH_MODES = ("hybrid", "bm25", "knn")


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be a boolean (true/false/1/0), got {raw!r}")


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _parse_float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


# field name -> (environment variable, parser). The README's configuration table
# mirrors this mapping; tests/test_config.py checks that every variable is documented.
ENV_VARS: dict[str, tuple[str, Any]] = {
    "url": ("ES_URL", str),
    "api_key": ("ES_API_KEY", str),
    "username": ("ES_USERNAME", str),
    "password": ("ES_PASSWORD", str),
    "ca_certs": ("ES_CA_CERTS", str),
    "verify_certs": ("ES_VERIFY_CERTS", _parse_bool),
    "request_timeout": ("ES_REQUEST_TIMEOUT", _parse_float),
    "index": ("ES_RERANK_INDEX", str),
    "embedding_model": ("ES_RERANK_EMBEDDING_MODEL", str),
    "reranker_model": ("ES_RERANK_RERANKER_MODEL", str),
    "device": ("ES_RERANK_DEVICE", str),
    "depth": ("ES_RERANK_DEPTH", _parse_int),
    "final_k": ("ES_RERANK_FINAL_K", _parse_int),
    "rank_constant": ("ES_RERANK_RANK_CONSTANT", _parse_int),
    "fusion": ("ES_RERANK_FUSION", str),
    "chunk_tokens": ("ES_RERANK_CHUNK_TOKENS", _parse_int),
    "chunk_overlap": ("ES_RERANK_CHUNK_OVERLAP", _parse_int),
    "embed_batch_size": ("ES_RERANK_EMBED_BATCH_SIZE", _parse_int),
    "max_document_chars": ("ES_RERANK_MAX_DOCUMENT_CHARS", _parse_int),
    "rerank_batch_size": ("ES_RERANK_RERANK_BATCH_SIZE", _parse_int),
    "rerank_max_length": ("ES_RERANK_MAX_LENGTH", _parse_int),
    "reranker": ("ES_RERANK_RERANKER", str),
    "reranker_backend": ("ES_RERANK_RERANKER_BACKEND", str),
    "embedding_backend": ("ES_RERANK_EMBEDDING_BACKEND", str),
    "rerank_cache_size": ("ES_RERANK_RERANK_CACHE_SIZE", _parse_int),
    "allow_reranker_failures": ("ES_RERANK_ALLOW_RERANKER_FAILURES", _parse_bool),
    "rerank_timeout": ("ES_RERANK_RERANK_TIMEOUT", _parse_float),
    "llm_base_url": ("ES_RERANK_LLM_BASE_URL", str),
    "llm_model": ("ES_RERANK_LLM_MODEL", str),
    "llm_api": ("ES_RERANK_LLM_API", str),
    "llm_api_key": ("ES_RERANK_LLM_API_KEY", str),
    "llm_timeout": ("ES_RERANK_LLM_TIMEOUT", _parse_float),
    "llm_concurrency": ("ES_RERANK_LLM_CONCURRENCY", _parse_int),
    "llm_instructions": ("ES_RERANK_LLM_INSTRUCTIONS", str),
    "listwise_window": ("ES_RERANK_LISTWISE_WINDOW", _parse_int),
    "listwise_step": ("ES_RERANK_LISTWISE_STEP", _parse_int),
    "hnsw_m": ("ES_RERANK_HNSW_M", _parse_int),
    "hnsw_ef_construction": ("ES_RERANK_HNSW_EF_CONSTRUCTION", _parse_int),
}

_SECRET_FIELDS = ("api_key", "password", "llm_api_key")
RERANKER_KINDS = ("cross-encoder", "llm", "listwise", "none")
BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "openvino-int8")


@dataclass(frozen=True)
class Settings:
    """Everything es-rerank needs to talk to a cluster and run the two stages.

    Attributes:
        url: Elasticsearch URL. Defaults to ``http://127.0.0.1:9200``.
        api_key: API key (``ES_API_KEY``); never shown in ``repr``.
        username: Basic-auth user (``ES_USERNAME``).
        password: Basic-auth password (``ES_PASSWORD``); never shown in ``repr``.
        ca_certs: Path to a CA bundle for TLS (``ES_CA_CERTS``).
        verify_certs: Verify TLS certificates. Defaults to True.
        request_timeout: Seconds before a request to Elasticsearch fails. Defaults to 30.
        index: Index name. Defaults to ``es-rerank``.
        embedding_model: Sentence-transformers model name or local path.
        reranker_model: Cross-encoder model name or local path.
        device: Torch device for both models (``cpu``, ``cuda``); None lets the library pick.
        depth: Candidates retrieved for reranking. Defaults to 50.
        final_k: Hits returned after reranking. Defaults to 5.
        rank_constant: RRF rank constant k in ``1 / (k + rank)``. Defaults to 60.
        fusion: ``auto`` (detect server RRF once), ``server`` or ``client``.
        chunk_tokens: Chunk length in embedder tokens. Defaults to 200.
        chunk_overlap: Tokens shared by consecutive chunks. Defaults to 40.
        embed_batch_size: Chunks per embedding batch. Defaults to 32.
        max_document_chars: Longer documents are rejected (each chunk costs an embedding).
            Defaults to 1,000,000.
        rerank_batch_size: Pairs per cross-encoder batch. Defaults to 32.
        rerank_max_length: Token limit of a (query, chunk) pair; None keeps the model's.
        reranker: ``cross-encoder`` (default), ``llm``, ``listwise`` or ``none``.
        reranker_backend: Cross-encoder runtime: ``torch`` (default), ``torch-bf16``, ``onnx``, ``onnx-int8``,
            ``openvino`` or ``openvino-int8`` (all but torch read a folder made by ``es-rerank export-onnx``).
        embedding_backend: Embedder runtime: ``torch`` (default), ``onnx``, ``onnx-int8``, ``openvino`` or
            ``openvino-int8``.
        rerank_cache_size: (query, chunk) scores the cross-encoder remembers; 0 turns the
            cache off. Defaults to 10,000.
        allow_reranker_failures: On a reranker failure return the retrieval order
            (``reranked: false`` and the reason) instead of raising. Defaults to False.
        rerank_timeout: Seconds the reranking stage may take; None means no limit.
        llm_base_url: OpenAI-compatible API root for the LLM rerankers.
        llm_model: Model name sent to that API. Defaults to ``local``.
        llm_api: ``chat`` (default) or ``completions`` (base models, servers without a chat template).
        llm_api_key: Bearer token for that API; never shown in ``repr``.
        llm_timeout: Seconds per LLM request. Defaults to 60.
        llm_concurrency: LLM requests in flight at once (pointwise). Defaults to 4.
        llm_instructions: Free text folded into the LLM prompts ("prefer recent documents").
        listwise_window: Candidates per listwise call. Defaults to 20.
        listwise_step: Listwise window step. Defaults to 10.
        hnsw_m: HNSW ``m`` for the vector field. Defaults to 16.
        hnsw_ef_construction: HNSW ``ef_construction``. Defaults to 100.
    """

    url: str = "http://127.0.0.1:9200"
    api_key: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_certs: str | None = None
    verify_certs: bool = True
    request_timeout: float = 30.0
    index: str = "es-rerank"
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    reranker_model: str = DEFAULT_RERANKER_MODEL
    device: str | None = None
    depth: int = 50
    final_k: int = 5
    rank_constant: int = 60
    fusion: str = "auto"
    chunk_tokens: int = 200
    chunk_overlap: int = 40
    embed_batch_size: int = 32
    max_document_chars: int = 1_000_000
    rerank_batch_size: int = 32
    rerank_max_length: int | None = None
    reranker: str = "cross-encoder"
    reranker_backend: str = "torch"
    embedding_backend: str = "torch"
    rerank_cache_size: int = 10_000
    allow_reranker_failures: bool = False
    rerank_timeout: float | None = None
    llm_base_url: str = "http://127.0.0.1:8080/v1"
    llm_model: str = "local"
    llm_api: str = "chat"
    llm_api_key: str | None = field(default=None, repr=False)
    llm_timeout: float = 60.0
    llm_concurrency: int = 4
    llm_instructions: str | None = None
    listwise_window: int = 20
    listwise_step: int = 10
    hnsw_m: int = 16
    hnsw_ef_construction: int = 100

    def __post_init__(self) -> None:
        if not self.url:
            raise ConfigError("url must not be empty (set ES_URL)")
        if self.fusion not in FUSION_MODES:
            raise ConfigError(f"fusion must be one of {', '.join(FUSION_MODES)}, got {self.fusion!r}")
        if self.depth < 1:
            raise ConfigError(f"depth must be >= 1, got {self.depth}")
        if not 1 <= self.final_k <= self.depth:
            raise ConfigError(f"final_k must be between 1 and depth ({self.depth}), got {self.final_k}")
        if self.rank_constant < 1:
            raise ConfigError(f"rank_constant must be >= 1, got {self.rank_constant}")
        if self.chunk_tokens < 8:
            raise ConfigError(f"chunk_tokens must be >= 8, got {self.chunk_tokens}")
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise ConfigError(
                f"chunk_overlap must be >= 0 and < chunk_tokens ({self.chunk_tokens}), got {self.chunk_overlap}"
            )
        if self.request_timeout <= 0:
            raise ConfigError(f"request_timeout must be > 0, got {self.request_timeout}")
        if self.reranker not in RERANKER_KINDS:
            raise ConfigError(f"reranker must be one of {', '.join(RERANKER_KINDS)}, got {self.reranker!r}")
        for name, allowed in (("reranker_backend", BACKENDS),
                              ("embedding_backend", tuple(b for b in BACKENDS if b != "torch-bf16"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.rerank_cache_size < 0:
            raise ConfigError(f"rerank_cache_size must be >= 0, got {self.rerank_cache_size}")
        if self.rerank_timeout is not None and self.rerank_timeout <= 0:
            raise ConfigError(f"rerank_timeout must be > 0, got {self.rerank_timeout}")
        if self.api_key is not None and self.username is not None:
            raise ConfigError("set either ES_API_KEY or ES_USERNAME/ES_PASSWORD, not both")
        if (self.username is None) != (self.password is None):
            raise ConfigError("basic auth needs both ES_USERNAME and ES_PASSWORD")

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS:
                value = None if value is None else "***"
            elif f.name == "url":
                value = self.safe_url
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__

    @property
    def safe_url(self) -> str:
        """The URL without any ``user:password@`` part, for messages and logs."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        if parts.username is None and parts.password is None:
            return self.url
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings: explicit overrides, then environment variables, then defaults.

        Args:
            env: Environment to read. Defaults to ``os.environ``.
            **overrides: Field values that win over the environment; a value of
                None means "not given" and falls through.

        Returns:
            The resolved settings.

        Raises:
            ConfigError: An environment variable cannot be parsed or a value is invalid.
        """
        env = os.environ if env is None else env
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, (var, parse) in ENV_VARS.items():
            if overrides.get(name) is not None:
                values[name] = overrides[name]
            elif env.get(var, "") != "":
                values[name] = parse(var, env[var]) if parse is not str else env[var]
        for name, value in overrides.items():
            if name not in values and value is not None:
                values[name] = value
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        """Return a copy with some fields changed (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def es_client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``elasticsearch.Elasticsearch`` (holds secrets: never log it)."""
        # transient failures (connection reset, 429/502/503/504, timeouts) are retried by the client
        kwargs: dict[str, Any] = {"hosts": [self.url], "request_timeout": self.request_timeout,
                                  "max_retries": 3, "retry_on_timeout": True}
        if self.api_key is not None:
            kwargs["api_key"] = self.api_key
        if self.username is not None:
            kwargs["basic_auth"] = (self.username, self.password)
        if self.url.startswith("https"):
            kwargs["verify_certs"] = self.verify_certs
            if self.ca_certs is not None:
                kwargs["ca_certs"] = self.ca_certs
        return kwargs


def connect(settings: Settings):
    """Create an Elasticsearch client from settings.

    Args:
        settings: Connection settings.

    Returns:
        An ``elasticsearch.Elasticsearch`` client (no request is sent yet).
    """
    from elasticsearch import Elasticsearch

    return Elasticsearch(**settings.es_client_kwargs())
