"""Promote a trained reranker only when it beats what the index uses now, on held-out questions.

``es-rerank train --apply`` ends here: the trained model is run in the index's current pipeline
(its depth, blend and weight; from the settings where the index has none) against that pipeline
as it is, on the dev questions the run held out of training (a dev split, or the held-out slice
of train). Both arms rerank the same hybrid candidates through the searcher's own rerank step;
nDCG@10 per question gives a paired 95% bootstrap interval. The trained model wins only when
that interval lies above 0; the pipeline to apply carries this comparison (and, as ``tune``'s
do, nDCG@10 and recall@10 against hybrid) as its evidence.

The dev questions also chose the checkpoint (early stopping), so the comparison leans slightly
toward the trained model; the evidence says so.

Example:
    >>> verdict = compare(searcher, prepared.dev, current, "models/mine", settings)  # doctest: +SKIP
    >>> verdict.wins, verdict.sentence()  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..config import Settings
from ..errors import RerankerError, ValidationError
from ..evaluate.metrics import doc_scores, per_query
from ..evaluate.stats import paired_comparison
from ..evaluate.tuning import question_fingerprint
from ..pipelines import NO_RERANKING, Pipeline, Resolved, make
from ..ranking import collapse
from ..rerankers import build_reranker
from .data import DevQuery

METRIC = "ndcg@10"
EVIDENCE_METRICS = ("ndcg@10", "recall@10")


@dataclass(frozen=True)
class Verdict:
    """The trained model against the index's current pipeline on the dev questions.

    Attributes:
        current: Label of what the index uses now.
        pipeline: The pipeline that would be applied (the trained model in the current settings).
        comparison: ``paired_comparison(current, trained)`` on nDCG@10, as a dict.
        wins: The interval lies wholly above 0.
    """

    current: str
    pipeline: Pipeline
    comparison: Mapping[str, Any]
    wins: bool

    def sentence(self) -> str:
        c = self.comparison
        ci = "no interval (too few questions)" if c.get("ci_low") is None else \
            f"95% CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f}"
        verdict = "a win" if self.wins else "not a win (the interval does not lie above 0)"
        return (f"trained model vs the index's current pipeline ({self.current}) on {c['queries']} held-out dev "
                f"questions, {METRIC}: {c['setup_mean']:.4f} vs {c['baseline_mean']:.4f}, {c['mean_delta']:+.4f}, "
                f"{ci}; {c['wins']} wins, {c['ties']} ties, {c['losses']} losses: {verdict}")


def _current_label(current: Resolved) -> str:
    if current.pipeline is not None:
        return current.pipeline.label()
    v = current.values
    if v["reranker"] == NO_RERANKING:
        return "no pipeline: no reranking (hybrid) from the settings"
    return f"no pipeline: {v['reranker']} ({v['reranker_model']}) depth={v['depth']} blend={v['blend']} from the settings"


def _runs(searcher: Any, dev: Sequence[DevQuery], depth: int, arms: Mapping[str, Any], *, blend: str,
          blend_weight: float) -> dict[str, dict[str, dict[str, float]]]:
    """``arm -> query_id -> doc -> score`` for each arm (None: hybrid order) on the same candidates."""
    runs: dict[str, dict[str, dict[str, float]]] = {name: {} for name in arms}
    for d in dev:
        hits = searcher.retrieve(d.query, depth=depth).hits
        for name, reranker in arms.items():
            if reranker is None:
                runs[name][d.query_id] = doc_scores(collapse(hits))
                continue
            out = searcher.rerank(d.query, hits, final_k=None, reranker=reranker, results="documents", blend=blend,
                                  blend_weight=blend_weight)
            if hits and not out.reranked:
                raise RerankerError(f"reranker {name} failed on dev query {d.query_id!r}: {out.error}", reranker=name)
            runs[name][d.query_id] = doc_scores(out.hits)
    return runs


def compare(searcher: Any, dev: Sequence[DevQuery], current: Resolved, model: str, settings: Settings, *,
            seed: int = 0, data: str | None = None, split: str = "dev") -> Verdict:
    """Run the trained ``model`` in ``current``'s settings against ``current`` on ``dev``.

    Args:
        searcher: A :class:`es_rerank.client.Searcher` over the index the dev questions are judged on.
        dev: The run's dev questions (never training questions).
        current: What the target index uses now (:func:`es_rerank.pipelines.resolve`).
        model: The trained model's folder.
        settings: The base settings (backend, batch size) the rerankers are built from.
        seed: Seeds the bootstrap.
        data, split: Recorded in the evidence.

    Raises:
        ValidationError: No dev question has a judged document.
        RerankerError: A reranker failed on a question.
    """
    dev = [d for d in dev if any(g > 0 for g in d.relevant.values())]
    if not dev:
        raise ValidationError("no dev question has a judged relevant document: nothing to compare on")
    v = current.values
    kind = v["reranker"]
    backend = v["reranker_backend"] if kind == "cross-encoder" else settings.reranker_backend
    candidate = make(reranker="cross-encoder", model=model, backend=backend, depth=v["depth"],
                     final_k=current.pipeline.final_k if current.pipeline is not None else None, blend=v["blend"],
                     blend_weight=v["blend_weight"], how="train")
    trained = build_reranker("cross-encoder", settings.replace(reranker="cross-encoder", reranker_model=candidate.model,
                                                               reranker_backend=backend))
    arms = {"hybrid": None, "current": None if kind == NO_RERANKING else build_reranker(kind, current.settings(settings)),
            "trained": trained}
    runs = _runs(searcher, dev, v["depth"], arms, blend=v["blend"], blend_weight=v["blend_weight"])
    qrels = {d.query_id: dict(d.relevant) for d in dev}
    values = {m: {name: per_query(qrels, run, m) for name, run in runs.items()} for m in EVIDENCE_METRICS}
    against = paired_comparison(values[METRIC]["current"], values[METRIC]["trained"], metric=METRIC, seed=seed)
    c = against.to_dict(with_deltas=False)
    wins = bool(c["better"])
    label = _current_label(current)
    evidence = {
        "questions": {"data": data, "split": split, "queries": len(dev),
                      "fingerprint": question_fingerprint({d.query_id: d.query for d in dev}, qrels)},
        "setting": candidate.label(), "tuned_for": METRIC, "folds": None, "held_out": True, "tuned": None,
        "metrics": {m: paired_comparison(values[m]["hybrid"], values[m]["trained"], metric=m, seed=seed)
                    .to_dict(with_deltas=False) for m in EVIDENCE_METRICS},
        "against_current": {"pipeline": label, **c},
        "note": "the dev questions also chose the training checkpoint (early stopping): slightly optimistic "
                "for the trained model",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    pipeline = make(reranker="cross-encoder", model=model, backend=backend, depth=v["depth"],
                    final_k=candidate.final_k, blend=v["blend"], blend_weight=v["blend_weight"], evidence=evidence,
                    how="train")
    return Verdict(label, pipeline, {"queries": len(dev), **c}, wins)


__all__ = ["Verdict", "compare"]
