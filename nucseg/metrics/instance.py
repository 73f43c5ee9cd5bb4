"""Nucleus-level metrics of an instance label map against the ground truth: AJI, AJI+, PQ, object F1, object Dice.

Every metric is computed from one sparse overlap table of the two maps
(:class:`~nucseg.metrics.matching.OverlapTable`: the overlapping pairs of nuclei with their
intersections, and each nucleus's area), at a cost that never grows with (ground-truth nuclei x
predicted nuclei).

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
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from nucseg.metrics.matching import OverlapTable, first_per_group, one_to_one_pairs, overlap_table

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


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, 0.0 for a zero denominator."""
    return float(numerator) / float(denominator) if denominator else 0.0


def _matched_sums(table: OverlapTable, pairs: np.ndarray) -> tuple[int, int]:
    """(C, U) of AJI over the matched ``pairs`` (indices into the table's pairs).

    C sums |G ∩ S| and U sums |G ∪ S| over the pairs; every nucleus and every prediction in no
    pair (for AJI: the predictions outside the *used* set) adds its area to U.
    """
    matched_true = np.zeros(table.true_ids.size, dtype=bool)
    matched_true[table.pair_true[pairs]] = True
    matched_pred = np.zeros(table.pred_ids.size, dtype=bool)
    matched_pred[table.pair_pred[pairs]] = True
    intersection = int(table.pair_intersection[pairs].sum())
    union = int(table.pair_union[pairs].sum())
    union += int(table.true_areas[~matched_true].sum()) + int(table.pred_areas[~matched_pred].sum())
    return intersection, union


def aji_sums(table: OverlapTable) -> tuple[int, int]:
    """(C, U) of AJI with the MoNuSeg matching (see the module docstring)."""
    # Per nucleus: highest IoU first, then lowest predicted id (pred index order = id order).
    return _matched_sums(table, first_per_group(table.pair_true, -table.pair_iou, table.pair_pred))


def aji_plus_sums(table: OverlapTable) -> tuple[int, int]:
    """(C, U) of AJI+ with the one-to-one matching of :func:`~nucseg.metrics.matching.one_to_one_pairs`."""
    return _matched_sums(table, one_to_one_pairs(table))


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
        best = first_per_group(own, -table.pair_intersection, other)
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
