"""The statistics of the summary: a cell's mean with its interval over seeds, and ME against CE.

The paper claims ME ≈ CE (the same distribution, so the same expected accuracy). That is an
equivalence, so besides the difference and its interval the summary runs an equivalence test (two
one-sided tests, TOST) against a stated margin: "equivalent" means the difference is shown to lie
inside ±margin; a difference test that finds nothing does not mean that. Differences are paired by
problem: the same problem under the same seed, averaged over the seeds both strategies ran, so the
unit of resampling is the problem (hundreds of them), not the seed (five).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
DEFAULT_MARGIN = 0.01  # ±1 point of accuracy
RESAMPLES = 9999
SEED = 0  # resampling is seeded: the same runs give the same summary


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and Student-t interval over seeds (NaN bounds for fewer than two seeds)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan, math.nan
    if float(np.std(values)) == 0.0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=stats.sem(values))
    return mean, float(low), float(high)


@dataclass
class Comparison:
    """ME minus CE over paired units (problems, or seeds where no per-problem scores exist)."""

    unit: str  # "problems" or "seeds"
    n: int
    difference: float
    low: float  # CONFIDENCE interval of the difference (paired bootstrap)
    high: float
    p_difference: float  # paired permutation test of "no difference" (sign flips)
    p_equivalence: float  # TOST against ±margin: small means shown equivalent
    margin: float
    q_difference: float = math.nan  # p_difference after false-discovery-rate control over the summary

    @property
    def equivalent(self) -> bool:
        return self.p_equivalence < 1 - CONFIDENCE

    @property
    def different(self) -> bool:
        return self.q_difference < 1 - CONFIDENCE


def compare_paired(me: np.ndarray, ce: np.ndarray, unit: str, margin: float = DEFAULT_MARGIN) -> Comparison:
    """ME − CE over paired scores (one entry per unit, the same order in both)."""
    me, ce = np.asarray(me, dtype=float), np.asarray(ce, dtype=float)
    diff = me - ce
    n = len(diff)
    mean = float(diff.mean())
    if n < 2 or float(diff.std()) == 0.0:
        # Nothing varies: no interval to resample and no test to run.
        bound = mean if n else math.nan
        equivalent_p = 0.0 if n >= 2 and abs(mean) < margin else 1.0
        return Comparison(unit, n, mean, bound, bound, 1.0 if n >= 2 else math.nan, equivalent_p, margin)
    rng = np.random.default_rng(SEED)
    boot = stats.bootstrap(
        (diff,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="percentile", random_state=rng
    )
    flips = stats.permutation_test(
        (me, ce), _mean_difference, permutation_type="samples", n_resamples=RESAMPLES, random_state=rng
    )
    # TOST: the difference is above -margin and below +margin, each one-sided at 1 - CONFIDENCE.
    above = stats.ttest_1samp(diff, -margin, alternative="greater").pvalue
    below = stats.ttest_1samp(diff, margin, alternative="less").pvalue
    return Comparison(
        unit, n, mean, float(boot.confidence_interval.low), float(boot.confidence_interval.high),
        float(flips.pvalue), float(max(above, below)), margin,
    )  # fmt: skip


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a - b, axis=axis)


def control_false_discoveries(comparisons: list[Comparison]) -> None:
    """Benjamini-Hochberg over every difference test of one summary (sets q_difference)."""
    tested = [c for c in comparisons if not math.isnan(c.p_difference)]
    if not tested:
        return
    for comparison, q in zip(tested, stats.false_discovery_control([c.p_difference for c in tested])):
        comparison.q_difference = float(q)
