"""Instance metrics on hand-built label maps (arithmetic in the comments) and against a slow reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from nucseg.metrics import InstanceMetrics, aggregate_instance_metrics, instance_metrics
from nucseg.metrics.instance import METRIC_KEYS, RECORD_KEYS
from nucseg.metrics.matching import overlap_table


def _check(values: dict[str, float], **expected: float) -> None:
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, abs=1e-12), key


# Merge: one prediction (id 7, 10 px) covers two nuclei of 4 px each and the gap between them.
MERGED_TRUE = np.array([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2]])
MERGED_PRED = np.full((2, 5), 7)

# Split: one nucleus (8 px) cut into a 6 px (id 5) and a 2 px (id 9) prediction.
SPLIT_TRUE = np.ones((2, 4), dtype=np.int64)
SPLIT_PRED = np.array([[5, 5, 5, 9], [5, 5, 5, 9]])


def test_merged_pair() -> None:
    values = instance_metrics(MERGED_TRUE, MERGED_PRED)
    # AJI: nucleus 1: I = 4, U = 4 + 10 - 4 = 10 (IoU 0.4); nucleus 2 the same, reusing id 7.
    #   C = 4 + 4 = 8, U = 10 + 10 = 20; no unused prediction -> AJI = 8 / 20 = 0.4
    # AJI+: id 7 goes to one nucleus only: C = 4, U = 10 + |nucleus 2| 4 = 14 -> 4 / 14 = 2/7
    # PQ: no IoU > 0.5 -> TP = 0, FP = 1, FN = 2 -> DQ = 0, SQ = 0, PQ = 0
    # Object Dice: each nucleus: 2*4 / (4 + 10) = 4/7, weights 1/2 + 1/2 -> 4/7;
    #   id 7: its largest overlap is a tie (4 px each), lowest id (1) wins: 4/7 -> (4/7 + 4/7) / 2
    _check(values, aji=0.4, aji_plus=2 / 7, pq=0.0, dq=0.0, sq=0.0, object_precision=0.0, object_recall=0.0,
           object_f1=0.0, object_dice=4 / 7)
    _check(values, aji_intersection=8, aji_union=20, aji_plus_intersection=4, aji_plus_union=14,
           pq_tp=0, pq_fp=1, pq_fn=2, pq_iou_sum=0.0, num_true=2, num_pred=1)


def test_split_nucleus() -> None:
    values = instance_metrics(SPLIT_TRUE, SPLIT_PRED)
    # AJI: id 5: I = 6, U = 8 (IoU 0.75); id 9: I = 2, U = 8 (IoU 0.25) -> match id 5: C = 6, U = 8;
    #   id 9 unused adds 2 -> AJI = 6 / 10 = 0.6; AJI+ pairs the same -> 0.6
    # PQ: id 5 matches (0.75 > 0.5): TP = 1, FP = 1 (id 9), FN = 0
    #   DQ = 1 / (1 + 0.5 + 0) = 2/3, SQ = 0.75, PQ = 0.5; precision 1/2, recall 1, F1 2/3
    # Object Dice: nucleus side: id 5, 2*6 / (8 + 6) = 6/7 (weight 1)
    #   prediction side: id 5: 6/7 (weight 6/8); id 9: 2*2 / (8 + 2) = 0.4 (weight 2/8) -> 9/14 + 1/10
    #   -> (6/7 + 9/14 + 1/10) / 2 = 0.8
    _check(values, aji=0.6, aji_plus=0.6, pq=0.5, dq=2 / 3, sq=0.75, object_precision=0.5, object_recall=1.0,
           object_f1=2 / 3, object_dice=0.8)
    _check(values, aji_intersection=6, aji_union=10, pq_tp=1, pq_fp=1, pq_fn=0, pq_iou_sum=0.75)


def test_unmatched_prediction() -> None:
    truth = np.zeros((3, 6), dtype=np.int32)
    truth[:2, :2] = 3  # one 4 px nucleus
    pred = np.zeros_like(truth)
    pred[:2, :2] = 1  # its exact prediction
    pred[0, 4:6] = pred[1, 5] = 2  # a 3 px false positive touching nothing
    values = instance_metrics(truth, pred)
    # AJI: C = 4, U = 4 + unused id 2 (3 px) = 7 -> 4/7; AJI+ the same
    # PQ: TP = 1 (IoU 1), FP = 1, FN = 0 -> DQ = 1 / 1.5 = 2/3, SQ = 1, PQ = 2/3
    # Object Dice: nucleus side 1; prediction side: id 1: 1 (weight 4/7), id 2: 0 (weight 3/7) -> 4/7
    #   -> (1 + 4/7) / 2 = 11/14
    _check(values, aji=4 / 7, aji_plus=4 / 7, pq=2 / 3, dq=2 / 3, sq=1.0, object_precision=0.5,
           object_recall=1.0, object_f1=2 / 3, object_dice=11 / 14)


def test_aji_tie_goes_to_the_lowest_predicted_id() -> None:
    truth = np.zeros((4, 4), dtype=np.int32)
    truth[:3] = 1  # 12 px
    pred = np.zeros_like(truth)
    pred[0] = 2  # id 2: I = 4, |S| = 4 -> IoU 4 / 12 = 1/3
    pred[1] = pred[2, 0] = pred[3, :3] = 8  # id 8: I = 5, |S| = 8 -> IoU 5 / (12 + 8 - 5) = 1/3
    # Tie: id 2 wins -> C = 4, U = 12, plus unused id 8 (8 px) -> AJI = 4 / 20 = 0.2
    # (id 8 would have given 5 / (15 + 4) = 5/19)
    assert instance_metrics(truth, pred)["aji"] == pytest.approx(0.2)


def test_empty_prediction_ground_truth_and_both() -> None:
    truth = np.zeros((4, 4), dtype=np.int32)
    truth[:2, :2] = 1
    truth[3, 2:] = 4
    empty = np.zeros_like(truth)
    # Empty prediction: C = 0, U = 4 + 2 = 6 -> AJI 0; TP = FP = 0, FN = 2 -> every metric 0
    no_pred = instance_metrics(truth, empty)
    _check(no_pred, **dict.fromkeys(METRIC_KEYS, 0.0), aji_union=6, pq_fn=2, pq_fp=0, num_pred=0)
    # Empty ground truth: U = the predictions' 6 px, FP = 2 -> every metric 0
    no_truth = instance_metrics(empty, truth)
    _check(no_truth, **dict.fromkeys(METRIC_KEYS, 0.0), aji_union=6, pq_fp=2, pq_fn=0, num_true=0)
    # Both empty: nothing to find and nothing found -> 1.0; every sum 0
    both = instance_metrics(empty, empty)
    _check(both, **dict.fromkeys(METRIC_KEYS, 1.0), **dict.fromkeys(RECORD_KEYS[len(METRIC_KEYS):], 0.0))


def test_ids_are_arbitrary_and_tensors_accepted() -> None:
    relabelled = np.where(SPLIT_PRED == 5, -3, 10**12)
    values = instance_metrics(torch.from_numpy(SPLIT_TRUE * 77), torch.from_numpy(relabelled))
    assert values["aji"] == pytest.approx(0.6) and values["pq"] == pytest.approx(0.5)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="same shape"):
        instance_metrics(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="must be integers"):
        instance_metrics(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        instance_metrics(np.zeros((2, 2, 2), int), np.zeros((2, 2, 2), int))


def test_aggregate_pooled_and_per_image() -> None:
    records = [instance_metrics(MERGED_TRUE, MERGED_PRED), instance_metrics(SPLIT_TRUE, SPLIT_PRED)]
    values = aggregate_instance_metrics(records)
    # Pooled AJI = (8 + 6) / (20 + 10) = 7/15; per-image mean (0.4 + 0.6) / 2 = 0.5
    # Pooled PQ: TP = 1, FP = 2, FN = 2 -> DQ = 1 / 3, SQ = 0.75 / 1, PQ = 0.25; mean SQ (0 + 0.75) / 2
    _check(values, aji=7 / 15, aji_per_image=0.5, dq=1 / 3, sq=0.75, pq=0.25, sq_per_image=0.375,
           aji_plus=(4 + 6) / (14 + 10), object_recall=1 / 3, object_precision=1 / 3)
    assert set(values) == {key for name in METRIC_KEYS for key in (name, f"{name}_per_image")}
    assert all(np.isnan(value) for value in aggregate_instance_metrics([]).values())


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # the idle process never updates
def test_metric_matches_aggregate_and_syncs_records() -> None:
    metric = InstanceMetrics()
    metric.update(MERGED_TRUE, MERGED_PRED, image_index=3)
    metric.update(torch.from_numpy(SPLIT_TRUE), torch.from_numpy(SPLIT_PRED))
    expected = aggregate_instance_metrics([instance_metrics(MERGED_TRUE, MERGED_PRED), instance_metrics(SPLIT_TRUE, SPLIT_PRED)])
    computed = metric.compute()
    assert {key: float(value) for key, value in computed.items()} == pytest.approx(expected)
    assert computed["aji"].dtype == torch.float64

    # Two processes, the second with no image: the gather concatenates rows and an empty state.
    rows = torch.cat(metric.records)
    idle = InstanceMetrics(dist_sync_fn=lambda tensor, group=None: [rows, tensor], distributed_available_fn=lambda: True)
    assert {key: float(value) for key, value in idle.compute().items()} == pytest.approx(expected)
    records = metric.per_image_records()
    assert [record["image_index"] for record in records] == [3, -1]
    assert records[1] == {"image_index": -1, **instance_metrics(SPLIT_TRUE, SPLIT_PRED)}
    metric.reset()
    assert metric.per_image_records() == []


# ---- randomised comparison with an explicit-loop reference ------------------------------------


def _random_labels(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int64)
    for _ in range(rng.integers(0, 7)):
        top, left = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        height, width = rng.integers(1, 6, size=2)
        labels[top : top + height, left : left + width] = rng.integers(1, 40)
    return labels


def _reference(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Metrics by definition, one pair of instances at a time."""
    true_ids = [i for i in np.unique(truth) if i != 0]
    pred_ids = [j for j in np.unique(pred) if j != 0]
    if not true_ids and not pred_ids:
        return dict.fromkeys(METRIC_KEYS, 1.0)
    inter = np.zeros((len(true_ids), len(pred_ids)))
    union = np.zeros((len(true_ids), len(pred_ids)))
    for a, i in enumerate(true_ids):
        for b, j in enumerate(pred_ids):
            inter[a, b] = np.sum((truth == i) & (pred == j))
            union[a, b] = np.sum((truth == i) | (pred == j))
    true_area = [np.sum(truth == i) for i in true_ids]
    pred_area = [np.sum(pred == j) for j in pred_ids]

    # AJI as the MoNuSeg code: strict '>' scan over predictions in id order.
    c = u = 0.0
    used = set()
    for a in range(len(true_ids)):
        best, best_iou = None, 0.0
        for b in range(len(pred_ids)):
            if inter[a, b] > 0 and inter[a, b] / union[a, b] > best_iou:
                best, best_iou = b, inter[a, b] / union[a, b]
        if best is None:
            u += true_area[a]
        else:
            c, u = c + inter[a, best], u + union[a, best]
            used.add(best)
    u += sum(pred_area[b] for b in range(len(pred_ids)) if b not in used)

    # AJI+ as HoVer-Net: Hungarian on the whole IoU matrix, zero-IoU pairs dropped.
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    keep = iou[rows, cols] > 0
    rows, cols = rows[keep], cols[keep]
    c_plus = inter[rows, cols].sum()
    u_plus = union[rows, cols].sum()
    u_plus += sum(true_area[a] for a in range(len(true_ids)) if a not in set(rows))
    u_plus += sum(pred_area[b] for b in range(len(pred_ids)) if b not in set(cols))

    tp_pairs = [(a, b) for a in range(len(true_ids)) for b in range(len(pred_ids)) if iou[a, b] > 0.5]
    tp, fp, fn = len(tp_pairs), len(pred_ids) - len(tp_pairs), len(true_ids) - len(tp_pairs)
    dq = tp / (tp + fp / 2 + fn / 2)
    sq = sum(iou[a, b] for a, b in tp_pairs) / tp if tp else 0.0

    def side(areas: list, overlaps: np.ndarray, other_areas: list) -> float:
        total = 0.0
        for a, area in enumerate(areas):
            if overlaps.shape[1] and overlaps[a].max() > 0:
                b = int(np.argmax(overlaps[a]))  # first maximum = lowest id
                total += area * 2 * overlaps[a, b] / (area + other_areas[b])
        return total / sum(areas) if areas else 0.0

    object_dice = (side(true_area, inter, pred_area) + side(pred_area, inter.T, true_area)) / 2
    return {
        "aji": c / u if u else 0.0,
        "aji_plus": c_plus / u_plus if u_plus else 0.0,
        "pq": dq * sq,
        "dq": dq,
        "sq": sq,
        "object_precision": tp / (tp + fp) if tp + fp else 0.0,
        "object_recall": tp / (tp + fn) if tp + fn else 0.0,
        "object_f1": dq,
        "object_dice": object_dice,
    }


def test_random_maps_agree_with_reference() -> None:
    rng = np.random.default_rng(2017)
    for _ in range(40):
        shape = tuple(rng.integers(6, 16, size=2))
        truth, pred = _random_labels(rng, shape), _random_labels(rng, shape)
        expected = _reference(truth, pred)
        values = instance_metrics(truth, pred)
        for key in METRIC_KEYS:
            assert values[key] == pytest.approx(expected[key], abs=1e-12), (key, truth, pred)
        table = overlap_table(truth, pred)
        assert table.pair_intersection.sum() == np.sum((truth > 0) & (pred > 0))
