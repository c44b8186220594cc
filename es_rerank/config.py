"""Settings: one frozen dataclass that owns every default, environment variable and help text.

Values resolve as explicit argument > environment variable > default. Each field carries
its environment variable and help text as metadata; the CLI builds its options from them
(:func:`es_rerank.cli.setting_option`) and the README's configuration table is checked
against :func:`settings_table`.

Example:
    >>> from es_rerank.config import Settings
    >>> s = Settings.from_env(env={}, index="help-centre")
    >>> s.index, s.depth
    ('help-centre', 50)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import ConfigError
from .redact import redact, redact_url

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_RERANKER_MODEL = "cross-encoder/ms-marco-MiniLM-L-6-v2"

FUSION_MODES = ("auto", "server", "client")
SEARCH_MODES = ("hybrid", "bm25", "knn")
ENGINE_NAMES = ("elasticsearch", "opensearch")
"""The engines es-rerank runs on: the one list of their names. Each has a query engine
(:data:`es_rerank.engines.ENGINES`) and a local server distribution
(:data:`es_rerank.cluster.DISTRIBUTIONS`) under that name."""
ENGINE_CHOICES = ("auto", *ENGINE_NAMES)
RERANKER_KINDS = ("cross-encoder", "llm", "listwise", "none")
BACKENDS = ("onnx", "onnx-int8", "openvino", "openvino-int8", "torch", "torch-bf16")
EMBEDDING_BACKENDS = ("onnx", "onnx-int8", "openvino", "openvino-int8", "torch")
BLENDS = ("none", "rrf", "linear")
RESULT_UNITS = ("documents", "chunks")
LLM_APIS = ("chat", "completions")
PIPELINE_MODEL_CHECKS = ("warn", "refuse")


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be a boolean (true/false/1/0), got {raw!r}", setting=name)


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}", setting=name) from None


def _parse_float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}", setting=name) from None


def _parse_str(name: str, raw: str) -> str:
    return raw


_PARSERS: dict[Any, Callable[[str, str], Any]] = {
    "bool": _parse_bool, "int": _parse_int, "float": _parse_float, "str": _parse_str,
}


def _setting(default: Any, env: str, help: str, *, secret: bool = False, choices: tuple[str, ...] | None = None,
             shown_default: str | None = None) -> Any:
    """A Settings field with its environment variable, help text and (for the docs) default."""
    return field(default=default, repr=not secret,
                 metadata={"env": env, "help": help, "secret": secret, "choices": choices,
                           "shown_default": shown_default})


@dataclass(frozen=True)
class Settings:
    """Everything es-rerank needs to talk to a cluster and run the two stages.

    Every field has an environment variable (``ES_URL``, ``ES_RERANK_DEPTH`` ...) and a help
    text in its metadata; ``es-rerank config`` prints the values in effect and where each
    came from. Secrets (``api_key``, ``password``, ``llm_api_key``) never appear in ``repr``.
    """

    url: str = _setting("http://127.0.0.1:9200", "ES_URL", "Elasticsearch or OpenSearch URL")
    api_key: str | None = _setting(None, "ES_API_KEY", "API key (secret: never printed)", secret=True)
    username: str | None = _setting(None, "ES_USERNAME", "basic-auth user")
    password: str | None = _setting(None, "ES_PASSWORD", "basic-auth password (secret: never printed)", secret=True)
    ca_certs: str | None = _setting(None, "ES_CA_CERTS", "CA bundle path for TLS")
    verify_certs: bool = _setting(True, "ES_VERIFY_CERTS", "verify TLS certificates (https URLs)")
    request_timeout: float = _setting(30.0, "ES_REQUEST_TIMEOUT", "seconds before a request to the cluster fails")
    engine: str = _setting("auto", "ES_RERANK_ENGINE", "search engine: detected from the cluster, or set",
                           choices=ENGINE_CHOICES)
    index: str = _setting("es-rerank", "ES_RERANK_INDEX", "index (alias) name")
    embedding_model: str = _setting(DEFAULT_EMBEDDING_MODEL, "ES_RERANK_EMBEDDING_MODEL",
                                    "embedder: hub name or local folder (the packaged copy is used when installed)")
    reranker_model: str = _setting(DEFAULT_RERANKER_MODEL, "ES_RERANK_RERANKER_MODEL",
                                   "cross-encoder: hub name or local folder")
    device: str | None = _setting(None, "ES_RERANK_DEVICE", "torch device for the torch backends (`cpu`, `cuda`)",
                                  shown_default="auto")
    depth: int = _setting(50, "ES_RERANK_DEPTH", "candidates retrieved and reranked")
    final_k: int = _setting(5, "ES_RERANK_FINAL_K", "results returned (documents, or chunks with `chunks`)")
    rank_constant: int = _setting(60, "ES_RERANK_RANK_CONSTANT", "RRF k in `1/(k + rank)`")
    fusion: str = _setting("auto", "ES_RERANK_FUSION", "hybrid fusion: on the server, in Python, or detect",
                           choices=FUSION_MODES)
    results: str = _setting("documents", "ES_RERANK_RESULTS",
                            "`documents` (one result per document, its best chunk; others as passages) or `chunks`",
                            choices=RESULT_UNITS)
    blend: str = _setting("none", "ES_RERANK_BLEND",
                          "combine the two stages' orders: `none` (rerank order), `rrf` or `linear`", choices=BLENDS)
    blend_weight: float = _setting(0.5, "ES_RERANK_BLEND_WEIGHT",
                                   "`linear` blend: weight of the reranker's normalized score (0..1)")
    analyzer: str = _setting("auto", "ES_RERANK_ANALYZER",
                             "analyzer of title and text in new indices: `english` where the engine has it, else "
                             "`standard`; or a name")
    chunk_tokens: int = _setting(200, "ES_RERANK_CHUNK_TOKENS", "tokens per chunk")
    chunk_overlap: int = _setting(40, "ES_RERANK_CHUNK_OVERLAP", "tokens shared by neighbouring chunks")
    embed_batch_size: int = _setting(32, "ES_RERANK_EMBED_BATCH_SIZE", "chunks per embedding batch")
    max_chunk_chars: int = _setting(4000, "ES_RERANK_MAX_CHUNK_CHARS",
                                    "characters per chunk at most (text without spaces can be one long token)")
    lease_ttl: float = _setting(120.0, "ES_RERANK_LEASE_TTL",
                                "seconds an index's lease lasts unless renewed (one run changes a name at a time)")
    max_document_chars: int = _setting(1_000_000, "ES_RERANK_MAX_DOCUMENT_CHARS",
                                       "longer documents (text and title) are rejected")
    rerank_batch_size: int = _setting(32, "ES_RERANK_RERANK_BATCH_SIZE", "pairs per cross-encoder batch")
    rerank_max_length: int | None = _setting(None, "ES_RERANK_MAX_LENGTH", "token limit of a (query, chunk) pair",
                                             shown_default="model's")
    reranker: str = _setting("cross-encoder", "ES_RERANK_RERANKER",
                             "second stage: `cross-encoder`, `llm`, `listwise` or `none`", choices=RERANKER_KINDS)
    reranker_backend: str = _setting("onnx", "ES_RERANK_RERANKER_BACKEND",
                                     "cross-encoder runtime: `onnx`, `onnx-int8`, `openvino`, `openvino-int8`, "
                                     "`torch` or `torch-bf16`", choices=BACKENDS)
    embedding_backend: str = _setting("onnx", "ES_RERANK_EMBEDDING_BACKEND",
                                      "embedder runtime: `onnx`, `onnx-int8`, `openvino`, `openvino-int8` or `torch`",
                                      choices=EMBEDDING_BACKENDS)
    use_pipeline: bool = _setting(True, "ES_RERANK_USE_PIPELINE",
                                  "use the index's pipeline (`es-rerank pipeline show`) for settings left at their "
                                  "defaults")
    pipeline_model_check: str = _setting("warn", "ES_RERANK_PIPELINE_MODEL_CHECK",
                                         "when the pipeline's model folder no longer matches its recorded "
                                         "fingerprint: `warn` or `refuse`", choices=PIPELINE_MODEL_CHECKS)
    rerank_cache_size: int = _setting(10_000, "ES_RERANK_RERANK_CACHE_SIZE",
                                      "(query, chunk) cross-encoder scores remembered; `0` turns the cache off")
    allow_reranker_failures: bool = _setting(False, "ES_RERANK_ALLOW_RERANKER_FAILURES",
                                             "on a reranker failure return the retrieval order (`reranked: false` "
                                             "+ reason) instead of an error")
    rerank_timeout: float | None = _setting(None, "ES_RERANK_RERANK_TIMEOUT",
                                            "seconds the reranking stage may take before it counts as failed",
                                            shown_default="none")
    llm_base_url: str = _setting("http://127.0.0.1:8080/v1", "ES_RERANK_LLM_BASE_URL",
                                 "OpenAI-compatible API root for the LLM rerankers")
    llm_model: str = _setting("local", "ES_RERANK_LLM_MODEL", "model name sent to that API")
    llm_api: str = _setting("chat", "ES_RERANK_LLM_API",
                            "`chat` (`/chat/completions`) or `completions` (`/completions`, base models)",
                            choices=LLM_APIS)
    llm_api_key: str | None = _setting(None, "ES_RERANK_LLM_API_KEY", "bearer token for that API (secret: never "
                                       "printed)", secret=True)
    llm_timeout: float = _setting(60.0, "ES_RERANK_LLM_TIMEOUT", "seconds per LLM request (then up to 2 retries)")
    llm_concurrency: int = _setting(4, "ES_RERANK_LLM_CONCURRENCY", "pointwise LLM requests in flight at once")
    llm_instructions: str | None = _setting(None, "ES_RERANK_LLM_INSTRUCTIONS",
                                            "extra instructions folded into the LLM prompts")
    listwise_window: int = _setting(20, "ES_RERANK_LISTWISE_WINDOW", "candidates per listwise LLM call")
    listwise_step: int = _setting(10, "ES_RERANK_LISTWISE_STEP", "how far the listwise window moves each call")
    shards: int = _setting(1, "ES_RERANK_SHARDS", "primary shards of new indices (more spread a large index over nodes)")
    replicas: int | None = _setting(None, "ES_RERANK_REPLICAS",
                                    "replicas of each shard in new indices (after the build); default: one where a "
                                    "second node exists, else none (`auto_expand_replicas` 0-1)", shown_default="0-1")
    hnsw_m: int = _setting(16, "ES_RERANK_HNSW_M", "HNSW `m` of the vector field")
    hnsw_ef_construction: int = _setting(100, "ES_RERANK_HNSW_EF_CONSTRUCTION", "HNSW `ef_construction`")
    serve_host: str = _setting("127.0.0.1", "ES_RERANK_SERVE_HOST", "address `es-rerank serve` binds")
    serve_port: int = _setting(9201, "ES_RERANK_SERVE_PORT", "port `es-rerank serve` listens on")
    serve_queue: int = _setting(8, "ES_RERANK_SERVE_QUEUE",
                                "rerank requests admitted at once by `serve`; more get 429 with Retry-After")
    serve_timeout: float = _setting(30.0, "ES_RERANK_SERVE_TIMEOUT", "seconds a `serve` request may take")
    serve_body_timeout: float = _setting(10.0, "ES_RERANK_SERVE_BODY_TIMEOUT",
                                         "seconds `serve` waits for the next bytes of a request body, then "
                                         "answers 408")
    serve_max_body: int = _setting(10_000_000, "ES_RERANK_SERVE_MAX_BODY", "largest request body `serve` accepts "
                                   "(bytes)")
    serve_max_window: int = _setting(1000, "ES_RERANK_SERVE_MAX_WINDOW",
                                     "largest `rank_window_size` (and rerank inference `input` list) `serve` "
                                     "accepts")
    serve_batch_wait_ms: float = _setting(5.0, "ES_RERANK_SERVE_BATCH_WAIT_MS",
                                          "how long `serve` waits to batch pairs of concurrent requests; `0` off")
    serve_workers: int = _setting(1, "ES_RERANK_SERVE_WORKERS",
                                  "`serve` processes on the one port, each with its own models, queue and metrics "
                                  "(they share only the cluster)")
    serve_ui: bool = _setting(True, "ES_RERANK_SERVE_UI",
                              "`serve` answers `/_es_rerank/ui`, the page comparing hybrid and reranked rankings; "
                              "`false` off")

    def __post_init__(self) -> None:
        def bad(name: str, message: str) -> ConfigError:
            return ConfigError(message, setting=name)

        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None and "None" not in str(f.type):
                raise bad(f.name, f"{f.name} must be set ({f.metadata['env']}); None is not a value for it")
        if not self.url:
            raise bad("url", "url must not be empty (set ES_URL)")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise bad(f.name, f"{f.name} must be one of {', '.join(choices)}, got {value!r}")
        if self.depth < 1:
            raise bad("depth", f"depth must be >= 1, got {self.depth}")
        if not 1 <= self.final_k <= self.depth:
            raise bad("final_k", f"final_k must be between 1 and depth ({self.depth}), got {self.final_k}")
        if self.rank_constant < 1:
            raise bad("rank_constant", f"rank_constant must be >= 1, got {self.rank_constant}")
        if not 0.0 <= self.blend_weight <= 1.0:
            raise bad("blend_weight", f"blend_weight must be between 0 and 1, got {self.blend_weight}")
        if self.shards < 1:
            raise bad("shards", f"shards must be >= 1, got {self.shards}")
        if self.replicas is not None and self.replicas < 0:
            raise bad("replicas", f"replicas must be >= 0, got {self.replicas}")
        if self.chunk_tokens < 8:
            raise bad("chunk_tokens", f"chunk_tokens must be >= 8, got {self.chunk_tokens}")
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise bad("chunk_overlap", f"chunk_overlap must be >= 0 and < chunk_tokens ({self.chunk_tokens}), "
                                       f"got {self.chunk_overlap}")
        for name in ("request_timeout", "llm_timeout", "serve_timeout", "serve_body_timeout", "lease_ttl"):
            if getattr(self, name) <= 0:
                raise bad(name, f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("embed_batch_size", "rerank_batch_size", "max_document_chars", "max_chunk_chars", "llm_concurrency",
                     "serve_queue", "serve_max_body", "serve_max_window"):
            if getattr(self, name) < 1:
                raise bad(name, f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.serve_workers <= 64:
            raise bad("serve_workers", f"serve_workers must be from 1 to 64, got {self.serve_workers}")
        if not 1 <= self.serve_port <= 65535:
            raise bad("serve_port", f"serve_port must be a port number (1-65535), got {self.serve_port}")
        if self.serve_batch_wait_ms < 0:
            raise bad("serve_batch_wait_ms", f"serve_batch_wait_ms must be >= 0, got {self.serve_batch_wait_ms}")
        if self.rerank_cache_size < 0:
            raise bad("rerank_cache_size", f"rerank_cache_size must be >= 0, got {self.rerank_cache_size}")
        if self.rerank_timeout is not None and self.rerank_timeout <= 0:
            raise bad("rerank_timeout", f"rerank_timeout must be > 0, got {self.rerank_timeout}")
        if self.rerank_max_length is not None and self.rerank_max_length < 8:
            raise bad("rerank_max_length", f"rerank_max_length must be >= 8, got {self.rerank_max_length}")
        if self.api_key is not None and self.username is not None:
            raise bad("api_key", "set either ES_API_KEY or ES_USERNAME/ES_PASSWORD, not both")
        if (self.username is None) != (self.password is None):
            raise bad("username", "basic auth needs both ES_USERNAME and ES_PASSWORD")

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                value = None if value is None else "***"
            elif f.name in ("url", "llm_base_url"):
                value = redact_url(value)
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__

    @property
    def safe_url(self) -> str:
        """The URL without any ``user:password@`` part, for messages and logs."""
        return redact_url(self.url)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secret values in effect (to redact from any text that might carry them)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self)
                     if f.metadata.get("secret") and getattr(self, f.name))

    def redact(self, text: str) -> str:
        """``text`` with URL credentials and this configuration's secrets masked."""
        return redact(text, self.secrets)

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
            ConfigError: An environment variable cannot be parsed, a value is invalid, or
                an override names no setting.
        """
        values, _ = _resolve(cls, env, overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some fields changed; ``x=None`` sets None (validation applies).

        Raises:
            ConfigError: An unknown field, or a value that fails validation.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def client_kwargs(self) -> dict[str, Any]:
        """Connection keyword arguments common to both engines' clients (hold secrets: never log)."""
        kwargs: dict[str, Any] = {"hosts": [self.url], "request_timeout": self.request_timeout}
        if self.url.startswith("https"):
            kwargs["verify_certs"] = self.verify_certs
            if self.ca_certs is not None:
                kwargs["ca_certs"] = self.ca_certs
        return kwargs


def env_vars(cls: type = Settings) -> dict[str, tuple[str, Callable[[str, str], Any]]]:
    """Field name -> (environment variable, parser), derived from the fields' metadata."""
    out = {}
    for f in dataclasses.fields(cls):
        kind = _type_name(f)
        out[f.name] = (f.metadata["env"], _PARSERS[kind])
    return out


def _type_name(f: dataclasses.Field) -> str:
    text = str(f.type)
    for kind in ("bool", "int", "float"):
        if text.startswith(kind):
            return kind
    return "str"


ENV_VARS = env_vars()


def _resolve(cls: type, env: Mapping[str, str] | None, overrides: Mapping[str, Any]) -> tuple[dict, dict]:
    env = os.environ if env is None else env
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, (var, parse) in env_vars(cls).items():
        if overrides.get(name) is not None:
            values[name], sources[name] = overrides[name], "argument"
        elif env.get(var, "") != "":
            values[name], sources[name] = parse(var, env[var]), "environment"
        else:
            sources[name] = "default"
    return values, sources


@dataclass(frozen=True)
class SettingInfo:
    """One line of ``es-rerank config``: a setting, its value (secrets masked) and its source."""

    name: str
    env: str
    value: str
    source: str


def explain(env: Mapping[str, str] | None = None, **overrides: Any) -> list[SettingInfo]:
    """The settings in effect, secrets masked, each with where it came from.

    Raises:
        ConfigError: As :meth:`Settings.from_env`.
    """
    values, sources = _resolve(Settings, env, overrides)
    settings = Settings(**values)
    out = []
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if f.metadata.get("secret"):
            shown = "(not set)" if value is None else "***"
        elif f.name in ("url", "llm_base_url"):
            shown = redact_url(value)
        elif value is None:  # a default that means "decided later" (device auto, the model's max length)
            shown = f.metadata.get("shown_default") or "(not set)"
        else:
            shown = _value_text(value)
        out.append(SettingInfo(f.name, f.metadata["env"], shown, sources[f.name]))
    return out


def _value_text(value: Any) -> str:
    """A value as the README's table and the environment write it (``true``, ``30``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def default_text(f: dataclasses.Field) -> str:
    """A field's default as the docs and ``--help`` show it."""
    shown = f.metadata.get("shown_default")
    if shown is not None:
        return shown
    if f.default is None:
        return "—"
    return _value_text(f.default)


def setting_help(name: str) -> str:
    """Help text for a setting, with its environment variable and default, for CLI options."""
    f = next(f for f in dataclasses.fields(Settings) if f.name == name)
    return f"{f.metadata['help'][0].upper()}{f.metadata['help'][1:]} [env {f.metadata['env']}; default " \
           f"{default_text(f)}]."


def settings_table() -> str:
    """The README's configuration table, generated from the fields (a test keeps both equal)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = default_text(f)
        default = default if default == "—" else f"`{default}`"
        lines.append(f"| `{f.metadata['env']}` | {default} | {f.metadata['help']} |")
    return "\n".join(lines)
