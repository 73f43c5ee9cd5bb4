"""Pixel metrics against hand-computed numpy values; pooled vs per-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucseg.metrics import PerImageMetrics, build_pixel_metrics


def _counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    tn = int(np.sum(~pred & ~truth))
    return tp, fp, fn, tn


def test_pooled_metrics_match_numpy_over_all_pixels_of_all_batches():
    rng = np.random.default_rng(1)
    metrics = build_pixel_metrics()
    preds, truths = [], []
    for _ in range(3):  # three batches of different foreground balance
        probabilities = rng.random((2, 1, 8, 8)).astype(np.float32)
        truth = rng.random((2, 1, 8, 8)) > rng.uniform(0.2, 0.8)
        metrics.update(torch.from_numpy(probabilities), torch.from_numpy(truth.astype(np.int64)))
        preds.append(probabilities > 0.5)
        truths.append(truth)
    tp, fp, fn, tn = _counts(np.concatenate(preds), np.concatenate(truths))
    values = {key: float(value) for key, value in metrics.compute().items()}
    assert np.isclose(values["dice"], 2 * tp / (2 * tp + fp + fn))
    assert np.isclose(values["iou"], tp / (tp + fp + fn))
    assert np.isclose(values["accuracy"], (tp + tn) / (tp + fp + fn + tn))
    assert np.isclose(values["precision"], tp / (tp + fp))
    assert np.isclose(values["recall"], tp / (tp + fn))


def test_small_hand_worked_example():
    # prediction: 3 foreground pixels, truth: 2, overlap 1 → Dice 2·1/(3+2)=0.4, IoU 1/4
    prediction = torch.tensor([[[[0.9, 0.8, 0.7, 0.1]]]])
    truth = torch.tensor([[[[1, 0, 0, 1]]]])
    values = build_pixel_metrics()(prediction, truth)
    assert np.isclose(float(values["dice"]), 0.4)
    assert np.isclose(float(values["iou"]), 0.25)
    assert np.isclose(float(values["accuracy"]), 0.25)


def test_per_image_mean_differs_from_pooled_when_images_differ_in_size_of_foreground():
    # image A: perfect (Dice 1) on 1 pixel; image B: Dice 2·2/(4+4)=0.5 on 4 foreground pixels
    probabilities = torch.tensor(
        [[[[1.0, 0, 0, 0, 0, 0, 0, 0]]], [[[1.0, 1, 0, 0, 1, 1, 0, 0]]]]
    )
    truth = torch.tensor([[[[1, 0, 0, 0, 0, 0, 0, 0]]], [[[1, 1, 1, 1, 0, 0, 0, 0]]]])
    per_image = PerImageMetrics()
    per_image.update(probabilities, truth)
    values = {key: float(value) for key, value in per_image.compute().items()}
    assert np.isclose(values["dice_per_image"], (1.0 + 0.5) / 2)
    assert np.isclose(values["iou_per_image"], (1.0 + 2 / 6) / 2)
    pooled = build_pixel_metrics()(probabilities, truth)
    assert np.isclose(float(pooled["dice"]), 2 * 3 / (5 + 5))


def test_per_image_metrics_count_the_images_scored():
    # metrics.json reports this count, so a run with limited test batches says how many it scored.
    metric = PerImageMetrics()
    target = torch.zeros(3, 1, 4, 4)
    target[:, :, :2] = 1
    metric.update(target.clone(), target)
    metric.update(target[:1].clone(), target[:1])
    results = metric.compute()
    assert results["num_images"].item() == 4
    assert results["dice_per_image"].item() == pytest.approx(1.0)
    metric.reset()
    metric.update(target[:1].clone(), target[:1])
    assert metric.compute()["num_images"].item() == 1
