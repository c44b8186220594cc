"""Fine-tune a cross-encoder with sentence-transformers' ``CrossEncoderTrainer``.

The loop is the library's: a grouped loss (one positive against its hard negatives), the
``CrossEncoderRerankingEvaluator`` on the dev queries' hybrid candidates for early stopping
(``transformers.EarlyStoppingCallback`` with the best checkpoint loaded at the end), a fixed
seed, and progress through a ``TrainerCallback``. What this module adds: the model folder is
written atomically (:func:`atomic_folder`) with a model card, and the dev nDCG@10 before and
after training is compared with the hybrid order query by query.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..errors import ConfigError, TrainingRefusedError
from .data import DevQuery, Group

logger = logging.getLogger(__name__)

LOSSES = ("mnrl", "listnet", "bce")
CARD_JSON = "es-rerank-training.json"
DEV_METRIC = "ndcg@10"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run (all recorded in the model card).

    Attributes:
        base: Model folder or hub name to start from: a cross-encoder, or an encoder (a new
            one-logit head is added). Defaults to the packaged all-MiniLM-L6-v2 encoder.
        loss: ``mnrl`` (MultipleNegativesRankingLoss: the positive against its hard negatives
            and the batch's other documents), ``listnet`` (ListNetLoss over each group) or
            ``bce`` (BinaryCrossEntropyLoss on the flattened pairs). Defaults to ``mnrl``.
        depth: Hybrid candidates retrieved per query (negatives are mined from them, dev
            queries are reranked over them). Defaults to 30.
        skip_top: Candidates at ranks 1..skip_top are never negatives. Defaults to 3.
        negatives: Hard negatives per positive. Defaults to 4.
        epochs: Passes over the groups. Defaults to 1.
        batch_size: Groups per step. Defaults to 8.
        learning_rate: Peak learning rate (linear decay, 10% warm-up). Defaults to 2e-5.
        max_length: Token limit of a (query, passage) pair. Defaults to 256.
        seed: Seeds the data order, the head's initialisation and the held-out slice. Defaults to 12.
        eval_steps: Evaluate on dev every N steps; None: four times per epoch.
        patience: Stop after this many evaluations without a better dev nDCG@10. Defaults to 2.
        max_steps: Stop after N steps (-1: no limit). Defaults to -1.
        device: Torch device (``cpu``, ``cuda``); None lets torch choose.
    """

    base: str = "sentence-transformers/all-MiniLM-L6-v2"
    loss: str = "mnrl"
    depth: int = 30
    skip_top: int = 3
    negatives: int = 4
    epochs: float = 1.0
    batch_size: int = 8
    learning_rate: float = 2e-5
    max_length: int = 256
    seed: int = 12
    eval_steps: int | None = None
    patience: int = 2
    max_steps: int = -1
    device: str | None = None

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in ("depth", "negatives", "batch_size", "max_length", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.skip_top < 0:
            raise ConfigError(f"skip_top must be >= 0, got {self.skip_top}")
        if self.skip_top + self.negatives > self.depth:
            raise ConfigError(f"skip_top + negatives must be <= depth, got {self.skip_top} + {self.negatives} > "
                              f"{self.depth}: raise --depth")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ConfigError(f"epochs and learning_rate must be > 0, got {self.epochs} and {self.learning_rate}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ConfigError(f"eval_steps must be >= 1, got {self.eval_steps}")


@dataclass(frozen=True)
class Progress:
    """One progress report: after a logged step or a dev evaluation.

    Attributes:
        step, max_steps: Optimizer steps done and planned.
        loss: The last logged training loss, or None.
        dev: The last dev nDCG@10, or None before the first evaluation.
        best: The best dev nDCG@10 so far, or None.
        eta_s: Seconds left at the pace so far, or None.
    """

    step: int
    max_steps: int
    loss: float | None
    dev: float | None
    best: float | None
    eta_s: float | None


@dataclass(frozen=True)
class TrainResult:
    """What a run produced.

    Attributes:
        out: The model folder.
        card: The model card's data (also in ``es-rerank-training.json``).
    """

    out: Path
    card: Mapping[str, Any]


# -- the output folder ---------------------------------------------------------------------------

def check_output(out: Path, *, overwrite: bool) -> None:
    """Refuse an output folder that exists (unless ``overwrite``).

    Raises:
        TrainingRefusedError: ``output-exists``.
    """
    if out.exists() and not overwrite:
        raise TrainingRefusedError(f"output folder {out} exists: pass --overwrite to replace it, or choose another "
                                   "--out", reason="output-exists", values=(str(out),))
    if out.exists() and not out.is_dir():
        raise TrainingRefusedError(f"output {out} exists and is not a folder", reason="output-exists",
                                   values=(str(out),))


@contextmanager
def atomic_folder(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """A hidden sibling folder to write into, renamed to ``out`` only when the block succeeds.

    A run that fails or is killed leaves ``out`` as it was (absent, or the old model): never a
    half-written model. A killed process may leave ``.<name>.partial-*`` beside it (safe to delete).
    """
    check_output(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        yield partial
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
        os.rename(partial, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)


# -- datasets and losses ---------------------------------------------------------------------------

def _dataset(groups: Sequence[Group], loss_name: str, negatives: int):
    from datasets import Dataset

    if loss_name == "mnrl":
        full = [g for g in groups if len(g.negatives) >= negatives]
        columns: dict[str, list] = {"query": [g.query for g in full], "positive": [g.positive for g in full]}
        for i in range(negatives):
            columns[f"negative_{i + 1}"] = [g.negatives[i] for g in full]
        return Dataset.from_dict(columns), len(groups) - len(full)
    if loss_name == "listnet":
        return Dataset.from_dict({"query": [g.query for g in groups],
                                  "docs": [[g.positive, *g.negatives] for g in groups],
                                  "labels": [[1.0] + [0.0] * len(g.negatives) for g in groups]}), 0
    rows = [(g.query, p, float(i == 0)) for g in groups for i, p in enumerate([g.positive, *g.negatives])]
    return Dataset.from_dict({"query": [r[0] for r in rows], "passage": [r[1] for r in rows],
                              "label": [r[2] for r in rows]}), 0


def _loss(model: Any, loss_name: str):
    from sentence_transformers.cross_encoder import losses

    if loss_name == "mnrl":
        return losses.MultipleNegativesRankingLoss(model)
    if loss_name == "listnet":
        return losses.ListNetLoss(model)
    return losses.BinaryCrossEntropyLoss(model)


def _evaluator(dev: Sequence[DevQuery], positives: Mapping[str, str], batch_size: int):
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    samples = []
    for d in dev:
        relevant = {doc for doc, grade in d.relevant.items() if grade > 0}
        pos = [p for doc, p in zip(d.candidate_ids, d.candidates) if doc in relevant]
        pos += [positives[doc] for doc in sorted(relevant) if doc not in d.candidate_ids and doc in positives]
        samples.append({"query": d.query, "positive": pos, "documents": list(d.candidates)})
    # the candidates as retrieved: a positive the first stage missed stays missed, as in production
    return CrossEncoderRerankingEvaluator(samples, at_k=10, always_rerank_positives=False, name="dev",
                                          batch_size=batch_size, write_csv=False)


def dev_runs(dev: Sequence[DevQuery], score: Callable[[list[tuple[str, str]]], Sequence[float]] | None,
             ) -> dict[str, dict[str, float]]:
    """The dev queries' runs: the hybrid order when ``score`` is None, else the reranked order."""
    runs: dict[str, dict[str, float]] = {}
    pairs = [(d.query, c) for d in dev for c in d.candidates]
    scores = list(score(pairs)) if score is not None and pairs else []
    at = 0
    for d in dev:
        n = len(d.candidates)
        if score is None:
            runs[d.query_id] = {doc: 1.0 / rank for rank, doc in enumerate(d.candidate_ids, start=1)}
        else:
            runs[d.query_id] = {doc: float(s) for doc, s in zip(d.candidate_ids, scores[at:at + n])}
        at += n
    return runs


def compare_on_dev(dev: Sequence[DevQuery], runs: Mapping[str, Mapping[str, Mapping[str, float]]],
                   *, seed: int) -> dict[str, Any]:
    """nDCG@10 of each run on dev and each reranked run against ``hybrid``, with a paired interval."""
    from ..evaluate.metrics import per_query
    from ..evaluate.stats import paired_comparison

    qrels = {d.query_id: dict(d.relevant) for d in dev}
    values = {name: per_query(qrels, run, DEV_METRIC) for name, run in runs.items()}
    out: dict[str, Any] = {"queries": len(dev), "metric": DEV_METRIC}
    for name, v in values.items():
        out[name] = round(sum(v.values()) / len(v), 4)
    for name in values:
        if name != "hybrid":
            c = paired_comparison(values["hybrid"], values[name], metric=DEV_METRIC, seed=seed)
            out[f"{name}_vs_hybrid"] = c.to_dict(with_deltas=False)
    return out


# -- the run ---------------------------------------------------------------------------------------

def load_base(base: str, *, max_length: int, device: str | None, seed: int):
    """The starting cross-encoder: ``base`` as is, or an encoder with a new one-logit head (seeded)."""
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    from ..runtime import resolve_model

    torch.manual_seed(seed)
    return CrossEncoder(resolve_model(base), num_labels=1, max_length=max_length, device=device)


def _card_markdown(card: Mapping[str, Any]) -> str:
    lines = [f"# {card['kind']}: a cross-encoder trained by es-rerank", "",
             f"- base: `{card['base']}`", f"- data fingerprint: `{card['data']['fingerprint']}`",
             f"- command: `{card.get('command', '')}`", ""]
    lines += ["## Data", "", "```json", json.dumps(card["data"], indent=2), "```", "",
              "## Hyper-parameters", "", "```json", json.dumps(card["config"], indent=2), "```", "",
              "## Dev metrics", "", "```json", json.dumps(card.get("dev", {}), indent=2), "```", "",
              "Use it: `ES_RERANK_RERANKER_MODEL=<this folder>` (onnx builds its graph from the weights; "
              "`es-rerank export-onnx` makes the int8 and OpenVINO files).", ""]
    return "\n".join(lines)


def write_card(folder: Path, card: Mapping[str, Any]) -> None:
    """``README.md`` (for people) and ``es-rerank-training.json`` (for tools) in ``folder``."""
    (folder / CARD_JSON).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(_card_markdown(card), encoding="utf-8")


class _ProgressCallback:
    """Adapts the trainer's callback events to :class:`Progress` reports, one per step at most.

    A step's loss (``on_log``) and dev score (``on_evaluate``) arrive after its ``on_step_end``,
    so a step worth reporting is shown when the next one begins (or training ends), with all of it.
    """

    def __new__(cls, on_progress: Callable[[Progress], None], metric_key: str):
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def __init__(self):
                self.started = time.perf_counter()
                self.loss: float | None = None
                self.dev: float | None = None
                self.best: float | None = None
                self.pending = False

            def _flush(self, state):
                if not self.pending:
                    return
                self.pending = False
                done = state.global_step
                eta = ((time.perf_counter() - self.started) / done * (state.max_steps - done)) if done else None
                on_progress(Progress(done, state.max_steps, self.loss, self.dev, self.best, eta))

            def on_step_begin(self, args, state, control, **kwargs):
                self._flush(state)

            def on_step_end(self, args, state, control, **kwargs):
                every = max(1, state.max_steps // 50)
                if state.global_step == 1 or state.global_step % every == 0:
                    self.pending = True

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    self.loss = float(logs["loss"])
                    self.pending = True

            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                if metrics and metric_key in metrics:
                    self.dev = float(metrics[metric_key])
                    self.best = self.dev if self.best is None else max(self.best, self.dev)
                    self.pending = True

            def on_train_end(self, args, state, control, **kwargs):
                self._flush(state)

        return _Callback()


def train_cross_encoder(groups: Sequence[Group], dev: Sequence[DevQuery], config: TrainConfig, out: str | Path, *,
                        positives: Mapping[str, str] | None = None, overwrite: bool = False,
                        card: Mapping[str, Any] | None = None, loss_name: str | None = None,
                        on_progress: Callable[[Progress], None] | None = None) -> TrainResult:
    """Train from ``config.base`` on ``groups``, stop early on ``dev``, write the model to ``out`` atomically.

    Args:
        groups: Training groups (a query, one positive, hard negatives).
        dev: Dev queries with their hybrid candidates and judgments (never training queries).
        config: Hyper-parameters.
        out: The model folder to write (must not exist unless ``overwrite``).
        positives: Passages of judged dev documents by id (for the evaluator's positives that
            the first stage missed).
        overwrite: Replace an existing ``out`` (only once the new model is complete).
        card: Extra model-card fields (data description, command line).
        loss_name: Overrides ``config.loss``.
        on_progress: Called with a :class:`Progress` after each logged step and dev evaluation.

    Returns:
        The folder and the model card written into it.

    Raises:
        TrainingRefusedError: ``out`` exists, or no usable group or dev query.
    """
    out = Path(out)
    check_output(out, overwrite=overwrite)
    if not groups:
        raise TrainingRefusedError("no training groups: every query lacked a positive or hard negatives",
                                   reason="no-examples")
    if not dev:
        raise TrainingRefusedError("no dev queries to stop early on", reason="no-examples")
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from transformers import EarlyStoppingCallback

    started = time.perf_counter()
    loss_name = config.loss if loss_name is None else loss_name
    model = load_base(config.base, max_length=config.max_length, device=config.device, seed=config.seed)
    dataset, dropped = _dataset(groups, loss_name, config.negatives)
    if len(dataset) == 0:
        raise TrainingRefusedError(f"no group has {config.negatives} hard negatives: lower --negatives or raise "
                                   "--depth", reason="no-examples")
    steps_per_epoch = max(1, -(-len(dataset) // config.batch_size))
    eval_steps = config.eval_steps if config.eval_steps is not None else max(1, steps_per_epoch // 4)
    evaluator = _evaluator(dev, positives or {}, batch_size=32)
    metric_key = f"eval_dev_{DEV_METRIC}"
    hybrid = dev_runs(dev, None)
    before = dev_runs(dev, lambda pairs: model.predict(pairs, batch_size=32, show_progress_bar=False))
    with atomic_folder(out, overwrite=overwrite) as folder:
        work = folder / "checkpoints"
        args = CrossEncoderTrainingArguments(
            output_dir=str(work), num_train_epochs=config.epochs, max_steps=config.max_steps,
            per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate, warmup_ratio=0.1,
            seed=config.seed, data_seed=config.seed, eval_strategy="steps", eval_steps=eval_steps,
            save_strategy="steps", save_steps=eval_steps, save_total_limit=2, load_best_model_at_end=True,
            metric_for_best_model=metric_key, greater_is_better=True, logging_steps=max(1, eval_steps // 2),
            report_to="none", disable_tqdm=True, use_cpu=config.device == "cpu", dataloader_num_workers=0)
        callbacks: list[Any] = [EarlyStoppingCallback(early_stopping_patience=config.patience)]
        if on_progress is not None:
            callbacks.append(_ProgressCallback(on_progress, metric_key))
        trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=_loss(model, loss_name),
                                      evaluator=evaluator, callbacks=callbacks)
        quiet(trainer)
        trainer.train()
        evals = [e for e in trainer.state.log_history if metric_key in e]
        after = dev_runs(dev, lambda pairs: model.predict(pairs, batch_size=32, show_progress_bar=False))
        shutil.rmtree(work, ignore_errors=True)
        model.save_pretrained(str(folder))
        planned = trainer.state.max_steps
        full = {
            "kind": "fine-tuned",
            **dict(card or {}),
            "base": config.base,
            "config": {**asdict(config), "loss": loss_name, "eval_steps": eval_steps},
            "training": {"groups": len(dataset), "groups_dropped_short": dropped, "steps": trainer.state.global_step,
                         "planned_steps": planned, "stopped_early": trainer.state.global_step < planned,
                         "best_step": _best_step(evals, metric_key), "best_checkpoint": trainer.state.best_model_checkpoint
                         and Path(trainer.state.best_model_checkpoint).name,
                         "dev_history": [{"step": e["step"], DEV_METRIC: round(e[metric_key], 4)} for e in evals],
                         "wall_seconds": round(time.perf_counter() - started, 1),
                         "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
            "dev": compare_on_dev(dev, {"hybrid": hybrid, "base": before, "trained": after}, seed=config.seed),
        }
        write_card(folder, full)
    return TrainResult(out, full)


def quiet(trainer: Any) -> None:
    """Take out the trainer's own printing callbacks: only the CLI prints (progress comes through ours)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def _best_step(evals: Sequence[Mapping[str, Any]], key: str) -> int | None:
    if not evals:
        return None
    return int(max(evals, key=lambda e: e[key])["step"])
