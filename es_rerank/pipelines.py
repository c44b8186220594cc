"""The pipeline an index keeps: which reranker, how deep, how blended; chosen on its own questions.

An index's es-rerank marker (``_meta.es_rerank``, see :mod:`es_rerank.lifecycle`) holds, under
``pipeline``, the second stage that every client uses for it unless told otherwise: the reranker
(kind, model name or folder, a fingerprint of the folder's files, backend), ``depth``,
``final_k``, ``blend`` and ``blend_weight``, or no reranking at all; with the evidence it was
chosen on (question set fingerprint, split, nDCG@10 and recall@10 against hybrid with the paired
interval, date). ``pipeline_history`` keeps the previous ones (newest first, at most
:data:`HISTORY_LIMIT`), so that a rollback restores the one before.

Writes replace the whole marker of the one concrete index a name serves, holding the name's
lease (:func:`es_rerank.leases.held`): a build cannot swap in between the read and the write,
and a ``--recreate`` build copies the pipeline of the index it replaces (so it moves with the
alias swap). Reading it needs no lease: it is part of the index's mapping.

Resolution (:func:`resolve`): for each setting the pipeline covers, a value given to the call
wins, then a value given in the settings (an environment variable, or a value other than the
default), then the pipeline's, then the default; each comes back with where it came from.

Example:
    >>> p = Pipeline(reranker="cross-encoder", model="cross-encoder/ms-marco-MiniLM-L-6-v2", backend="onnx",
    ...              depth=30, final_k=5, blend="linear", blend_weight=0.3)
    >>> p.label()
    'cross-encoder (cross-encoder/ms-marco-MiniLM-L-6-v2, onnx) depth=30 final_k=5 blend=linear weight=0.3'
    >>> Pipeline(reranker="none", final_k=5).label()
    'no reranking (hybrid) final_k=5'
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ._versions import PACKAGE_VERSION
from .config import BACKENDS, BLENDS, RERANKER_KINDS, Settings
from .engines import MARKER, Engine, IndexState, validate_index_name
from .errors import ConfigError, IndexMissingError, ModelError, NotOwnedError, ValidationError
from .leases import held

logger = logging.getLogger(__name__)

PIPELINE_KEY = "pipeline"
HISTORY_KEY = "pipeline_history"
HISTORY_LIMIT = 10
NO_RERANKING = "none"
MODEL_CHECKS = ("warn", "refuse")

# setting name -> the pipeline's attribute that supplies it
FIELDS = {"reranker": "reranker", "reranker_model": "model", "reranker_backend": "backend", "depth": "depth",
          "final_k": "final_k", "blend": "blend", "blend_weight": "blend_weight"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -- the model's files -------------------------------------------------------------------------

_FINGERPRINTS: dict[tuple[Any, ...], str] = {}
_FP_LOCK = threading.Lock()


def _files(folder: Path) -> list[tuple[str, int, int]]:
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            st = path.stat()
            out.append((path.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def model_fingerprint(model: str | None) -> str | None:
    """``sha256:<hex>`` over a model folder's files (sorted names, sizes and content hashes), or None.

    A hub name (anything that is not a local folder) has no fingerprint: it is recorded by name.
    Hidden files and folders (``.cache``, ``.git``) are left out. The answer is remembered while
    every file keeps its name, size and modification time, so a check per search costs one ``stat``
    per file, and a changed file is hashed again.
    """
    if model is None or not Path(model).expanduser().is_dir():
        return None
    folder = Path(model).expanduser().resolve()
    listing = _files(folder)
    key = (str(folder), tuple(listing))
    with _FP_LOCK:
        if key in _FINGERPRINTS:
            return _FINGERPRINTS[key]
    h = hashlib.sha256()
    for name, size, _ in listing:
        content = hashlib.sha256()
        with open(folder / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                content.update(block)
        h.update(f"{name}\0{size}\0{content.hexdigest()}\n".encode())
    out = "sha256:" + h.hexdigest()
    with _FP_LOCK:
        if len(_FINGERPRINTS) > 64:
            _FINGERPRINTS.clear()
        _FINGERPRINTS[key] = out
    return out


# -- the record ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pipeline:
    """The second stage an index uses by default.

    Attributes:
        reranker: ``cross-encoder``, ``llm``, ``listwise``, or ``none`` (hybrid alone).
        model: The reranker's model: a hub name or a local folder (None for ``none``).
        model_fingerprint: ``sha256:...`` of the folder's files (None for hub names and ``none``).
        backend: The cross-encoder runtime (None for ``none``).
        depth: Candidates reranked (None: the settings' depth).
        final_k: Results returned (None: the settings' final_k).
        blend: ``none``, ``rrf`` or ``linear`` (None for ``none``).
        blend_weight: The reranker's weight of a ``linear`` blend, else None.
        evidence: What it was chosen on (see :func:`es_rerank.evaluate.tuning.pipeline_evidence`), or None.
        applied: When it was written (UTC, ISO 8601).
        how: ``tune``, ``train``, ``set`` or ``rollback``.
        version: The es-rerank version that wrote it.
    """

    reranker: str
    model: str | None = None
    model_fingerprint: str | None = None
    backend: str | None = None
    depth: int | None = None
    final_k: int | None = None
    blend: str | None = None
    blend_weight: float | None = None
    evidence: Mapping[str, Any] | None = None
    applied: str | None = None
    how: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if self.reranker not in RERANKER_KINDS:
            raise ValidationError(f"pipeline reranker must be one of {', '.join(RERANKER_KINDS)}, got "
                                  f"{self.reranker!r}", field="reranker")
        for name in ("depth", "final_k"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValidationError(f"pipeline {name} must be an integer >= 1, got {value!r}", field=name)
        if self.depth is not None and self.final_k is not None and self.final_k > self.depth:
            raise ValidationError(f"pipeline final_k must be <= depth, got {self.final_k} > {self.depth}",
                                  field="final_k")
        if self.blend is not None and self.blend not in BLENDS:
            raise ValidationError(f"pipeline blend must be one of {', '.join(BLENDS)}, got {self.blend!r}",
                                  field="blend")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValidationError(f"pipeline backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}",
                                  field="backend")
        if self.blend_weight is not None and not (isinstance(self.blend_weight, (int, float))
                                                  and 0.0 <= self.blend_weight <= 1.0):
            raise ValidationError(f"pipeline blend_weight must be between 0 and 1, got {self.blend_weight!r}",
                                  field="blend_weight")

    @property
    def reranks(self) -> bool:
        return self.reranker != NO_RERANKING

    def label(self) -> str:
        """One line: ``cross-encoder (MODEL, onnx) depth=30 final_k=5 blend=linear weight=0.3``."""
        k = "" if self.final_k is None else f" final_k={self.final_k}"
        if not self.reranks:
            return "no reranking (hybrid)" + k
        what = ", ".join(x for x in (self.model, self.backend) if x)
        text = f"{self.reranker}" + (f" ({what})" if what else "")
        text += "" if self.depth is None else f" depth={self.depth}"
        text += k + ("" if self.blend is None else f" blend={self.blend}")
        return text + ("" if self.blend_weight is None else f" weight={self.blend_weight:g}")

    def value(self, setting: str) -> Any:
        """The pipeline's value of a setting (see :data:`FIELDS`), None when it sets none."""
        return getattr(self, FIELDS[setting])

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Pipeline":
        """A pipeline from its stored form (unknown keys, from a newer version, are ignored).

        Raises:
            ValidationError: A value out of range, or no ``reranker``.
        """
        if not isinstance(data, Mapping) or "reranker" not in data:
            raise ValidationError(f"a stored pipeline needs a reranker, got {data!r}", field="pipeline")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def make(*, reranker: str, model: str | None = None, backend: str | None = None, depth: int | None = None,
         final_k: int | None = None, blend: str | None = None, blend_weight: float | None = None,
         evidence: Mapping[str, Any] | None = None, how: str = "set") -> Pipeline:
    """A new pipeline, its model folder fingerprinted now (``none`` keeps only ``final_k``).

    Raises:
        ValidationError: A bad value (names it).
        ModelError: ``model`` looks like a path (``./``, ``/``, ``~``) but is no folder.
    """
    if reranker == NO_RERANKING:
        model = backend = blend = blend_weight = depth = None  # type: ignore[assignment]
    elif model is not None and model.startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
        raise ModelError(f"model folder {model!r} not found")
    if blend != "linear":
        blend_weight = None
    if model is not None and Path(model).expanduser().is_dir():
        model = str(Path(model).expanduser().resolve())
    return Pipeline(reranker=reranker, model=model, model_fingerprint=model_fingerprint(model), backend=backend,
                    depth=depth, final_k=final_k, blend=blend,
                    blend_weight=None if blend_weight is None else float(blend_weight),
                    evidence=None if evidence is None else dict(evidence), applied=_now(), how=how,
                    version=PACKAGE_VERSION)


def from_marker(mark: Mapping[str, Any] | None) -> Pipeline | None:
    """The pipeline of an index's marker; None when it has none (a malformed one is logged, not used)."""
    raw = (mark or {}).get(PIPELINE_KEY)
    if raw is None:
        return None
    try:
        return Pipeline.from_dict(raw)
    except ValidationError as e:
        logger.warning("ignoring the index's stored pipeline: %s", e)
        return None


def history_of(mark: Mapping[str, Any] | None) -> list[Pipeline]:
    """Previous pipelines, newest first (malformed entries left out)."""
    out = []
    for raw in (mark or {}).get(HISTORY_KEY) or ():
        try:
            out.append(Pipeline.from_dict(raw))
        except ValidationError as e:
            logger.warning("ignoring a malformed pipeline in the history: %s", e)
    return out


def of_state(state: IndexState) -> Pipeline | None:
    """The pipeline of what a name serves: the one index's, or the common one of several (else None)."""
    found = [from_marker(state.marker(i)) for i in state.indices]
    if not found or any(p is None for p in found):
        return None
    if len({repr(p) for p in found}) > 1:
        logger.warning("%s serves indices with different pipelines; using none of them", state.name)
        return None
    return found[0]


# -- reading and writing ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stored:
    """What an index keeps: its concrete name, the pipeline in use and the previous ones."""

    name: str
    index: str
    pipeline: Pipeline | None
    history: tuple[Pipeline, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "index": self.index,
                "pipeline": None if self.pipeline is None else self.pipeline.to_dict(),
                "history": [p.to_dict() for p in self.history]}


def _one_index(state: IndexState) -> str:
    from .lifecycle import require_owned

    if state.kind == "missing":
        raise IndexMissingError(state.name)
    require_owned(state)
    if len(state.indices) != 1:
        raise NotOwnedError(state.name, f"{state.name!r} serves {len(state.indices)} indices "
                                        f"({', '.join(state.indices)}); a pipeline belongs to one index: index with "
                                        "--recreate to replace them with one")
    return state.indices[0]


def read(engine: Engine, name: str) -> Stored:
    """The pipeline ``name`` uses and its history.

    Raises:
        ValidationError: An invalid name.
        IndexMissingError: Nothing of that name.
        NotOwnedError: Not an es-rerank index, or an alias over several indices.
    """
    state = engine.state(validate_index_name(name))
    index = _one_index(state)
    mark = state.marker(index)
    return Stored(name, index, from_marker(mark), tuple(history_of(mark)))


def _write(engine: Engine, name: str, change: Any, *, lease_ttl: float | None) -> Stored:
    """Read the marker under the lease, let ``change(mark) -> (pipeline, history)`` decide, write it whole."""
    validate_index_name(name)
    _one_index(engine.state(name))  # refuse early, before taking a lease on a name that is not ours
    ttl = engine.settings.lease_ttl if lease_ttl is None else lease_ttl
    with held(engine, name, ttl=ttl):
        state = engine.state(name)
        index = _one_index(state)
        mark = dict(state.marker(index) or {})
        if mark.get("legacy"):
            raise NotOwnedError(name, f"{index!r} was built by es-rerank 0.1 (no full marker); index it with "
                                      "--recreate before recording a pipeline")
        pipeline, history = change(mark)
        new = {k: v for k, v in mark.items() if k not in (PIPELINE_KEY, HISTORY_KEY)}
        if pipeline is not None:
            new[PIPELINE_KEY] = pipeline.to_dict()
        if history:
            new[HISTORY_KEY] = [p.to_dict() for p in history[:HISTORY_LIMIT]]
        # the marker is written whole (``_meta`` is replaced as one object): the same put twice is harmless
        engine.put_meta(index, {MARKER: new})
        return Stored(name, index, pipeline, tuple(history[:HISTORY_LIMIT]))


def apply(engine: Engine, name: str, pipeline: Pipeline, *, lease_ttl: float | None = None) -> Stored:
    """Make ``pipeline`` the one ``name`` uses; the one it replaces goes first into the history.

    Raises:
        ValidationError, IndexMissingError, NotOwnedError: As :func:`read`.
        LeaseHeldError: Another run is changing ``name``.
    """
    def change(mark: Mapping[str, Any]) -> tuple[Pipeline, list[Pipeline]]:
        current = from_marker(mark)
        return pipeline, ([current] if current is not None else []) + history_of(mark)

    return _write(engine, name, change, lease_ttl=lease_ttl)


def rollback(engine: Engine, name: str, *, lease_ttl: float | None = None) -> Stored:
    """Restore the previous pipeline (the newest in the history); from the first one, back to none.

    Raises:
        ValidationError: ``name`` has no pipeline to roll back.
        IndexMissingError, NotOwnedError, LeaseHeldError: As :func:`apply`.
    """
    def change(mark: Mapping[str, Any]) -> tuple[Pipeline | None, list[Pipeline]]:
        current, history = from_marker(mark), history_of(mark)
        if current is None:
            raise ValidationError(f"{name!r} has no pipeline to roll back", field="pipeline")
        if not history:
            return None, []
        return dataclasses.replace(history[0], applied=_now(), how="rollback"), history[1:]

    return _write(engine, name, change, lease_ttl=lease_ttl)


def carried(mark: Mapping[str, Any] | None) -> dict[str, Any]:
    """The pipeline keys of a replaced index's marker, for the marker of the build that replaces it."""
    return {k: mark[k] for k in (PIPELINE_KEY, HISTORY_KEY) if mark and k in mark}


# -- resolution ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resolved:
    """The settings one search runs with, and where each came from.

    Attributes:
        values: Setting name (see :data:`FIELDS`) -> value.
        sources: Setting name -> ``argument``, ``environment``, ``settings``, ``pipeline`` or ``default``.
        pipeline: The index's pipeline (None when it has none or it is not used).
        model_check: ``ok``, ``changed``, ``missing`` or None (nothing to check).
        warning: What the model check found, when it found something.
    """

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    pipeline: Pipeline | None = None
    model_check: str | None = None
    warning: str | None = None

    def settings(self, base: Settings) -> Settings:
        """``base`` with the resolved values (what a reranker for them is built from)."""
        keys = ("reranker", "reranker_model", "reranker_backend", "blend", "blend_weight")
        return base.replace(**{k: self.values[k] for k in keys if getattr(base, k) != self.values[k]})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"settings": {k: {"value": self.values[k], "source": self.sources[k]}
                                            for k in self.values}}
        out["pipeline"] = None if self.pipeline is None else {
            "label": self.pipeline.label(), "applied": self.pipeline.applied, "how": self.pipeline.how}
        out["model_check"] = self.model_check
        if self.warning is not None:
            out["warning"] = self.warning
        return out


def given_in_settings(settings: Settings, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Settings the pipeline does not override: set in the environment, or other than the default."""
    env = os.environ if env is None else env
    out = {}
    for f in dataclasses.fields(Settings):
        if f.name not in FIELDS:
            continue
        if env.get(f.metadata["env"], "") != "":
            out[f.name] = "environment"
        elif getattr(settings, f.name) != f.default:
            out[f.name] = "settings"
    return out


def resolve(settings: Settings, pipeline: Pipeline | None, call: Mapping[str, Any] | None = None, *,
            env: Mapping[str, str] | None = None) -> Resolved:
    """Each pipeline setting from the call, then the settings, then the pipeline, then the default.

    A pipeline of no reranking sets only ``reranker`` (and ``final_k``); the others then come from
    the settings. The model check (:func:`check_model`) is the caller's to run.

    Raises:
        ConfigError: An unknown name in ``call``.
    """
    call = dict(call or {})
    unknown = set(call) - set(FIELDS)
    if unknown:
        raise ConfigError(f"unknown pipeline setting(s): {', '.join(sorted(unknown))}")
    given = given_in_settings(settings, env)
    values, sources = {}, {}
    for name in FIELDS:
        if call.get(name) is not None:
            values[name], sources[name] = call[name], "argument"
        elif name in given:
            values[name], sources[name] = getattr(settings, name), given[name]
        elif pipeline is not None and pipeline.value(name) is not None:
            values[name], sources[name] = pipeline.value(name), "pipeline"
        else:
            values[name], sources[name] = getattr(settings, name), "default"
    return Resolved(values, sources, pipeline)


def check_model(resolved: Resolved, mode: str) -> Resolved:
    """Compare the model folder in use with the fingerprint its pipeline recorded.

    Only when the reranker in use is the pipeline's model folder; a hub name has nothing to compare.
    ``warn`` logs and returns the finding; ``refuse`` raises.

    Raises:
        ConfigError: ``mode`` is not ``warn`` or ``refuse``.
        ModelError: ``refuse``, and the folder's files changed or are gone.
    """
    if mode not in MODEL_CHECKS:
        raise ConfigError(f"pipeline_model_check must be one of {', '.join(MODEL_CHECKS)}, got {mode!r}",
                          setting="pipeline_model_check")
    p = resolved.pipeline
    model = resolved.values.get("reranker_model")
    if p is None or not p.reranks or p.model_fingerprint is None or resolved.values.get("reranker") == NO_RERANKING \
            or model is None or _norm(model) != _norm(p.model):
        return resolved
    now = model_fingerprint(model)
    if now == p.model_fingerprint:
        return dataclasses.replace(resolved, model_check="ok")
    found = "missing" if now is None else "changed"
    message = (f"the reranker model folder {model} {'is gone' if now is None else 'no longer holds the files'} "
               f"the index's pipeline was chosen with (recorded {p.model_fingerprint[:19]}..., now "
               f"{'nothing' if now is None else now[:19] + '...'}): its results may differ from the evidence. Tune "
               "and apply again, or roll the pipeline back")
    if mode == "refuse":
        raise ModelError(message + " (ES_RERANK_PIPELINE_MODEL_CHECK=refuse)")
    logger.warning("%s", message)
    return dataclasses.replace(resolved, model_check=found, warning=message)


def _norm(model: str | None) -> str | None:
    if model is None:
        return None
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


__all__ = ["Pipeline", "Stored", "Resolved", "make", "read", "apply", "rollback", "resolve", "check_model",
           "model_fingerprint", "from_marker", "history_of", "of_state", "carried", "HISTORY_LIMIT", "FIELDS"]
