"""Paired comparison of a setup against a baseline over the same queries.

Two setups evaluated on the same queries are compared query by query: the per-query
deltas (setup minus baseline), their mean, how many queries won, tied or lost, and a
percentile-bootstrap confidence interval of the mean delta (queries resampled with
replacement). When that interval excludes 0 the difference is unlikely to be noise
from this particular set of queries.

Example:
    >>> base = {"q1": 0.5, "q2": 0.25, "q3": 1.0, "q4": 0.0}
    >>> new = {"q1": 0.75, "q2": 0.5, "q3": 1.0, "q4": 0.25}
    >>> c = paired_comparison(base, new, metric="ndcg@10", resamples=2000)
    >>> c.mean_delta, (c.wins, c.ties, c.losses), c.excludes_zero
    (0.1875, (3, 1, 0), True)
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import ValidationError

logger = logging.getLogger(__name__)

TIE_TOLERANCE = 1e-12
DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
# resample in blocks of at most this many drawn indices, so memory stays small for
# large query sets while each block is still one vectorised numpy operation
_BLOCK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class PairedComparison:
    """A setup against a baseline on the same queries.

    Attributes:
        metric: The metric compared (for the record; e.g. ``ndcg@10``).
        queries: How many queries were compared.
        baseline_mean: Mean metric of the baseline.
        setup_mean: Mean metric of the setup.
        mean_delta: ``setup_mean - baseline_mean`` (the mean of the per-query deltas).
        ci_low: Lower bound of the bootstrap confidence interval of ``mean_delta``;
            None with fewer than 2 queries (no interval can be estimated).
        ci_high: Upper bound, likewise.
        confidence: Confidence level of the interval (0.95: the 2.5th and 97.5th percentiles).
        excludes_zero: True when the interval lies entirely above or below 0, by at least
            the tie tolerance 1e-12 (never with fewer than 2 queries).
        wins: Queries where the setup scored higher (delta >= 1e-12).
        ties: Queries with ``|delta| < 1e-12``.
        losses: Queries where the setup scored lower.
        resamples: Bootstrap resamples drawn.
        seed: Seed of the resampling (the same seed gives the same interval).
        deltas: ``query_id -> setup - baseline``, in the baseline's query order.
    """

    metric: str
    queries: int
    baseline_mean: float
    setup_mean: float
    mean_delta: float
    ci_low: float | None
    ci_high: float | None
    confidence: float
    excludes_zero: bool
    wins: int
    ties: int
    losses: int
    resamples: int
    seed: int
    deltas: Mapping[str, float]

    @property
    def better(self) -> bool:
        """The setup is better and the interval says it is not noise."""
        return self.excludes_zero and self.mean_delta > 0

    def summary(self, setup: str = "setup", baseline: str = "baseline") -> str:
        """One sentence: mean delta, interval, wins/ties/losses, and what it means."""
        if self.ci_low is None or self.ci_high is None:
            interval = f"no confidence interval from {self.queries} query"
        else:
            interval = f"{self.confidence:.0%} CI {self.ci_low:+.4f} to {self.ci_high:+.4f}"
        if self.better:
            verdict = f"{setup} is better"
        elif self.excludes_zero:
            verdict = f"{setup} is worse"
        else:
            verdict = "the difference is within noise"
        label = f" {self.metric}" if self.metric else ""
        return (f"{setup} vs {baseline}:{label} {self.setup_mean:.4f} vs {self.baseline_mean:.4f}, "
                f"delta {self.mean_delta:+.4f} ({interval}) over {self.queries} queries; "
                f"{self.wins} wins, {self.ties} ties, {self.losses} losses: {verdict}.")

    def to_dict(self, *, with_deltas: bool = True) -> dict[str, Any]:
        """Plain JSON-ready values; ``with_deltas=False`` leaves out the per-query deltas."""
        out = asdict(self)
        out["deltas"] = dict(self.deltas)
        out["better"] = self.better
        if not with_deltas:
            del out["deltas"]
        return out


def verdict(c: PairedComparison) -> str:
    """``better``, ``worse`` or ``within noise``: what the interval says."""
    return "better" if c.better else "worse" if c.excludes_zero else "within noise"


def paired_phrase(c: PairedComparison) -> str:
    """``+0.012, 95% CI -0.004 to +0.029; 41 wins, 230 ties, 29 losses: within noise``."""
    return (f"{c.mean_delta:+.3f}, {_interval(c)}; {_count(c.wins, 'win', 'wins')}, {_count(c.ties, 'tie', 'ties')}, "
            f"{_count(c.losses, 'loss', 'losses')}: {verdict(c)}")


def _interval(c: PairedComparison) -> str:
    if c.ci_low is None or c.ci_high is None:
        return "no interval from 1 query"
    return f"{c.confidence:.0%} CI {c.ci_low:+.3f} to {c.ci_high:+.3f}"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def bootstrap_ci(
    values: np.ndarray | list[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values``.

    Draws ``resamples`` samples of ``len(values)`` values with replacement (numpy,
    vectorised in blocks) and returns the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` percentiles of their means.

    Args:
        values: At least one finite value.
        resamples: Number of bootstrap samples. Defaults to 10,000.
        confidence: Level in (0, 1). Defaults to 0.95.
        seed: Seed of numpy's default generator. Defaults to 0.

    Returns:
        ``(low, high)`` as floats.

    Raises:
        ValidationError: No values, a non-finite value, ``resamples`` < 1 or ``confidence``
            outside (0, 1).
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValidationError(f"bootstrap needs a non-empty list of values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValidationError(f"bootstrap values must be finite, got {float(arr[~np.isfinite(arr)][0])!r}")
    _check_resampling(resamples, confidence, seed)
    rng = np.random.default_rng(seed)
    n = arr.size
    block = max(1, _BLOCK_ELEMENTS // n)
    means = np.empty(resamples, dtype=float)
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        means[start:start + rows] = arr[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def _check_resampling(resamples: int, confidence: float, seed: int) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValidationError(f"resamples must be an integer >= 1, got {resamples!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ValidationError(f"confidence must be a number in (0, 1), got {confidence!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValidationError(f"seed must be an integer >= 0, got {seed!r}")


def paired_comparison(
    baseline: Mapping[str, float],
    setup: Mapping[str, float],
    *,
    metric: str = "",
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> PairedComparison:
    """Compare per-query metric values of ``setup`` against ``baseline`` on the same queries.

    Args:
        baseline: ``query_id -> metric value`` of the baseline (e.g. from
            :func:`es_rerank.evaluate.metrics.per_query`).
        setup: The same for the setup; must hold exactly the same query ids.
        metric: Name of the metric, for the record. Defaults to "".
        resamples: Bootstrap resamples. Defaults to 10,000.
        confidence: Interval level in (0, 1). Defaults to 0.95.
        seed: Resampling seed. Defaults to 0.

    Returns:
        The comparison. With one query there is no interval (``ci_low``/``ci_high`` None,
        ``excludes_zero`` False); when every query ties the interval is [0, 0] and does
        not exclude 0.

    Raises:
        ValidationError: No queries, different query sets (the message names some of the
            missing ids), a non-finite value, or bad resampling arguments.

    Example:
        >>> c = paired_comparison({"q1": 0.5, "q2": 0.5}, {"q1": 0.5, "q2": 0.5})
        >>> (c.mean_delta, c.ci_low, c.ci_high, c.ties, c.excludes_zero)
        (0.0, 0.0, 0.0, 2, False)
    """
    _check_resampling(resamples, confidence, seed)
    if not baseline:
        raise ValidationError("paired comparison needs at least one query; the baseline has none")
    missing = [q for q in baseline if q not in setup]
    extra = [q for q in setup if q not in baseline]
    if missing or extra:
        raise ValidationError(
            "baseline and setup must cover the same queries: "
            f"{len(missing)} only in the baseline {missing[:5]}, {len(extra)} only in the setup {extra[:5]}")
    qids = list(baseline)
    base = np.array([float(baseline[q]) for q in qids])
    new = np.array([float(setup[q]) for q in qids])
    for name, arr in (("baseline", base), ("setup", new)):
        bad = [(q, float(v)) for q, v in zip(qids, arr) if not math.isfinite(v)]
        if bad:
            raise ValidationError(f"{name} value of query {bad[0][0]!r} must be finite, got {bad[0][1]!r}")
    deltas = new - base
    wins = int(np.sum(deltas >= TIE_TOLERANCE))
    losses = int(np.sum(deltas <= -TIE_TOLERANCE))
    ties = len(qids) - wins - losses
    mean_delta = float(deltas.mean())
    if len(qids) < 2:
        low: float | None = None
        high: float | None = None
        excludes = False
        logger.warning("paired comparison over %d query: no confidence interval", len(qids))
    else:
        low, high = bootstrap_ci(deltas, resamples=resamples, confidence=confidence, seed=seed)
        # floating-point noise around an exact tie must not read as an effect
        excludes = low >= TIE_TOLERANCE or high <= -TIE_TOLERANCE
    return PairedComparison(
        metric=metric, queries=len(qids), baseline_mean=float(base.mean()), setup_mean=float(new.mean()),
        mean_delta=mean_delta, ci_low=low, ci_high=high, confidence=float(confidence), excludes_zero=excludes,
        wins=wins, ties=ties, losses=losses, resamples=resamples, seed=seed,
        deltas={q: float(d) for q, d in zip(qids, deltas)},
    )
