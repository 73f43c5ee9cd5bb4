"""The sparse overlap of two label maps and the matchings of nuclei that the instance metrics use.

:class:`OverlapTable` holds the pairs of a ground-truth and a predicted nucleus that share at
least one pixel, with their intersection in pixels, plus each nucleus's area. It is built with
one ``np.unique`` over a combined key of the pixels where both maps are foreground, so the cost
grows with the number of pixels and of overlapping pairs, never with (ground-truth nuclei x
predicted nuclei). :func:`first_per_group` picks each nucleus's best partner (AJI's and object
Dice's matchings); :func:`one_to_one_pairs` is the one-to-one matching of AJI+. The metrics
themselves are in :mod:`nucseg.metrics.instance`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass(frozen=True)
class OverlapTable:
    """Sparse overlap of two label maps.

    Attributes:
        true_ids: (T,) sorted non-zero ids of the ground truth.
        pred_ids: (P,) sorted non-zero ids of the prediction.
        true_areas: (T,) pixels of each ground-truth nucleus.
        pred_areas: (P,) pixels of each predicted nucleus.
        pair_true: (K,) index into ``true_ids`` of each overlapping pair.
        pair_pred: (K,) index into ``pred_ids`` of each overlapping pair.
        pair_intersection: (K,) shared pixels of each pair (all > 0).
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_areas: np.ndarray
    pred_areas: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    pair_intersection: np.ndarray

    @property
    def pair_union(self) -> np.ndarray:
        """(K,) |G ∪ S| of each pair."""
        return self.true_areas[self.pair_true] + self.pred_areas[self.pair_pred] - self.pair_intersection

    @property
    def pair_iou(self) -> np.ndarray:
        """(K,) IoU of each pair (exact ratios of integers in float64)."""
        return self.pair_intersection / self.pair_union


def as_label_array(labels: Any, name: str = "labels") -> np.ndarray:
    """An (H, W) integer numpy view of a label map given as array or tensor.

    Raises:
        ValueError: not 2-D, or not integer/boolean.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{name}: expected an (H, W) label map, got shape {array.shape}")
    if array.dtype == np.bool_:
        return array.astype(np.int32)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integers (0 = background), got {array.dtype}; label the mask first")
    return array


def _dense_ids(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted non-zero ids, their areas, and each pixel's index into them (-1 for background)."""
    if flat.size and flat.min() >= 0 and flat.max() <= 4 * flat.size + 1024:
        # Small non-negative ids: one bincount and a lookup table, no sort.
        counts = np.bincount(flat.astype(np.intp, copy=False))
        counts[0] = 0
        ids = np.flatnonzero(counts)
        lookup = np.full(counts.size, -1, dtype=np.int64)
        lookup[ids] = np.arange(ids.size)
        return ids, counts[ids].astype(np.int64), lookup[flat]
    ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    index = inverse.astype(np.int64).ravel()
    zero = np.searchsorted(ids, 0)
    has_zero = zero < ids.size and ids[zero] == 0
    if has_zero:
        index[index == zero] = -1
        index[index > zero] -= 1
        ids, counts = np.delete(ids, zero), np.delete(counts, zero)
    return ids, counts.astype(np.int64), index


def overlap_table(true_labels: Any, pred_labels: Any) -> OverlapTable:
    """Build the sparse overlap table of two (H, W) label maps of the same shape.

    Raises:
        ValueError: shapes differ, or a map is not an integer (H, W) map.
    """
    truth = as_label_array(true_labels, "true_labels")
    pred = as_label_array(pred_labels, "pred_labels")
    if truth.shape != pred.shape:
        raise ValueError(f"true_labels {truth.shape} and pred_labels {pred.shape} must have the same shape")
    true_ids, true_areas, true_index = _dense_ids(truth.ravel())
    pred_ids, pred_areas, pred_index = _dense_ids(pred.ravel())
    both = (true_index >= 0) & (pred_index >= 0)
    key = true_index[both] * max(pred_ids.size, 1) + pred_index[both]
    pair_key, pair_intersection = np.unique(key, return_counts=True)
    return OverlapTable(
        true_ids=true_ids,
        pred_ids=pred_ids,
        true_areas=true_areas,
        pred_areas=pred_areas,
        pair_true=pair_key // max(pred_ids.size, 1),
        pair_pred=pair_key % max(pred_ids.size, 1),
        pair_intersection=pair_intersection.astype(np.int64),
    )


def first_per_group(group: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each group after sorting by ``keys`` (first key most significant)."""
    order = np.lexsort(tuple(reversed(keys)) + (group,))
    sorted_group = group[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = sorted_group[1:] != sorted_group[:-1]
    return order[first]


def one_to_one_pairs(table: OverlapTable) -> np.ndarray:
    """Indices of the pairs of a maximal-total-IoU one-to-one matching (HoVer-Net's AJI+ pairing).

    The assignment problem splits into the connected components of the overlap graph; a
    component of one pair is matched directly, larger ones by ``linear_sum_assignment``.
    """
    num_true, num_pairs = table.true_ids.size, table.pair_true.size
    if num_pairs == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix(
        (np.ones(num_pairs), (table.pair_true, num_true + table.pair_pred)),
        shape=(num_true + table.pred_ids.size,) * 2,
    )
    _, component = connected_components(graph, directed=False)
    pair_component = component[table.pair_true]
    pairs_per_component = np.bincount(pair_component)
    single = pairs_per_component[pair_component] == 1
    chosen = [np.flatnonzero(single)]
    iou = table.pair_iou
    multi = np.flatnonzero(~single)
    if multi.size:
        order = multi[np.argsort(pair_component[multi], kind="stable")]
        bounds = np.flatnonzero(np.diff(pair_component[order])) + 1
        for pairs in np.split(order, bounds):
            rows, row_of = np.unique(table.pair_true[pairs], return_inverse=True)
            cols, col_of = np.unique(table.pair_pred[pairs], return_inverse=True)
            weights = np.zeros((rows.size, cols.size))
            weights[row_of, col_of] = iou[pairs]
            pair_at = np.full((rows.size, cols.size), -1, dtype=np.int64)
            pair_at[row_of, col_of] = pairs
            picked_rows, picked_cols = linear_sum_assignment(weights, maximize=True)
            picked = pair_at[picked_rows, picked_cols]
            chosen.append(picked[picked >= 0])
    return np.sort(np.concatenate(chosen))
