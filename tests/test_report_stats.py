"""The summary's statistics on synthetic sweeps whose truth is known (fixed seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from mixens.report.stats import compare_paired, control_false_discoveries, mean_interval


def sweep(rng: np.random.Generator, problems: int, seeds: int, me_rate: float, ce_rate: float):
    """Per-problem right/wrong scores of ME and CE over seeds, averaged over the seeds per problem,
    with problems of varying difficulty around the given rates (as real benchmarks have)."""
    offset = rng.normal(0.0, 0.15, size=problems)
    me = rng.random((seeds, problems)) < np.clip(me_rate + offset, 0, 1)
    ce = rng.random((seeds, problems)) < np.clip(ce_rate + offset, 0, 1)
    return me.mean(axis=0), ce.mean(axis=0)


def test_equal_means_are_shown_equivalent_within_one_point():
    me, ce = sweep(np.random.default_rng(1), problems=4000, seeds=5, me_rate=0.6, ce_rate=0.6)
    result = compare_paired(me, ce, "problems", margin=0.01)
    assert result.equivalent, result
    assert result.low < 0 < result.high


def test_a_three_point_gap_is_found_and_not_called_equivalent():
    me, ce = sweep(np.random.default_rng(2), problems=4000, seeds=5, me_rate=0.63, ce_rate=0.60)
    result = compare_paired(me, ce, "problems", margin=0.01)
    control_false_discoveries([result])
    assert not result.equivalent
    assert result.different and 0.0 < result.low < 0.03 < result.high
    assert result.difference == pytest.approx(0.03, abs=0.01)


def test_difference_tests_under_fdr_control_reject_at_most_their_nominal_rate():
    """Under no difference anywhere, a summary of 8 comparisons rejects any of them (after
    Benjamini-Hochberg, which then bounds the family-wise rate by 0.05) in at most ~5% of sweeps."""
    rng = np.random.default_rng(3)
    sweeps, with_a_rejection = 120, 0
    for _ in range(sweeps):
        results = [compare_paired(*sweep(rng, 150, 3, 0.5, 0.5), "problems") for _ in range(8)]
        control_false_discoveries(results)
        with_a_rejection += any(r.different for r in results)
    # Binomial(120, 0.05) exceeds 12 with probability < 0.3%; a test without control rejects in ~1/3.
    assert with_a_rejection <= 12, with_a_rejection
    assert all(r.p_difference <= r.q_difference <= 1 for r in results)  # q adjusts p upwards


def test_without_correction_the_same_sweeps_would_reject_far_more_often():
    rng = np.random.default_rng(3)
    raw = 0
    for _ in range(40):
        results = [compare_paired(*sweep(rng, 150, 3, 0.5, 0.5), "problems") for _ in range(8)]
        raw += any(r.p_difference < 0.05 for r in results)
    assert raw >= 6  # about 1 - 0.95^8 = 34% of sweeps: the control above is doing work


def test_seed_level_comparison_of_few_runs_is_undecided_not_equivalent():
    result = compare_paired([0.61, 0.58, 0.63], [0.60, 0.59, 0.62], "seeds", margin=0.01)
    assert result.unit == "seeds" and result.n == 3
    assert not result.equivalent  # three seeds cannot show a difference is under one point


def test_mean_interval_over_seeds():
    mean, low, high = mean_interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    assert (high - low) / 2 == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)  # t(0.975, 2) * sd / sqrt(3)
    assert np.isnan(mean_interval([0.5])[1])
