"""Distill a cross-encoder into a shallower one that ranks like it on the user's own candidates.

The student is the teacher's first N transformer layers (with the teacher's head); it is
trained on the teacher's raw logits over (query, candidate) pairs from the index, with
sentence-transformers' ``MSELoss`` (each logit reproduced) or ``ListNetLoss`` with the
teacher's logits as soft labels (each query's softmax over its candidates matched: the order
within a query, which is all a reranker uses, and most of all its top). No judgments are needed. A held-out share of the
queries measures fidelity (per-query Spearman correlation of the two models' scores, overlap
of their top 5) and the speed-up at depth 50 on one runtime backend.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, TrainingRefusedError
from .data import documents_in_order, fingerprint
from .trainer import Progress, TrainResult, _ProgressCallback, atomic_folder, check_output, quiet, write_card

logger = logging.getLogger(__name__)

SPEED_DEPTH = 50
LOSSES = ("mse", "listnet")


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of a distillation (recorded in the model card).

    Attributes:
        teacher: The cross-encoder to imitate (folder or hub name).
        layers: Transformer layers the student keeps (the teacher's first N).
        depth: Candidates per training query. Defaults to 30.
        loss: ``mse`` (each logit) or ``listnet`` (each query's softmax). Defaults to ``mse``.
            With ``listnet`` a step takes whole queries: ``batch_size`` pairs rounded to
            queries, at least one.
        epochs, batch_size, learning_rate, max_length, seed: As for training.
        fidelity_fraction: Share of the queries held out to measure fidelity. Defaults to 0.2.
        speed_backend: Runtime backend the speed-up is measured on. Defaults to ``onnx``.
        device: Torch device; None lets torch choose.
    """

    teacher: str
    layers: int
    depth: int = 30
    loss: str = "mse"
    epochs: float = 1.0
    batch_size: int = 16
    learning_rate: float = 5e-5
    max_length: int = 256
    seed: int = 12
    fidelity_fraction: float = 0.2
    speed_backend: str = "onnx"
    device: str | None = None

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ConfigError(f"layers must be >= 1, got {self.layers}")
        if self.loss not in LOSSES:
            raise ConfigError(f"distill loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not 0 < self.fidelity_fraction < 1:
            raise ConfigError(f"fidelity_fraction must be in (0, 1), got {self.fidelity_fraction}")


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties broken by position).

    Example:
        >>> spearman([1, 2, 3], [10, 20, 30]), spearman([1, 2, 3], [3, 2, 1])
        (1.0, -1.0)
    """
    if len(a) < 2:
        return 1.0
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1])


def top_overlap(a: Sequence[float], b: Sequence[float], k: int = 5) -> float:
    """Share of the top ``k`` by ``a`` that is also in the top ``k`` by ``b``.

    Example:
        >>> top_overlap([5, 4, 3, 2, 1, 0], [5, 4, 3, 2, 0, 1], k=5)
        0.8
    """
    k = min(k, len(a))
    if k == 0:
        return 1.0
    ta, tb = set(np.argsort(-np.asarray(a))[:k]), set(np.argsort(-np.asarray(b))[:k])
    return len(ta & tb) / k


def truncate(model: Any, layers: int) -> None:
    """Keep the first ``layers`` transformer layers of a BERT-like cross-encoder, in place.

    Raises:
        ConfigError: The model has no ``encoder.layer`` list, or fewer layers than asked.
    """
    import torch

    hf = model.model
    encoder = getattr(getattr(hf, "base_model", None), "encoder", None)
    stack = getattr(encoder, "layer", None)
    if stack is None:
        raise ConfigError(f"cannot cut {type(hf).__name__}: it has no encoder.layer stack (BERT-like models only)")
    if layers >= len(stack):
        raise ConfigError(f"--layers must be below the teacher's {len(stack)} layers, got {layers}")
    encoder.layer = torch.nn.ModuleList(list(stack)[:layers])
    hf.config.num_hidden_layers = layers


def _speed(folder: str, backend: str, candidates: Sequence[tuple[str, Sequence[str]]]) -> float:
    """Mean seconds per query to score its candidates on ``backend`` (one warm-up query first)."""
    from ..runtime import load_cross_encoder

    ce = load_cross_encoder(folder, backend=backend)
    ce.score_pairs([(candidates[0][0], t) for t in candidates[0][1]])
    started = time.perf_counter()
    for query, texts in candidates:
        ce.score_pairs([(query, t) for t in texts])
    return (time.perf_counter() - started) / len(candidates)


def _candidates(searcher: Any, order: Sequence[str], held: Sequence[str], config: DistillConfig,
                on_query: Callable[[int, int], None] | None) -> dict[str, list[str]]:
    """Each query's candidate passages from the user's index (deeper for the held-out, speed-timed ones)."""
    out: dict[str, list[str]] = {}
    for i, q in enumerate(order, start=1):
        depth = max(config.depth, SPEED_DEPTH) if q in held else config.depth
        out[q] = [h.passage for h in documents_in_order(searcher.retrieve(q, depth=depth).hits)]
        if on_query:
            on_query(i, len(order))
    return out


def _dataset_and_loss(config: DistillConfig, student: Any, train: Sequence[str], candidates: Mapping[str, list[str]],
                      labels: np.ndarray) -> tuple[Any, Any, int]:
    """The training rows, the loss and the rows per step: one row per pair and ``MSELoss`` (mse), or one
    row per query with its candidates and the teacher's logits as soft labels, and ``ListNetLoss``
    (listnet). ``labels`` are the teacher's logits over ``train``'s candidates, in order."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder.losses import ListNetLoss, MSELoss

    lists = [candidates[q][:config.depth] for q in train]
    if config.loss == "mse":
        dataset = Dataset.from_dict({"query": [q for q, docs in zip(train, lists) for _ in docs],
                                     "passage": [d for docs in lists for d in docs],
                                     "score": [float(x) for x in labels]})
        return dataset, MSELoss(student), config.batch_size
    rows, at = [], 0
    for q, docs in zip(train, lists):
        if len(docs) >= 2:
            rows.append((q, docs, [float(x) for x in labels[at:at + len(docs)]]))
        at += len(docs)
    dataset = Dataset.from_dict({"query": [r[0] for r in rows], "docs": [r[1] for r in rows],
                                 "labels": [r[2] for r in rows]})
    per_step = max(1, round(config.batch_size / max(1.0, at / max(1, len(rows)))))
    return dataset, ListNetLoss(student, mini_batch_size=32), per_step


def distill(searcher: Any, queries: Sequence[str], config: DistillConfig, out: str | Path, *, overwrite: bool = False,
            card: Mapping[str, Any] | None = None, on_progress: Callable[[Progress], None] | None = None,
            on_query: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train the teacher's first ``config.layers`` layers to match its logits; write the student to ``out``.

    Args:
        searcher: Retrieves the candidates (the user's own index).
        queries: Query texts (a file of real queries, or pseudo-queries).
        config: Hyper-parameters.
        out: The student's folder (written atomically; must not exist unless ``overwrite``).
        card: Extra model-card fields.
        on_progress: Training progress.
        on_query: ``(done, total)`` while candidates are retrieved and scored.

    Returns:
        The folder and its model card, with ``fidelity`` and ``speed`` sections.

    Raises:
        TrainingRefusedError: ``out`` exists, or fewer than 5 queries.
    """
    out = Path(out)
    check_output(out, overwrite=overwrite)
    queries = list(dict.fromkeys(q.strip() for q in queries if q.strip()))
    if len(queries) < 5:
        raise TrainingRefusedError(f"distillation needs at least 5 distinct queries, got {len(queries)}",
                                   reason="too-few-queries", values=(str(len(queries)),))
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments

    from ..runtime import model_folder, resolve_model

    started = time.perf_counter()
    order = list(queries)
    random.Random(config.seed).shuffle(order)
    n_held = max(2, round(len(order) * config.fidelity_fraction))
    held, train = order[:n_held], order[n_held:]
    candidates = _candidates(searcher, order, held, config, on_query)
    teacher_path = str(model_folder(resolve_model(config.teacher), "torch")) if not Path(config.teacher).is_dir() \
        else config.teacher
    teacher = CrossEncoder(teacher_path, max_length=config.max_length, device=config.device)
    identity = torch.nn.Identity()

    def logits(model: Any, pairs: list[tuple[str, str]]) -> np.ndarray:
        return np.asarray(model.predict(pairs, batch_size=32, activation_fn=identity, show_progress_bar=False), float)

    pairs = [(q, t) for q in train for t in candidates[q][:config.depth]]
    labels = logits(teacher, pairs)
    held_pairs = {q: [(q, t) for t in candidates[q][:config.depth]] for q in held}
    teacher_held = {q: logits(teacher, p) for q, p in held_pairs.items()}
    torch.manual_seed(config.seed)
    student = CrossEncoder(teacher_path, max_length=config.max_length, device=config.device)
    truncate(student, config.layers)
    dataset, loss, per_step = _dataset_and_loss(config, student, train, candidates, labels)
    with atomic_folder(out, overwrite=overwrite) as folder:
        args = CrossEncoderTrainingArguments(
            output_dir=str(folder / "checkpoints"), num_train_epochs=config.epochs,
            per_device_train_batch_size=per_step, learning_rate=config.learning_rate, warmup_ratio=0.1,
            seed=config.seed, data_seed=config.seed, save_strategy="no", eval_strategy="no",
            logging_steps=max(1, len(dataset) // per_step // 10), report_to="none", disable_tqdm=True,
            use_cpu=config.device == "cpu", dataloader_num_workers=0)
        callbacks = [_ProgressCallback(on_progress, "-")] if on_progress is not None else []
        trainer = CrossEncoderTrainer(model=student, args=args, train_dataset=dataset, loss=loss, callbacks=callbacks)
        quiet(trainer)
        trainer.train()
        student.save_pretrained(str(folder))
        rhos, overlaps = [], []
        for q, p in held_pairs.items():
            s = logits(student, p)
            rhos.append(spearman(teacher_held[q], s))
            overlaps.append(top_overlap(teacher_held[q], s, 5))
        speed_set = [(q, candidates[q][:SPEED_DEPTH]) for q in held if len(candidates[q]) >= 2]
        t_teacher = _speed(teacher_path, config.speed_backend, speed_set)
        t_student = _speed(str(folder), config.speed_backend, speed_set)
        full = {
            "kind": "distilled",
            **dict(card or {}),
            "base": config.teacher,
            "config": asdict(config),
            "data": {"source": "queries", "queries": len(order), "train_queries": len(train),
                     "fidelity_queries": len(held), "pairs": len(pairs), "index": searcher.settings.index,
                     "fingerprint": fingerprint(sorted(train), sorted(held))},
            "training": {"steps": trainer.state.global_step, "wall_seconds": round(time.perf_counter() - started, 1)},
            "fidelity": {"queries": len(held), "spearman_mean": round(float(np.mean(rhos)), 4),
                         "top5_overlap_mean": round(float(np.mean(overlaps)), 4)},
            "speed": {"backend": config.speed_backend, "depth": SPEED_DEPTH, "queries": len(speed_set),
                      "candidates_mean": round(float(np.mean([len(c) for _, c in speed_set])), 1),
                      "teacher_s_per_query": round(t_teacher, 4), "student_s_per_query": round(t_student, 4),
                      "speedup": round(t_teacher / t_student, 2) if t_student > 0 else None},
        }
        write_card(folder, full)
    return TrainResult(out, full)
