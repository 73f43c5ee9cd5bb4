"""Per-image test records -> pooled values with intervals, for the whole test set and its subsets."""

import pytest

from nucseg.results import json_safe_records, summarise_records, summarise_subsets


def _record(name: str, tp: int, fp: int, fn: int, tn: int = 100) -> dict:
    dice = 2 * tp / (2 * tp + fp + fn)
    return {"name": name, "tp": tp, "fp": fp, "fn": fn, "tn": tn, "dice": dice}


def test_pooled_dice_comes_from_summed_counts_and_its_interval_brackets_it():
    records = [_record("a", 8, 2, 0), _record("b", 2, 0, 2)]
    summary = summarise_records(records, num_resamples=500)
    # pooled: tp 10, fp 2, fn 2 -> 20 / 24
    assert summary["dice"]["value"] == pytest.approx(20 / 24)
    assert summary["dice"]["low"] <= summary["dice"]["value"] <= summary["dice"]["high"]
    # per image: (16/18 + 4/6) / 2
    assert summary["dice_per_image"]["value"] == pytest.approx((16 / 18 + 4 / 6) / 2)
    assert summary["num_images"] == 2
    assert "aji" not in summary  # no instance counts in these records


def test_subsets_are_summarised_on_their_own_images():
    records = [_record("a", 8, 2, 0), _record("b", 2, 0, 2), _record("c", 5, 5, 5)]
    summaries = summarise_subsets(records, {"same_organ": ["a"], "different_organ": ["b", "c"]}, num_resamples=200)
    assert set(summaries) == {"all", "same_organ", "different_organ"}
    assert summaries["same_organ"]["dice"]["value"] == pytest.approx(16 / 18)
    assert summaries["same_organ"]["dice"]["low"] == summaries["same_organ"]["dice"]["high"]  # one image
    assert summaries["different_organ"]["num_images"] == 2
    assert summaries["all"]["num_images"] == 3


def test_records_become_json_safe():
    import numpy as np

    safe = json_safe_records([{"name": "a", "aji": np.float64(0.5), "pq": float("nan"), "tp": np.int64(3)}])
    assert safe == [{"name": "a", "aji": 0.5, "pq": None, "tp": 3}]
    assert type(safe[0]["tp"]) is int
