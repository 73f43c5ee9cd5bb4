"""Evaluation protocols and validation splits, as pure functions over image names.

Two protocols over MoNuSeg 2018:

- ``official``: train on the 30 training images, test on the 14 test images.
- ``kumar``: the split of the published instance-segmentation tables (Kumar et al. 2017 style),
  all from the 30 official training images: 16 train, 8 same-organ test, 6 different-organ test.
  Read from ``<data root>/splits/kumar.json``; ``list="hovernet"`` takes its top-level lists (the
  HoVer-Net authors' split), ``list="alternative"`` its ``alternative_split`` (the tiseg/CDNet,
  NucInstSeg and ninepins toolboxes), which differs in 3 same-organ test images.

Validation is always cut from the protocol's training images, by whole images, so no tissue is on
both sides: seeded at random (the earlier behaviour), stratified by organ (one image per organ in
turn), the split file's own proposal, or one fold of an organ-stratified k-fold partition.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOLS = ("official", "kumar")
KUMAR_LISTS = ("hovernet", "alternative")
VAL_STRATEGIES = ("auto", "random", "organ", "file")
KUMAR_FILE = "kumar.json"
UNKNOWN_ORGAN = ""


class SplitError(ValueError):
    """A split file or split option is wrong; the message names the file or the option."""


@dataclass(frozen=True)
class SplitProtocol:
    """Which images a protocol trains and tests on.

    Attributes:
        name: ``"official"`` or ``"kumar"``.
        train_names: names from the training folder to train and validate on; ``None``: all.
        test_names: names from the TRAINING folder to test on; ``None``: the test folder.
        test_subsets: subset name -> test image names (``{}`` when the test set has no subsets).
        organs: image name -> organ, for every image the split file knows (may be empty).
        proposed_val: the split file's validation images (inside ``train_names``), or ``()``.
        info: what identifies the protocol in a results file (split, list, file).
    """

    name: str = "official"
    train_names: tuple[str, ...] | None = None
    test_names: tuple[str, ...] | None = None
    test_subsets: dict[str, list[str]] = field(default_factory=dict)
    organs: dict[str, str] = field(default_factory=dict)
    proposed_val: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=lambda: {"split": "official"})


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SplitError(f"{path}: split file not found (put {KUMAR_FILE} under <data.root>/splits/)")
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SplitError(f"{path}: cannot read split file ({error})") from error
    if not isinstance(content, dict):
        raise SplitError(f"{path}: split file must hold a JSON object")
    return content


def _names(content: Mapping[str, Any], key: str, path: Path) -> tuple[str, ...]:
    value = content.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value) or not value:
        raise SplitError(f"{path}: '{key}' must be a non-empty list of image names")
    return tuple(sorted(value))


def read_organs(splits_dir: str | os.PathLike[str] | None) -> dict[str, str]:
    """The organ of each image from ``<splits_dir>/kumar.json`` (``{}`` when there is no such file).

    Args:
        splits_dir: the folder holding the split files, or None.

    Returns:
        Image name -> organ.

    Raises:
        SplitError: the file exists but cannot be read or its ``organ`` entry is not a mapping.
    """
    if splits_dir is None or not (Path(splits_dir) / KUMAR_FILE).is_file():
        return {}
    path = Path(splits_dir) / KUMAR_FILE
    organs = _read_json(path).get("organ", {})
    if not isinstance(organs, dict):
        raise SplitError(f"{path}: 'organ' must map image names to organs")
    return {str(name): str(organ) for name, organ in organs.items()}


def load_protocol(
    split: str, splits_dir: str | os.PathLike[str] | None = None, kumar_list: str = "hovernet"
) -> SplitProtocol:
    """Build a protocol: ``official`` needs no file; ``kumar`` reads ``<splits_dir>/kumar.json``.

    Args:
        split: ``"official"`` or ``"kumar"``.
        splits_dir: the folder with the split files (``<data root>/splits``); None: no files.
        kumar_list: ``"hovernet"`` (top-level lists) or ``"alternative"`` (``alternative_split``).

    Returns:
        The protocol. The organ map is filled from ``kumar.json`` when the file is there, for
        ``official`` too (it covers the 30 training images).

    Raises:
        SplitError: unknown ``split`` or ``kumar_list``, missing or malformed split file, or lists
            that overlap.
    """
    if split not in PROTOCOLS:
        raise SplitError(f"unknown data.split '{split}'; expected one of {', '.join(PROTOCOLS)}")
    if kumar_list not in KUMAR_LISTS:
        raise SplitError(f"unknown data.kumar_list '{kumar_list}'; expected one of {', '.join(KUMAR_LISTS)}")
    if split == "official":
        return SplitProtocol(name="official", organs=read_organs(splits_dir), info={"split": "official"})
    if splits_dir is None:
        raise SplitError(f"data.split=kumar needs the MoNuSeg folder's splits/{KUMAR_FILE}; this data source has none")
    path = Path(splits_dir) / KUMAR_FILE
    content = _read_json(path)
    lists = content if kumar_list == "hovernet" else content.get("alternative_split")
    if not isinstance(lists, dict):
        raise SplitError(f"{path}: no 'alternative_split' object for data.kumar_list=alternative")
    train = _names(lists, "train", path)
    same, different = _names(lists, "test_same_organ", path), _names(lists, "test_different_organ", path)
    overlap = (set(train) & (set(same) | set(different))) | (set(same) & set(different))
    if overlap:
        raise SplitError(f"{path}: images on both sides of the split: {', '.join(sorted(overlap))}")
    organs = read_organs(splits_dir)
    proposal = content.get("train12_val4", {})
    proposed = proposal.get("val", []) if isinstance(proposal, dict) else []
    proposed_val = tuple(sorted(proposed)) if proposed and set(proposed) <= set(train) else ()
    return SplitProtocol(
        name="kumar",
        train_names=train,
        test_names=tuple(sorted(same + different)),
        test_subsets={"same_organ": list(same), "different_organ": list(different)},
        organs=organs,
        proposed_val=proposed_val,
        info={"split": "kumar", "kumar_list": kumar_list, "split_file": str(path)},
    )


def _check_names(names: Sequence[str]) -> list[str]:
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise SplitError("image names must be unique")
    return ordered


def random_validation(names: Iterable[str], num_val_images: int, seed: int) -> list[str]:
    """``num_val_images`` names drawn at random by ``seed``, independent of the input order.

    Args:
        names: the training image names.
        num_val_images: how many to hold out, 1..len(names) - 1.
        seed: the split seed.

    Returns:
        The held-out names, sorted.

    Raises:
        SplitError: ``num_val_images`` out of range.
    """
    ordered = _check_names(list(names))
    _check_count(num_val_images, len(ordered))
    chosen = np.random.default_rng(seed).choice(ordered, size=num_val_images, replace=False)
    return sorted(str(name) for name in chosen)


def _check_count(num_val_images: int, total: int) -> None:
    if not 0 < num_val_images < total:
        raise SplitError(
            f"num_val_images must be between 1 and {total - 1} for {total} training images, got {num_val_images}"
        )


def _shuffled_groups(names: list[str], organs: Mapping[str, str], rng: np.random.Generator) -> dict[str, list[str]]:
    """Organ -> its names in a seeded random order; names without an organ share one group."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(organs.get(name, UNKNOWN_ORGAN), []).append(name)
    return {organ: [members[i] for i in rng.permutation(len(members))] for organ, members in sorted(groups.items())}


def organ_stratified_validation(
    names: Iterable[str], organs: Mapping[str, str], num_val_images: int, seed: int
) -> list[str]:
    """Hold out one image per organ in turn, never the last training image of an organ.

    Organs are visited from the one with most images down (ties in a seeded order), one image
    each per round, until ``num_val_images`` are held out; which image of an organ goes is seeded.
    So 4 validation images from 4 equally large organs are one per organ.

    Args:
        names: the training image names.
        organs: name -> organ (names it lacks form one group of their own).
        num_val_images: how many to hold out.
        seed: the split seed.

    Returns:
        The held-out names, sorted.

    Raises:
        SplitError: ``num_val_images`` out of range, or more than the organs can give while
            keeping one training image each.
    """
    ordered = _check_names(list(names))
    _check_count(num_val_images, len(ordered))
    rng = np.random.default_rng(seed)
    groups = _shuffled_groups(ordered, organs, rng)
    tie_break = rng.permutation(len(groups))
    visit = sorted(groups, key=lambda organ: (-len(groups[organ]), tie_break[list(groups).index(organ)]))
    available = sum(len(members) - 1 for members in groups.values())
    if num_val_images > available:
        raise SplitError(
            f"num_val_images={num_val_images} would leave an organ without training images "
            f"({len(groups)} organs, at most {available} can be held out)"
        )
    held_out: list[str] = []
    for round_index in range(max(len(members) for members in groups.values())):
        for organ in visit:
            if len(held_out) == num_val_images:
                return sorted(held_out)
            if round_index < len(groups[organ]) - 1:
                held_out.append(groups[organ][round_index])
    return sorted(held_out)


def organ_stratified_folds(
    names: Iterable[str], organs: Mapping[str, str] | None, num_folds: int, seed: int
) -> list[list[str]]:
    """Partition the names into ``num_folds`` folds, each organ spread evenly over the folds.

    The names of each organ (seeded order) are dealt to the folds in turn, the count carrying on
    from one organ to the next, so fold sizes differ by at most one. Without an organ map the
    folds are plain seeded folds.

    Args:
        names: the training image names.
        organs: name -> organ, or None.
        num_folds: 2..len(names).
        seed: the split seed; the same seed gives the same folds whatever the input order.

    Returns:
        ``num_folds`` sorted name lists that together hold every name once.

    Raises:
        SplitError: ``num_folds`` out of range.
    """
    ordered = _check_names(list(names))
    if not 2 <= num_folds <= len(ordered):
        raise SplitError(f"num_folds must be between 2 and {len(ordered)} for {len(ordered)} training images, got {num_folds}")
    groups = _shuffled_groups(ordered, organs or {}, np.random.default_rng(seed))
    folds: list[list[str]] = [[] for _ in range(num_folds)]
    dealt = [name for members in groups.values() for name in members]
    for position, name in enumerate(dealt):
        folds[position % num_folds].append(name)
    return [sorted(fold) for fold in folds]


def choose_validation(
    names: Iterable[str],
    *,
    num_val_images: int,
    seed: int,
    strategy: str = "random",
    organs: Mapping[str, str] | None = None,
    proposed: Sequence[str] = (),
    num_folds: int | None = None,
    fold: int = 0,
) -> list[str]:
    """The validation images by one of the strategies (folds take precedence when set).

    Args:
        names: the protocol's training image names.
        num_val_images: how many to hold out (``random`` and ``organ``).
        seed: the split seed (also fixes the folds).
        strategy: ``"random"``, ``"organ"`` or ``"file"`` (the split file's proposal).
        organs: name -> organ, needed by ``"organ"``; stratifies folds when given.
        proposed: the split file's validation names, used by ``"file"``.
        num_folds: k of k-fold cross-validation, or None for a single split.
        fold: which fold (0..k-1) is the validation set.

    Returns:
        The held-out names, sorted.

    Raises:
        SplitError: an unknown strategy, an option out of range, or a strategy without its data.
    """
    names = list(names)
    if num_folds is not None:
        if not 0 <= fold < num_folds:
            raise SplitError(f"fold must be between 0 and {num_folds - 1} for num_folds={num_folds}, got {fold}")
        return organ_stratified_folds(names, organs, num_folds, seed)[fold]
    if strategy == "random":
        return random_validation(names, num_val_images, seed)
    if strategy == "organ":
        if not organs or not set(names) <= set(organs):
            raise SplitError("data.val_strategy=organ needs an organ for every training image (splits/kumar.json 'organ')")
        return organ_stratified_validation(names, organs, num_val_images, seed)
    if strategy == "file":
        if not proposed or not set(proposed) < set(names):
            raise SplitError(
                "data.val_strategy=file needs the split file's validation proposal (train12_val4 'val', "
                "inside the training list; data.split=kumar)"
            )
        return sorted(proposed)
    raise SplitError(f"unknown data.val_strategy '{strategy}'; expected one of {', '.join(VAL_STRATEGIES)}")
