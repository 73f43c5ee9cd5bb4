"""Nucleus-level metrics of an instance label map against the ground truth: AJI, AJI+, PQ, object F1, object Dice.

Every metric is computed from one sparse overlap table (:class:`OverlapTable`): the pairs of a
ground-truth and a predicted nucleus that share at least one pixel, with their intersection in
pixels, plus each nucleus's area. It is built with one ``np.unique`` over a combined key of the
pixels where both maps are foreground, so the cost grows with the number of pixels and of
overlapping pairs, never with (ground-truth nuclei x predicted nuclei).

Label maps are (H, W) integer (or boolean) arrays or tensors; 0 is background and the other ids
are arbitrary (not necessarily consecutive, any sign). Definitions:

- **AJI** (Kumar et al., IEEE TMI 2017; the MoNuSeg reference code ``Aggregated_Jaccard_Index``
  and HoVer-Net's ``get_fast_aji``): each ground-truth nucleus G is matched to the predicted
  nucleus S of highest IoU among those overlapping it; a prediction may serve several nuclei. C
  sums |G ∩ S| and U sums |G ∪ S| over the matched pairs; a nucleus that no prediction overlaps
  adds |G| to U; then every prediction matched to no nucleus (the *used* set is the set of
  matched predictions, as in both references) adds its area to U. AJI = C / U. Ties in IoU go to
  the lowest predicted id, as the MoNuSeg code's strict ``>`` scan and ``np.argmax`` do. IoU is
  compared exactly; HoVer-Net divides by ``union + 1e-6``, which on an exact tie prefers the
  larger prediction instead (a tie between two equal rationals of different size only).
- **AJI+** (Graham et al., Medical Image Analysis 2019, HoVer-Net's ``get_fast_aji_plus``): the
  same sums over a one-to-one matching, the assignment of maximal total IoU (Hungarian, scipy's
  ``linear_sum_assignment``, solved per connected component of the overlap graph), pairs of zero
  IoU dropped; unmatched nuclei and predictions add their areas to U.
- **PQ = DQ x SQ** (Kirillov et al., CVPR 2019): a pair matches when IoU > 0.5, which makes the
  matching unique. TP = matched pairs, FP = unmatched predictions, FN = unmatched nuclei;
  DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of the matched pairs, PQ = DQ x SQ.
- **Object precision / recall / F1** at IoU > 0.5 (the PQ matching): TP / (TP + FP),
  TP / (TP + FN) and 2 TP / (2 TP + FP + FN) (which equals DQ).
- **Object Dice** (Sirinukunwattana et al., Medical Image Analysis 2017, the Gland Segmentation
  challenge): each object is matched to the other map's object of largest intersection (ties:
  lowest id; no overlap: Dice 0); Dice(G, S) = 2|G ∩ S| / (|G| + |S|);
  object Dice = ½ (Σ_i |G_i|/Σ|G| · Dice(G_i, S*(G_i)) + Σ_j |S_j|/Σ|S| · Dice(G*(S_j), S_j)).

Edge cases: when both maps are empty every metric is 1.0 (nothing to find, nothing found); in
any other case a ratio whose denominator is 0 is 0.0 (an empty prediction scores 0 on every
metric, and so does any prediction on an empty ground truth; SQ is 0 without matches, as in
HoVer-Net). The raw sums are 0 for empty maps, so such an image changes nothing in a pooled value.

Combining images (:func:`aggregate_instance_metrics`): ``<metric>_per_image`` is the mean of the
per-image values, the way HoVer-Net and the MoNuSeg challenge report AJI and PQ; ``<metric>``
without suffix is pooled over the data set, the project's convention for Dice: AJI = ΣC / ΣU over
images, PQ/DQ/SQ and object precision/recall/F1 from TP, FP, FN and matched IoU summed over
images, object Dice with all images' objects weighed together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torchmetrics import Metric

# Ratio metrics of one image, in the order of the record.
METRIC_KEYS = (
    "aji",
    "aji_plus",
    "pq",
    "dq",
    "sq",
    "object_precision",
    "object_recall",
    "object_f1",
    "object_dice",
)
# Raw sums of one image that pooled values are recomputed from.
SUM_KEYS = (
    "num_true",
    "num_pred",
    "aji_intersection",
    "aji_union",
    "aji_plus_intersection",
    "aji_plus_union",
    "pq_tp",
    "pq_fp",
    "pq_fn",
    "pq_iou_sum",
    "true_area",
    "pred_area",
    "object_dice_true_sum",
    "object_dice_pred_sum",
)
RECORD_KEYS = METRIC_KEYS + SUM_KEYS
PQ_MATCH_IOU = 0.5


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


def _first_per_group(group: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each group after sorting by ``keys`` (first key most significant)."""
    order = np.lexsort(tuple(reversed(keys)) + (group,))
    sorted_group = group[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = sorted_group[1:] != sorted_group[:-1]
    return order[first]


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, 0.0 for a zero denominator."""
    return float(numerator) / float(denominator) if denominator else 0.0


def aji_sums(table: OverlapTable) -> tuple[int, int]:
    """(C, U) of AJI with the MoNuSeg matching (see the module docstring)."""
    iou = table.pair_iou
    # Per nucleus: highest IoU first, then lowest predicted id (pred index order = id order).
    best = _first_per_group(table.pair_true, -iou, table.pair_pred)
    used = np.zeros(table.pred_ids.size, dtype=bool)
    used[table.pair_pred[best]] = True
    matched_true = np.zeros(table.true_ids.size, dtype=bool)
    matched_true[table.pair_true[best]] = True
    intersection = int(table.pair_intersection[best].sum())
    union = int(table.pair_union[best].sum())
    union += int(table.true_areas[~matched_true].sum()) + int(table.pred_areas[~used].sum())
    return intersection, union


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


def aji_plus_sums(table: OverlapTable) -> tuple[int, int]:
    """(C, U) of AJI+ with the one-to-one matching of :func:`one_to_one_pairs`."""
    pairs = one_to_one_pairs(table)
    matched_true = np.zeros(table.true_ids.size, dtype=bool)
    matched_true[table.pair_true[pairs]] = True
    matched_pred = np.zeros(table.pred_ids.size, dtype=bool)
    matched_pred[table.pair_pred[pairs]] = True
    intersection = int(table.pair_intersection[pairs].sum())
    union = int(table.pair_union[pairs].sum())
    union += int(table.true_areas[~matched_true].sum()) + int(table.pred_areas[~matched_pred].sum())
    return intersection, union


def pq_sums(table: OverlapTable, match_iou: float = PQ_MATCH_IOU) -> tuple[int, int, int, float]:
    """(TP, FP, FN, sum of matched IoU) for pairs of IoU > ``match_iou`` (>= 0.5 keeps them unique)."""
    iou = table.pair_iou
    matched = iou > match_iou
    tp = int(matched.sum())
    return tp, table.pred_ids.size - tp, table.true_ids.size - tp, float(iou[matched].sum())


def object_dice_sums(table: OverlapTable) -> tuple[float, float]:
    """(Σ_i |G_i| Dice(G_i, S*(G_i)), Σ_j |S_j| Dice(G*(S_j), S_j)) with largest-intersection matches."""
    dice = 2.0 * table.pair_intersection / (table.true_areas[table.pair_true] + table.pred_areas[table.pair_pred])
    sides = (
        (table.pair_true, table.pair_pred, table.true_areas),
        (table.pair_pred, table.pair_true, table.pred_areas),
    )
    sums = []
    for own, other, own_areas in sides:
        if own.size == 0:
            sums.append(0.0)
            continue
        best = _first_per_group(own, -table.pair_intersection, other)
        sums.append(float((own_areas[own[best]] * dice[best]).sum()))
    return sums[0], sums[1]


def metrics_from_sums(sums: Mapping[str, float]) -> dict[str, float]:
    """The ratio metrics from raw sums (of one image or summed over images).

    Both maps empty (no nucleus, no prediction) gives 1.0 everywhere; otherwise 0/0 gives 0.0.
    """
    if sums["num_true"] == 0 and sums["num_pred"] == 0:
        return dict.fromkeys(METRIC_KEYS, 1.0)
    tp, fp, fn = sums["pq_tp"], sums["pq_fp"], sums["pq_fn"]
    dq = _ratio(tp, tp + 0.5 * fp + 0.5 * fn)
    sq = _ratio(sums["pq_iou_sum"], tp)
    return {
        "aji": _ratio(sums["aji_intersection"], sums["aji_union"]),
        "aji_plus": _ratio(sums["aji_plus_intersection"], sums["aji_plus_union"]),
        "pq": dq * sq,
        "dq": dq,
        "sq": sq,
        "object_precision": _ratio(tp, tp + fp),
        "object_recall": _ratio(tp, tp + fn),
        "object_f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "object_dice": 0.5 * (
            _ratio(sums["object_dice_true_sum"], sums["true_area"])
            + _ratio(sums["object_dice_pred_sum"], sums["pred_area"])
        ),
    }


def instance_metrics(true_labels: Any, pred_labels: Any) -> dict[str, float]:
    """Nucleus-level metrics of one image and the raw sums that pool them over a data set.

    Args:
        true_labels: (H, W) ground-truth instance labels (numpy or torch; 0 = background).
        pred_labels: (H, W) predicted instance labels of the same shape.

    Returns:
        ``aji``, ``aji_plus``, ``pq``, ``dq``, ``sq``, ``object_precision``, ``object_recall``,
        ``object_f1``, ``object_dice`` (see the module docstring), and the sums ``num_true``,
        ``num_pred``, ``aji_intersection``, ``aji_union``, ``aji_plus_intersection``,
        ``aji_plus_union``, ``pq_tp``, ``pq_fp``, ``pq_fn``, ``pq_iou_sum``, ``true_area``,
        ``pred_area``, ``object_dice_true_sum``, ``object_dice_pred_sum``; all floats.

    Raises:
        ValueError: the maps differ in shape or are not integer (H, W) maps.

    Example:
        >>> truth = np.array([[1, 1, 0, 2, 2]])
        >>> round(instance_metrics(truth, np.array([[1, 1, 1, 1, 1]]))["aji"], 4)  # one merge
        0.4
    """
    table = overlap_table(true_labels, pred_labels)
    aji_c, aji_u = aji_sums(table)
    plus_c, plus_u = aji_plus_sums(table)
    tp, fp, fn, iou_sum = pq_sums(table)
    dice_true, dice_pred = object_dice_sums(table)
    sums = {
        "num_true": table.true_ids.size,
        "num_pred": table.pred_ids.size,
        "aji_intersection": aji_c,
        "aji_union": aji_u,
        "aji_plus_intersection": plus_c,
        "aji_plus_union": plus_u,
        "pq_tp": tp,
        "pq_fp": fp,
        "pq_fn": fn,
        "pq_iou_sum": iou_sum,
        "true_area": int(table.true_areas.sum()),
        "pred_area": int(table.pred_areas.sum()),
        "object_dice_true_sum": dice_true,
        "object_dice_pred_sum": dice_pred,
    }
    return {**metrics_from_sums(sums), **{key: float(value) for key, value in sums.items()}}


def aggregate_instance_metrics(records: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Combine per-image records of :func:`instance_metrics` over a data set.

    Args:
        records: one record per image (extra keys are ignored).

    Returns:
        ``<metric>_per_image``: mean over images of each image's value (HoVer-Net's and the
        MoNuSeg challenge's way of reporting AJI and PQ); ``<metric>``: pooled over the data set
        (AJI = ΣC / ΣU, Kumar et al.'s aggregate over all nuclei; PQ, DQ, SQ and object
        precision/recall/F1 from summed TP, FP, FN and matched IoU; object Dice over all objects);
        NaN for every key when there are no records.

    Raises:
        KeyError: a record lacks a key of :data:`RECORD_KEYS`.
    """
    records = list(records)
    if not records:
        return {key: float("nan") for name in METRIC_KEYS for key in (name, f"{name}_per_image")}
    totals = {key: float(sum(record[key] for record in records)) for key in SUM_KEYS}
    pooled = metrics_from_sums(totals)
    per_image = {f"{name}_per_image": float(np.mean([record[name] for record in records])) for name in METRIC_KEYS}
    return {**pooled, **per_image}


class InstanceMetrics(Metric):
    """Per-image instance metrics accumulated over a test epoch, synchronised under DDP.

    ``update`` scores one image's label maps at once on the CPU and stores the image's record
    (:data:`RECORD_KEYS`) as one row of a list state gathered with ``dist_reduce_fx="cat"``, so
    each process keeps only numbers, never label maps. ``compute`` returns
    :func:`aggregate_instance_metrics` of all images of all processes as float64 tensors.
    States are float64 so that pixel counts stay exact. Strings cannot be synchronised, so an
    image is identified by the optional integer ``image_index`` given to ``update`` (e.g. its
    position in the test dataset), which :meth:`per_image_records` returns with each record.

    Example:
        >>> metric = InstanceMetrics()
        >>> metric.update(np.array([[1, 1, 0, 2]]), np.array([[3, 3, 0, 0]]))
        >>> float(metric.compute()["aji"])
        0.6666666666666666
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("records", default=[], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)

    def update(self, true_labels: Any, pred_labels: Any, image_index: int = -1) -> None:  # type: ignore[override]
        """Score one image: (H, W) ground-truth and predicted instance labels, numpy or tensor.

        Args:
            true_labels: the image's ground-truth instance labels.
            pred_labels: its predicted instance labels.
            image_index: an integer that identifies the image (-1: not given).
        """
        record = instance_metrics(true_labels, pred_labels)
        values = [float(image_index)] + [record[key] for key in RECORD_KEYS]
        self.records.append(torch.tensor(values, dtype=torch.float64, device=self.device))

    def per_image_records(self) -> list[dict[str, float]]:
        """Every image's record seen so far (after synchronisation: of every process).

        Each record is :func:`instance_metrics`'s plus ``image_index`` (an int, -1 when not given).
        """
        if isinstance(self.records, torch.Tensor):
            rows = self.records
        elif self.records:
            rows = torch.cat([row.reshape(-1) for row in self.records])
        else:
            return []
        table = rows.reshape(-1, 1 + len(RECORD_KEYS)).cpu().double().numpy()
        return [
            {"image_index": int(row[0]), **dict(zip(RECORD_KEYS, map(float, row[1:]), strict=True))} for row in table
        ]

    def compute(self) -> dict[str, torch.Tensor]:
        """Pooled and per-image-mean metrics (:func:`aggregate_instance_metrics`) as scalar tensors."""
        aggregated = aggregate_instance_metrics(self.per_image_records())
        return {key: torch.tensor(value, dtype=torch.float64) for key, value in aggregated.items()}
