"""Intervals for test-set means and paired comparisons of two models on the same images.

The project's rule: a mean is reported with its interval, and a difference between two models is
claimed only when a paired comparison over the same test images supports it. Three tools:

- :func:`bootstrap_mean` and :func:`bootstrap_pooled`: percentile bootstrap over test images
  (images resampled with replacement, seeded, 10 000 resamples, 95 % by default) for the mean
  of a per-image metric, or for a pooled metric recomputed from the resampled images' summed
  counts (pixel Dice from tp/fp/fn, dataset-level AJI from C and U, PQ from TP/FP/FN/IoU);
- :func:`seed_interval`: mean and Student-t interval over the values of several seeds (the
  spread of training runs; one seed has no spread, and the interval says so);
- :func:`paired_comparison`: mean per-image difference of two models, its paired bootstrap
  interval, the Wilcoxon signed-rank p-value, and a verdict that is ``higher`` or ``lower``
  only when the interval excludes 0.

Everything is numpy and scipy; nothing here knows about runs or files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
BOOTSTRAP_IMAGES = "bootstrap over images"
T_OVER_SEEDS = "t over seeds"
SINGLE_SEED = "single seed"
# Resample weights are drawn in blocks of at most this many numbers, to bound memory.
_BLOCK_NUMBERS = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval.

    Attributes:
        estimate: the value on the full sample (not the mean of resamples).
        low: lower bound (NaN when there is no interval, e.g. one seed).
        high: upper bound (NaN likewise).
        confidence: nominal coverage, e.g. 0.95.
        method: ``bootstrap over images``, ``t over seeds`` or ``single seed``.
        n: number of images (bootstrap) or seeds the interval rests on.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    method: str
    n: int

    @property
    def has_bounds(self) -> bool:
        """Whether ``low`` and ``high`` are numbers."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def excludes_zero(self) -> bool:
        """Whether 0 lies outside [low, high] (False without bounds)."""
        return self.has_bounds and (self.low > 0 or self.high < 0)

    def format(self, digits: int = 4) -> str:
        """``0.8012 [0.7950, 0.8070]``; ``0.8012 (1 seed)`` without bounds."""
        text = f"{self.estimate:.{digits}f}"
        if self.has_bounds:
            return f"{text} [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        return f"{text} (1 seed)" if self.method == SINGLE_SEED else text


@dataclass(frozen=True)
class PairedComparison:
    """Model A against model B on the same images (differences are A - B).

    Attributes:
        mean_difference: mean over images of A - B.
        interval: paired percentile bootstrap interval of the mean difference.
        p_value: two-sided Wilcoxon signed-rank p-value (1.0 when every difference is 0).
        n: number of paired images.
        verdict: ``higher`` (A > B: the interval lies above 0), ``lower`` (below 0) or
            ``no difference shown`` (the interval contains 0).
    """

    mean_difference: float
    interval: Interval
    p_value: float
    n: int
    verdict: str

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval of the difference excludes 0."""
        return self.interval.excludes_zero


def _as_vector(values: ArrayLike, name: str) -> np.ndarray:
    """A finite 1-D float array with at least one value."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name}: no values; an interval needs at least one")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: values must be finite (got NaN or inf); drop or fix those images first")
    return array


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def resample_weights(num_items: int, num_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of bootstrap weights: row r says how often each item is drawn in resample r.

    A resample of ``num_items`` items drawn with replacement is a multinomial count vector;
    weighted sums then give every resample's sums without materialising the resampled data.
    """
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_NUMBERS // max(num_items, 1))
    probabilities = np.full(num_items, 1.0 / num_items)
    done = 0
    while done < num_resamples:
        size = min(block, num_resamples - done)
        yield rng.multinomial(num_items, probabilities, size=size).astype(np.float64)
        done += size


def _percentile_interval(
    estimate: float, replicates: np.ndarray, confidence: float, n: int, method: str = BOOTSTRAP_IMAGES
) -> Interval:
    alpha = 1.0 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    # A statistic that is constant over resamples must give a zero-width interval at the estimate,
    # not one rounding error away from it.
    if np.ptp(replicates) <= 1e-12 * max(1.0, abs(estimate)):
        low = high = estimate
    return Interval(float(estimate), float(low), float(high), confidence, method, n)


def bootstrap_mean(
    values: ArrayLike,
    *,
    num_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Percentile bootstrap interval of the mean of per-image values.

    Args:
        values: one value per test image.
        num_resamples: bootstrap resamples.
        confidence: nominal coverage of the interval.
        seed: seed of the resampling (same seed, same resamples: paired when ``n`` agrees).

    Raises:
        ValueError: no values, a non-finite value, or a confidence outside (0, 1).
    """
    array = _as_vector(values, "bootstrap_mean")
    _check_confidence(confidence)
    replicates = np.concatenate(
        [weights @ array / array.size for weights in resample_weights(array.size, num_resamples, seed)]
    )
    return _percentile_interval(float(array.mean()), replicates, confidence, array.size)


def bootstrap_pooled(
    counts: Mapping[str, ArrayLike],
    statistic: Callable[[Mapping[str, np.ndarray]], np.ndarray | float],
    *,
    num_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Percentile bootstrap interval of a metric pooled over images from summed counts.

    Args:
        counts: per-image counts by name, each of one length (e.g. ``{"tp": ..., "fp": ..., "fn": ...}``).
        statistic: maps summed counts to the metric; called once with scalars (the estimate) and
            with arrays of one sum per resample, so it must be vectorised (see :func:`pooled_dice`).
        num_resamples: bootstrap resamples.
        confidence: nominal coverage of the interval.
        seed: seed of the resampling.

    Raises:
        ValueError: no counts, columns of different lengths, non-finite counts, bad confidence.
    """
    if not counts:
        raise ValueError("bootstrap_pooled: no count columns")
    names = list(counts)
    lengths = {name: np.asarray(counts[name]).size for name in names}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"bootstrap_pooled: count columns differ in length {lengths}; give one value per image each")
    columns = np.stack([_as_vector(counts[name], name) for name in names], axis=1)
    _check_confidence(confidence)
    totals = columns.sum(axis=0)
    estimate = float(statistic(dict(zip(names, totals, strict=True))))
    replicates = []
    for weights in resample_weights(columns.shape[0], num_resamples, seed):
        sums = weights @ columns
        replicates.append(np.broadcast_to(statistic({name: sums[:, k] for k, name in enumerate(names)}), len(sums)))
    return _percentile_interval(estimate, np.concatenate(replicates).astype(np.float64), confidence, columns.shape[0])


def _divide(numerator: np.ndarray | float, denominator: np.ndarray | float, zero_value: float) -> np.ndarray:
    """Elementwise ratio with ``zero_value`` where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator == 0, 1.0, denominator)
    return np.where(denominator == 0, zero_value, numerator / safe)


def pooled_dice(sums: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """Pixel Dice 2 tp / (2 tp + fp + fn) from summed counts (0 for 0/0, as torchmetrics' F1)."""
    return _divide(2 * sums["tp"], 2 * sums["tp"] + sums["fp"] + sums["fn"], 0.0)


def pooled_iou(sums: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """Pixel IoU tp / (tp + fp + fn) from summed counts (0 for 0/0)."""
    return _divide(sums["tp"], sums["tp"] + sums["fp"] + sums["fn"], 0.0)


def pooled_accuracy(sums: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """Pixel accuracy (tp + tn) / all from summed counts."""
    return _divide(sums["tp"] + sums["tn"], sums["tp"] + sums["fp"] + sums["fn"] + sums["tn"], 0.0)


def pooled_aji(sums: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """Dataset-level AJI ΣC / ΣU (1.0 when U = 0: no nucleus and no prediction anywhere)."""
    return _divide(sums["aji_intersection"], sums["aji_union"], 1.0)


def pooled_pq(sums: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """Dataset-level PQ = DQ x SQ from summed TP, FP, FN and matched IoU (0 without a match)."""
    tp = np.asarray(sums["pq_tp"], dtype=np.float64)
    dq = _divide(tp, tp + 0.5 * sums["pq_fp"] + 0.5 * sums["pq_fn"], 1.0)
    sq = _divide(sums["pq_iou_sum"], tp, 0.0)
    empty = (tp + sums["pq_fp"] + sums["pq_fn"]) == 0
    return np.where(empty, 1.0, dq * sq)


def pooled_precision(sums: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """Pixel precision tp / (tp + fp) from summed counts (0 for 0/0)."""
    return _divide(sums["tp"], sums["tp"] + sums["fp"], 0.0)


def pooled_recall(sums: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """Pixel recall tp / (tp + fn) from summed counts (0 for 0/0)."""
    return _divide(sums["tp"], sums["tp"] + sums["fn"], 0.0)


def pooled_aji_plus(sums: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """Dataset-level AJI+ from summed one-to-one C and U (1.0 when U = 0)."""
    return _divide(sums["aji_plus_intersection"], sums["aji_plus_union"], 1.0)


# Pooled metrics the comparison table knows how to resample: name -> (count keys, statistic).
POOLED_STATISTICS: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, np.ndarray]], np.ndarray]]] = {
    "dice": (("tp", "fp", "fn"), pooled_dice),
    "iou": (("tp", "fp", "fn"), pooled_iou),
    "accuracy": (("tp", "fp", "fn", "tn"), pooled_accuracy),
    "precision": (("tp", "fp"), pooled_precision),
    "recall": (("tp", "fn"), pooled_recall),
    "aji": (("aji_intersection", "aji_union"), pooled_aji),
    "aji_plus": (("aji_plus_intersection", "aji_plus_union"), pooled_aji_plus),
    "pq": (("pq_tp", "pq_fp", "pq_fn", "pq_iou_sum"), pooled_pq),
}


def seed_interval(values: ArrayLike, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Mean over seeds with a Student-t interval, mean ± t(1 - α/2, n - 1) · s / √n.

    One seed gives the value with NaN bounds and ``method = "single seed"``: a single training
    run says nothing about the spread between runs.

    Raises:
        ValueError: no values, a non-finite value, or a confidence outside (0, 1).
    """
    from scipy import stats

    array = _as_vector(values, "seed_interval")
    _check_confidence(confidence)
    mean = float(array.mean())
    if array.size == 1:
        return Interval(mean, math.nan, math.nan, confidence, SINGLE_SEED, 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size))
    return Interval(mean, mean - half, mean + half, confidence, T_OVER_SEEDS, array.size)


def paired_comparison(
    values_a: ArrayLike,
    values_b: ArrayLike,
    *,
    num_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> PairedComparison:
    """Compare two models' per-image values on the same images, in the same order.

    Args:
        values_a: model A's value on each image.
        values_b: model B's value on the same images.
        num_resamples: bootstrap resamples of the images.
        confidence: nominal coverage of the interval of the mean difference.
        seed: seed of the resampling.

    Returns:
        The mean difference A - B, its paired percentile bootstrap interval (images resampled,
        both models' values kept together), the two-sided Wilcoxon signed-rank p-value
        (``scipy.stats.wilcoxon``; 1.0 when every difference is 0), and the verdict.

    Raises:
        ValueError: the two sequences differ in length, are empty or hold non-finite values.
    """
    from scipy import stats

    a, b = _as_vector(values_a, "values_a"), _as_vector(values_b, "values_b")
    if a.size != b.size:
        raise ValueError(f"paired_comparison: {a.size} values against {b.size}; pair the same images in both")
    differences = a - b
    interval = bootstrap_mean(differences, num_resamples=num_resamples, confidence=confidence, seed=seed)
    p_value = 1.0 if not np.any(differences) else float(stats.wilcoxon(differences).pvalue)
    if interval.excludes_zero:
        verdict = "higher" if interval.low > 0 else "lower"
    else:
        verdict = "no difference shown"
    return PairedComparison(interval.estimate, interval, p_value, a.size, verdict)
