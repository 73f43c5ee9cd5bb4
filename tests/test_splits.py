"""Protocols and validation splits on tiny name lists and a hand-written split file."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from nucseg.data.splits import (
    SplitError,
    choose_validation,
    load_protocol,
    organ_stratified_folds,
    organ_stratified_validation,
    random_validation,
    read_organs,
)

# 4 organs: a and b with 4 images, c with 3, d with 1
ORGANS = {f"{organ}{i}": organ for organ, count in (("a", 4), ("b", 4), ("c", 3), ("d", 1)) for i in range(count)}
NAMES = sorted(ORGANS)

KUMAR = {
    "train": ["a0", "a1", "a2", "b0", "b1", "b2"],
    "test_same_organ": ["a3", "b3"],
    "test_different_organ": ["c0", "d0"],
    "organ": ORGANS,
    "alternative_split": {
        "train": ["a0", "a1", "a3", "b0", "b1", "b2"],
        "test_same_organ": ["a2", "b3"],
        "test_different_organ": ["c0", "d0"],
    },
    "train12_val4": {"val": ["a1", "b1"], "train": ["a0", "b0"]},
}


@pytest.fixture
def splits_dir(tmp_path):
    (tmp_path / "kumar.json").write_text(json.dumps(KUMAR))
    return tmp_path


def test_random_validation_matches_the_earlier_choice_and_ignores_order():
    chosen = random_validation(NAMES, 3, seed=5)
    expected = sorted(np.random.default_rng(5).choice(NAMES, size=3, replace=False).tolist())
    assert chosen == expected
    assert random_validation(list(reversed(NAMES)), 3, seed=5) == chosen
    with pytest.raises(SplitError, match="num_val_images must be between 1 and 11 for 12 training images"):
        random_validation(NAMES, 12, seed=0)


def test_organ_validation_takes_one_per_organ_largest_first():
    for seed in range(5):
        chosen = organ_stratified_validation(NAMES, ORGANS, 3, seed)
        # a, b and c can spare an image; d's only image always stays in training
        assert sorted(ORGANS[name] for name in chosen) == ["a", "b", "c"]
        two = organ_stratified_validation(NAMES, ORGANS, 2, seed)
        assert sorted(ORGANS[name] for name in two) == ["a", "b"]  # the two largest organs
        five = Counter(ORGANS[name] for name in organ_stratified_validation(NAMES, ORGANS, 5, seed))
        assert five["d"] == 0 and max(five.values()) == 2
    assert organ_stratified_validation(list(reversed(NAMES)), ORGANS, 3, 1) == organ_stratified_validation(
        NAMES, ORGANS, 3, 1
    )
    assert len({tuple(organ_stratified_validation(NAMES, ORGANS, 3, seed)) for seed in range(8)}) > 1


def test_organ_validation_keeps_a_training_image_per_organ():
    assert len(organ_stratified_validation(NAMES, ORGANS, 8, 0)) == 8  # 3 + 3 + 2 + 0
    with pytest.raises(SplitError, match="would leave an organ without training images"):
        organ_stratified_validation(NAMES, ORGANS, 9, 0)


def test_folds_partition_and_spread_each_organ():
    folds = organ_stratified_folds(NAMES, ORGANS, 4, seed=0)
    assert sorted(name for fold in folds for name in fold) == NAMES
    assert [len(fold) for fold in folds] == [3, 3, 3, 3]
    for organ in ("a", "b"):  # 4 images over 4 folds: one each
        assert all(sum(ORGANS[name] == organ for name in fold) == 1 for fold in folds)
    assert organ_stratified_folds(list(reversed(NAMES)), ORGANS, 4, seed=0) == folds
    assert organ_stratified_folds(NAMES, ORGANS, 4, seed=1) != folds
    plain = organ_stratified_folds(NAMES, None, 5, seed=0)
    assert sorted(len(fold) for fold in plain) == [2, 2, 2, 3, 3]
    with pytest.raises(SplitError, match="num_folds must be between 2 and 12"):
        organ_stratified_folds(NAMES, ORGANS, 1, seed=0)


def test_choose_validation_dispatch_and_errors():
    assert choose_validation(NAMES, num_val_images=2, seed=0, num_folds=4, fold=3) == (
        organ_stratified_folds(NAMES, None, 4, 0)[3]
    )
    assert choose_validation(NAMES, num_val_images=2, seed=0, organs=ORGANS, num_folds=4, fold=3) == (
        organ_stratified_folds(NAMES, ORGANS, 4, 0)[3]
    )
    assert choose_validation(NAMES, num_val_images=2, seed=0, strategy="file", proposed=["a1", "b1"]) == ["a1", "b1"]
    with pytest.raises(SplitError, match="fold must be between 0 and 3"):
        choose_validation(NAMES, num_val_images=2, seed=0, num_folds=4, fold=4)
    with pytest.raises(SplitError, match="val_strategy=organ needs an organ"):
        choose_validation(NAMES, num_val_images=2, seed=0, strategy="organ")
    with pytest.raises(SplitError, match="val_strategy=file needs"):
        choose_validation(NAMES, num_val_images=2, seed=0, strategy="file")
    with pytest.raises(SplitError, match="unknown data.val_strategy 'best'"):
        choose_validation(NAMES, num_val_images=2, seed=0, strategy="best")


def test_kumar_protocol_lists_subsets_and_proposal(splits_dir):
    hovernet = load_protocol("kumar", splits_dir)
    assert hovernet.train_names == ("a0", "a1", "a2", "b0", "b1", "b2")
    assert hovernet.test_names == ("a3", "b3", "c0", "d0")
    assert hovernet.test_subsets == {"same_organ": ["a3", "b3"], "different_organ": ["c0", "d0"]}
    assert hovernet.proposed_val == ("a1", "b1") and hovernet.organs == ORGANS
    assert hovernet.info == {"split": "kumar", "kumar_list": "hovernet", "split_file": str(splits_dir / "kumar.json")}
    alternative = load_protocol("kumar", splits_dir, kumar_list="alternative")
    assert alternative.train_names == ("a0", "a1", "a3", "b0", "b1", "b2")
    assert alternative.test_subsets["same_organ"] == ["a2", "b3"]
    official = load_protocol("official", splits_dir)
    assert official.train_names is None and official.test_names is None and official.test_subsets == {}
    assert official.organs == ORGANS  # the organ map serves organ-stratified validation there too
    assert load_protocol("official", None).organs == {} and read_organs(splits_dir / "absent") == {}


def test_kumar_protocol_errors(tmp_path, splits_dir):
    missing = tmp_path / "nowhere"
    with pytest.raises(SplitError, match="nowhere/kumar.json: split file not found"):
        load_protocol("kumar", missing)
    with pytest.raises(SplitError, match="needs the MoNuSeg folder"):
        load_protocol("kumar", None)
    with pytest.raises(SplitError, match="unknown data.split 'kumra'"):
        load_protocol("kumra", splits_dir)
    with pytest.raises(SplitError, match="unknown data.kumar_list 'cdnet'"):
        load_protocol("kumar", splits_dir, kumar_list="cdnet")
    (splits_dir / "kumar.json").write_text(json.dumps({**KUMAR, "train": KUMAR["train"] + ["a3"]}))
    with pytest.raises(SplitError, match="both sides of the split: a3"):
        load_protocol("kumar", splits_dir)
    (splits_dir / "kumar.json").write_text("{")
    with pytest.raises(SplitError, match="cannot read split file"):
        load_protocol("kumar", splits_dir)
