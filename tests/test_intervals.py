"""Bootstrap, seed and paired intervals against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nucseg.metrics.intervals import (
    POOLED_STATISTICS,
    Interval,
    bootstrap_mean,
    bootstrap_pooled,
    paired_comparison,
    pooled_aji,
    pooled_dice,
    pooled_pq,
    resample_weights,
    seed_interval,
)


def test_constant_values_give_a_zero_width_interval() -> None:
    interval = bootstrap_mean([0.7] * 14, num_resamples=500)
    assert (interval.estimate, interval.low, interval.high) == (pytest.approx(0.7),) * 3
    assert interval.low == interval.high and interval.n == 14 and interval.method == "bootstrap over images"
    assert interval.format(2) == "0.70 [0.70, 0.70]"


def test_two_images_bound_the_interval_by_their_extremes() -> None:
    # Resamples of 2 images: {a, a} (p = 1/4), {a, b} (1/2), {b, b} (1/4); the 2.5 % and 97.5 %
    # quantiles therefore fall on the pure resamples: mean in [min, max], pooled Dice likewise.
    interval = bootstrap_mean([0.2, 0.6], num_resamples=2000, seed=3)
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((0.4, 0.2, 0.6))
    # image 1: tp 8, fp 2, fn 0 -> Dice 16/18; image 2: tp 1, fp 1, fn 2 -> 2/5; pooled 18/(18+3+2)
    counts = {"tp": [8, 1], "fp": [2, 1], "fn": [0, 2]}
    pooled = bootstrap_pooled(counts, pooled_dice, num_resamples=2000, seed=3)
    assert (pooled.estimate, pooled.low, pooled.high) == pytest.approx((18 / 23, 2 / 5, 16 / 18))


def test_resampling_is_seeded_and_weights_count_every_draw() -> None:
    blocks = list(resample_weights(5, 7, seed=1))
    weights = np.concatenate(blocks)
    assert weights.shape == (7, 5) and np.all(weights.sum(axis=1) == 5)
    assert np.array_equal(weights, np.concatenate(list(resample_weights(5, 7, seed=1))))
    values = np.random.default_rng(0).random(30)
    assert bootstrap_mean(values, seed=5) == bootstrap_mean(values, seed=5)
    assert bootstrap_mean(values, seed=5) != bootstrap_mean(values, seed=6)


def test_bootstrap_of_the_mean_is_near_the_normal_interval() -> None:
    # 200 values: the bootstrap interval approaches mean ± 1.96 s / sqrt(n) (loose tolerance).
    values = np.random.default_rng(7).normal(0.8, 0.05, size=200)
    interval = bootstrap_mean(values, num_resamples=4000)
    half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert interval.low == pytest.approx(values.mean() - half, abs=0.15 * half)
    assert interval.high == pytest.approx(values.mean() + half, abs=0.15 * half)


def test_pooled_statistics_on_summed_counts() -> None:
    # AJI over two images: C = 8 + 6, U = 20 + 10 -> 14/30; identical rows give a zero-width interval.
    aji = bootstrap_pooled({"aji_intersection": [8, 6], "aji_union": [20, 10]}, pooled_aji, num_resamples=200)
    assert aji.estimate == pytest.approx(14 / 30)
    same = bootstrap_pooled({"tp": [5] * 4, "fp": [1] * 4, "fn": [3] * 4}, pooled_dice, num_resamples=200)
    assert same.low == same.high == pytest.approx(10 / 14)
    # PQ: TP 1, FP 2, FN 2, IoU sum 0.75 -> DQ 1/3, SQ 0.75, PQ 0.25; nothing at all -> 1
    sums = {"pq_tp": 1.0, "pq_fp": 2.0, "pq_fn": 2.0, "pq_iou_sum": 0.75}
    assert float(pooled_pq(sums)) == pytest.approx(0.25)
    assert float(pooled_pq(dict.fromkeys(sums, 0.0))) == 1.0
    assert set(POOLED_STATISTICS) == {"dice", "iou", "accuracy", "precision", "recall", "aji", "aji_plus", "pq"}


def test_seed_interval_is_the_t_interval() -> None:
    # values 1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.302653 -> 2 ± 4.302653 / sqrt(3)
    interval = seed_interval([1.0, 2.0, 3.0])
    assert interval.estimate == 2.0 and interval.method == "t over seeds" and interval.n == 3
    assert interval.high - 2.0 == pytest.approx(4.302652729911275 / math.sqrt(3))
    one = seed_interval([0.81])
    assert one.method == "single seed" and math.isnan(one.low) and not one.has_bounds
    assert one.format() == "0.8100 (1 seed)"


def test_paired_known_shift() -> None:
    a = np.array([0.70, 0.72, 0.75, 0.80, 0.81, 0.90])
    shifted = paired_comparison(a, a - 0.05, num_resamples=500)
    # A constant difference of 0.05: mean 0.05, zero-width interval, every difference positive
    assert shifted.mean_difference == pytest.approx(0.05)
    assert shifted.interval.low == pytest.approx(0.05) and shifted.interval.high == pytest.approx(0.05)
    assert shifted.verdict == "higher" and shifted.excludes_zero and shifted.n == 6
    # Distinct positive differences: exact Wilcoxon two-sided p = 2 / 2^6
    spread = paired_comparison(a, a - np.arange(1, 7) / 100, num_resamples=500)
    assert spread.p_value == pytest.approx(2 / 2**6)
    assert paired_comparison(a - 0.05, a, num_resamples=500).verdict == "lower"
    same = paired_comparison(a, a, num_resamples=500)
    assert same.p_value == 1.0 and same.verdict == "no difference shown" and not same.excludes_zero


def test_paired_mixed_signs_is_no_difference() -> None:
    differences = np.array([0.03, -0.02, 0.01, -0.04, 0.02, -0.01, 0.0, 0.01])
    comparison = paired_comparison(0.5 + differences, np.full(8, 0.5), num_resamples=2000)
    assert comparison.mean_difference == pytest.approx(differences.mean())
    assert comparison.interval.low < 0 < comparison.interval.high
    assert comparison.verdict == "no difference shown" and comparison.p_value > 0.5


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="no values"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean([0.5, float("nan")])
    with pytest.raises(ValueError, match="pair the same images"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_pooled({"tp": [1, 2], "fp": [1]}, pooled_dice)
    with pytest.raises(ValueError, match="confidence"):
        seed_interval([1.0, 2.0], confidence=95)
    assert isinstance(seed_interval([1.0, 2.0]), Interval)
