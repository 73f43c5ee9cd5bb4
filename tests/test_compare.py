"""nucseg.compare on a fake sweep: two models, two seeds of one, a crashed and a running run."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from nucseg.compare import collect
from nucseg.compare import curves as curves_module
from nucseg.compare.__main__ import main, newest_sweep
from nucseg.compare.curves import plot_curves, read_epoch_curves
from nucseg.compare.examples import ExampleCrop, choose_crop, crops_from_runs, outline, plot_examples
from nucseg.compare.table import build_table, format_value

EPOCHS = 3
STEPS_PER_EPOCH = 10


def _write_events(run_dir: Path, base: float, with_accuracy: bool = True) -> None:
    """Lightning-like events: step scalars and epoch scalars at the global step, plus ``epoch``."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    for epoch in range(EPOCHS):
        for step in range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH, 5):
            writer.add_scalar("train/loss_step", 1.0 - 0.01 * step, step)
            writer.add_scalar("epoch", epoch, step)
        end = (epoch + 1) * STEPS_PER_EPOCH - 1
        values = {"loss": 1.0 - base - 0.1 * epoch, "dice": base + 0.1 * epoch, "iou": base / 2 + 0.1 * epoch}
        if with_accuracy:
            values["accuracy"] = 0.8 + 0.05 * epoch
        for split, offset in (("train", 0.0), ("val", 0.02)):
            for metric, value in values.items():
                writer.add_scalar(f"{split}/{metric}", value - offset, end)
            writer.add_scalar("epoch", epoch, end)
    writer.close()


def _write_run(
    sweep: Path,
    name: str,
    model: str,
    seed: int,
    test: dict[str, float] | None,
    status: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    run_dir = sweep / name
    (run_dir / ".hydra").mkdir(parents=True)
    config = (
        f"model:\n  name: {model}\n  encoder: none\nseed: {seed}\n"
        "data:\n  patch_size: 256\npaths:\n  output_dir: ${hydra:runtime.output_dir}\n"
    )
    (run_dir / ".hydra" / "config.yaml").write_text(config)
    if status is not None:
        (run_dir / "status.json").write_text(json.dumps(status))
    if test is not None:
        metrics = {
            "model": model,
            "run_name": name,
            "status": "finished",
            "seed": seed,
            "test": test,
            "epochs": EPOCHS,
            "best_ckpt": "checkpoints/best.ckpt",
            "config": {"model": {"name": model}, "seed": seed, "paths": {"output_dir": str(run_dir)}},
            **(extra or {}),
        }
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """A multirun folder: unet seeds 0 and 1, resunet, a failed linknet34, a running unet."""
    root = tmp_path / "logs" / "multiruns" / "2025-01-02_03-04-05"
    unet0 = _write_run(
        root, "0_model=unet", "unet", 0,
        {"loss": 0.40, "dice": 0.80, "iou": 0.67, "accuracy": 0.90, "precision": 0.8, "recall": 0.8, "num_images": 14},
        {"status": "finished", "error": None},
        {"params": 7760097, "train_time_s": 600.0, "train_patches_per_s": 3.0},
    )
    resunet = _write_run(
        root, "1_model=resunet", "resunet", 0,
        {"loss": 0.35, "loss_dice": 0.2, "dice": 0.82, "iou": 0.70, "accuracy": 0.91, "aji": 0.61, "num_images": 14},
        {"status": "finished", "error": None},
        {"params": 9000000, "train_time_s": 900.0, "train_patches_per_s": 2.0},
    )
    _write_run(
        root, "2_model=linknet34", "linknet34", 0, None,
        {"status": "failed", "error": "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB\nmore detail"},
    )
    unet1 = _write_run(
        root, "3_model=unet,seed=1", "unet", 1,
        {"loss": 0.44, "dice": 0.78, "iou": 0.65, "accuracy": 0.88, "num_images": 14},
        {"status": "finished", "error": None},
        {"params": 7760097, "train_time_s": 660.0, "train_patches_per_s": 3.2},
    )
    _write_run(root, "4_model=unet,seed=2", "unet", 2, None, {"status": "running", "error": None})
    _write_events(unet0, 0.5)
    _write_events(unet1, 0.45)
    _write_events(resunet, 0.55, with_accuracy=False)
    return root


def _rows(markdown: str) -> dict[str, list[str]]:
    """Markdown table rows keyed by 'Model | Runs', cells stripped."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[f"{cells[0]} | {cells[1]}"] = cells
    return rows


def test_collect_classifies_every_run(sweep: Path) -> None:
    runs = {run.name: run for run in collect.collect_runs([sweep.parent])}
    assert list(runs) == ["0_model=unet", "1_model=resunet", "2_model=linknet34", "3_model=unet,seed=1", "4_model=unet,seed=2"]
    assert [runs[name].status for name in runs] == ["finished", "finished", "failed", "finished", "running or crashed"]
    assert runs["2_model=linknet34"].error == "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
    assert runs["2_model=linknet34"].model == "linknet34"
    assert runs["3_model=unet,seed=1"].seed == 1


def test_collect_unusual_states(tmp_path: Path) -> None:
    """Corrupt metrics, 'finished' without metrics, no status at all: each listed, none raises."""
    for name, files in {
        "corrupt": {"metrics.json": "{not json"},
        "no_metrics": {".hydra/config.yaml": "model:\n  name: unet\n", "status.json": '{"status": "finished"}'},
        "no_status": {".hydra/config.yaml": "model: linknet34\n"},
        "bad_yaml": {".hydra/config.yaml": "model: [unclosed\n", "status.json": '{"status": "running"}'},
    }.items():
        for relative, text in files.items():
            (tmp_path / name / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / relative).write_text(text)
    runs = {run.name: run for run in collect.collect_runs([tmp_path])}
    assert {name: (run.status, run.model) for name, run in runs.items()} == {
        "bad_yaml": ("running or crashed", "?"),
        "corrupt": ("invalid", "?"),
        "no_metrics": ("invalid", "unet"),
        "no_status": ("running or crashed", "linknet34"),
    }
    assert "unreadable" in (runs["corrupt"].error or "")
    assert len(build_table(list(runs.values())).groups) == 4


def test_collect_single_run_and_missing_path(sweep: Path, tmp_path: Path) -> None:
    assert [run.name for run in collect.collect_runs([sweep / "1_model=resunet"])] == ["1_model=resunet"]
    with pytest.raises(FileNotFoundError, match="no such directory"):
        collect.find_run_dirs([tmp_path / "absent"])


def test_table_values_grouping_and_bold(sweep: Path) -> None:
    table = build_table(collect.collect_runs([sweep]))
    markdown = table.to_markdown()
    header = markdown.splitlines()[0]
    assert header == (
        "| Model | Runs | Loss | Dice | Accuracy | IoU | AJI | Params | Train time | Patches/s | Status |"
    )
    rows = _rows(markdown)
    # Two seeds: mean ± t(0.975, 1) · s / √2 with t = 12.7062; loss s = 0.0283 -> ± 0.2541,
    # Dice, accuracy, IoU s = 0.0141 -> ± 0.1271. Costs keep mean ± std.
    assert rows["unet | 2 (seeds 0, 1)"] == [
        "unet", "2 (seeds 0, 1)", "0.4200 [0.1659, 0.6741]", "0.7900 [0.6629, 0.9171]", "0.8900 [0.7629, 1.0171]",
        "0.6600 [0.5329, 0.7871]", "—", "**7.76 M**", "**10.5 ± 0.7 min**", "**3.1 ± 0.1**", "finished",
    ]
    assert rows["resunet | 1 (seed 0)"] == [
        "resunet", "1 (seed 0)", "**0.3500**", "**0.8200**", "**0.9100**", "**0.7000**",
        "0.6100", "9.00 M", "15.0 min", "2.0", "finished",
    ]
    assert rows["linknet34 | 1 (seed 0)"][2:10] == ["—"] * 8
    assert rows["linknet34 | 1 (seed 0)"][10] == "failed: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
    assert rows["unet | 1 (seed 2)"][10] == "running or crashed"
    assert len(rows) == 5  # header + four rows: nothing dropped


def test_csv_has_full_precision_and_status(sweep: Path) -> None:
    table = build_table(collect.collect_runs([sweep]))
    rows = {(row["label"], row["status"]): row for row in csv.DictReader(io.StringIO(table.to_csv()))}
    unet = rows[("unet", "finished")]
    assert unet["n_runs"] == "2" and unet["seeds"] == "0;1"
    assert float(unet["test.dice_mean"]) == pytest.approx(0.79)
    assert float(unet["test.dice_std"]) == pytest.approx(np.std([0.80, 0.78], ddof=1))
    assert float(unet["train_time_s_mean"]) == pytest.approx(630.0)
    assert unet["test.aji_mean"] == ""
    assert unet["interval"] == "t over seeds (2)" and unet["test.aji_low"] == ""
    assert float(unet["test.dice_high"]) == pytest.approx(0.79 + 12.706204736 * 0.01)
    assert float(rows[("resunet", "finished")]["test.aji_mean"]) == pytest.approx(0.61)
    assert float(rows[("resunet", "finished")]["test.loss_dice_mean"]) == pytest.approx(0.2)  # CSV only
    failed = rows[("linknet34", "failed")]
    assert failed["error"].startswith("RuntimeError: CUDA out of memory")
    assert failed["test.dice_mean"] == "" and failed["n_runs"] == "1"
    assert rows[("unet", "running or crashed")]["runs"].endswith("4_model=unet,seed=2")


def test_rows_differing_in_config_get_labels(tmp_path: Path) -> None:
    """Same model, different loss: two rows labelled by the differing key; resolved paths ignored."""
    runs = []
    for index, (loss, seed, value) in enumerate([("dice", 0, 0.1), ("bce", 0, 0.15), ("dice", 1, 0.3)]):
        run_dir = tmp_path / f"{index}_loss={loss}"
        run_dir.mkdir()
        config = {"model": {"name": "unet"}, "loss": {"name": loss}, "seed": seed, "paths": {"output_dir": str(run_dir)}}
        test = {"loss": value, "dice": 0.5, "iou": 0.4, "accuracy": 0.9}
        (run_dir / "metrics.json").write_text(json.dumps({"model": "unet", "seed": seed, "test": test, "config": config}))
        runs.append(collect.load_run(run_dir))
    table = build_table(runs)
    assert [(group.label, len(group.runs)) for group in table.groups] == [
        ("unet (loss.name=dice)", 2),
        ("unet (loss.name=bce)", 1),
    ]
    assert table.best["test.loss"] == {1}
    # loss 0.1 and 0.3: mean 0.2 ± t(0.975, 1) · 0.1414 / √2 = ± 1.2706
    assert format_value(table.groups[0], table.columns[0], table.intervals[(0, "test.loss")]) == "0.2000 [-1.0706, 1.4706]"
    assert format_value(table.groups[0], table.columns[0]) == "0.2000"


def test_lever_rows_are_labelled_by_what_they_change(tmp_path: Path) -> None:
    """Five one-change recipes of one model: each row names its own change, even past three keys."""
    base = {"aug": {"hed": 0.0, "scale": 0.0}, "ema": 0.99, "optimizer": {"lr": 0.001}}
    levers = [{}, {"aug": {"hed": 0.5, "scale": 0.0}}, {"aug": {"hed": 0.0, "scale": 0.5}}, {"ema": None}, {"optimizer": {"lr": 0.002}}]
    runs = []
    for index, change in enumerate(levers):
        run_dir = tmp_path / f"{index}_lever"
        run_dir.mkdir()
        config = {"model": {"name": "linknet34"}, **base, **change}
        test = {"loss": 0.5, "dice": 0.8, "iou": 0.66, "accuracy": 0.92}
        (run_dir / "metrics.json").write_text(json.dumps({"model": "linknet34", "test": test, "config": config}))
        runs.append(collect.load_run(run_dir))
    labels = [group.label for group in build_table(runs).groups]
    assert labels == [
        "linknet34 (aug.hed=0.0, aug.scale=0.0, ema=0.99, …)",
        "linknet34 (aug.hed=0.5)",
        "linknet34 (aug.scale=0.5)",
        "linknet34 (ema=None)",
        "linknet34 (optimizer.lr=0.002)",
    ]


def test_curves_map_steps_to_epochs(sweep: Path) -> None:
    curves = read_epoch_curves(sweep / "0_model=unet")
    assert sorted(curves["val/dice"]) == [0, 1, 2]
    assert curves["val/dice"][2] == pytest.approx(0.5 + 0.2 - 0.02)
    assert curves["train/loss"][0] == pytest.approx(0.5)
    missing = read_epoch_curves(sweep / "1_model=resunet")
    assert "val/accuracy" not in missing and "val/iou" in missing
    assert read_epoch_curves(sweep / "2_model=linknet34") == {}


def test_curves_come_from_the_csv_logger_first(tmp_path: Path) -> None:
    """Lightning's CSVLogger rows: one per logging call with its epoch; a resumed run adds a version."""
    from lightning.pytorch.loggers import CSVLogger

    run_dir = tmp_path / "run"
    _write_events(run_dir, 0.1)  # TensorBoard events too: the CSV wins when it exists
    first = CSVLogger(str(run_dir), name="csv")
    for epoch in range(2):
        first.log_metrics({"train/loss_step": 9.0, "epoch": epoch}, step=10 * epoch)
        first.log_metrics({"train/loss_epoch": 1.0 - 0.1 * epoch, "train/dice": 0.5, "epoch": epoch}, step=10 * epoch + 9)
        first.log_metrics({"val/dice": 0.6 + 0.1 * epoch, "epoch": epoch}, step=10 * epoch + 9)
    first.save()
    resumed = CSVLogger(str(run_dir), name="csv")  # version_1
    resumed.log_metrics({"val/dice": 0.75, "epoch": 1}, step=19)
    resumed.log_metrics({"val/dice": 0.8, "epoch": 2}, step=29)
    resumed.save()
    assert [path.parent.name for path in curves_module.csv_files(run_dir)] == ["version_0", "version_1"]
    curves = read_epoch_curves(run_dir)
    assert curves["val/dice"] == pytest.approx({0: 0.6, 1: 0.75, 2: 0.8})
    assert curves["train/loss"] == pytest.approx({0: 1.0, 1: 0.9})  # from train/loss_epoch, step rows skipped
    assert "val/iou" not in curves  # only in the TensorBoard events, which are not read


def _assert_real_image(path: Path, min_side: int = 300) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[0] >= min_side and pixels.shape[1] >= min_side
    assert pixels[..., :3].reshape(-1, 3).std(axis=0).max() > 0.05, f"{path} is (nearly) one colour"


def test_main_writes_table_and_figures(sweep: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """examples.png is skipped with a warning: the fake runs have no checkpoints and no data module."""
    caplog.set_level(logging.WARNING)
    assert main([str(sweep)]) == 0
    out = sweep / "comparison"
    markdown = (out / "comparison.md").read_text()
    assert "| **resunet** |" not in markdown and "| resunet | 1 (seed 0) | **0.3500** |" in markdown
    assert "failed: RuntimeError: CUDA out of memory" in markdown
    assert "![Training curves](curves.png)" in markdown
    assert (out / "comparison.csv").read_text().startswith("label,model,status,error,n_runs")
    _assert_real_image(out / "curves.png")
    assert not (out / "examples.png").exists()
    assert "left out of examples.png" in caplog.text


def test_main_defaults_to_newest_sweep(sweep: Path, tmp_path: Path) -> None:
    (sweep.parent / "2024-12-31_23-59-59").mkdir()
    assert newest_sweep(sweep.parent) == sweep
    out = tmp_path / "report"
    assert main(["--sweeps-root", str(sweep.parent), "--out", str(out), "--no-examples"]) == 0
    assert (out / "comparison.md").is_file() and (out / "curves.png").is_file()


def test_main_reports_nothing_to_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "absent")]) == 1
    assert main([str(tmp_path)]) == 1
    assert main(["--sweeps-root", str(tmp_path / "none")]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)


def test_plot_curves_tolerates_missing_tags(tmp_path: Path) -> None:
    curves = {"unet": [{"train/loss": {0: 1.0, 1: 0.5}}], "resunet": [{"val/dice": {0: 0.5, 1: 0.7}}, {"val/dice": {0: 0.6}}]}
    path = plot_curves(curves, tmp_path / "curves.png")
    assert path is not None
    _assert_real_image(path)
    assert plot_curves({"unet": [{}]}, tmp_path / "empty.png") is None


def _synthetic_crop(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A pinkish image with purple discs and their instance labels."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), (230, 180, 210), dtype=np.uint8)
    labels = np.zeros((size, size), dtype=np.int32)
    yy, xx = np.mgrid[:size, :size]
    for label in range(1, 6):
        cy, cx = rng.integers(8, size - 8, size=2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
        labels[disc] = label
        image[disc] = (90, 40, 140)
    return image, labels


def test_outline_separates_touching_instances() -> None:
    labels = np.zeros((6, 8), dtype=np.int32)
    labels[1:5, 1:4] = 1
    labels[1:5, 4:7] = 2
    edge = outline(labels)
    assert edge[2, 3] and edge[2, 4]  # the shared border is drawn on both sides
    assert not edge[0].any() and not edge[2, 2]
    assert not outline(labels > 0)[2, 3]  # a binary mask has no inner border


def test_plot_examples_from_arrays(tmp_path: Path) -> None:
    crops = []
    for seed in range(2):
        image, labels = _synthetic_crop(seed)
        predictions = {"unet": labels > 0, "resunet": np.roll(labels, 3, axis=1) > 0}
        crops.append(ExampleCrop(name=f"img{seed}", image=image, truth=labels, predictions=predictions))
    crops[1].predictions.pop("resunet")
    path = plot_examples(crops, tmp_path / "examples.png", columns=["unet", "resunet"])
    _assert_real_image(path)
    with pytest.raises(ValueError, match="no crops"):
        plot_examples([], tmp_path / "none.png")


def test_choose_crop_is_deterministic_and_picks_nuclei() -> None:
    labels = np.zeros((300, 300), dtype=np.int32)
    labels[250:260, 250:260] = 1
    labels[280:290, 280:290] = 2
    assert choose_crop(labels, 64) == (236, 236)
    assert choose_crop(labels, 64) == choose_crop(labels.copy(), 64)
    assert choose_crop(np.zeros((50, 40), dtype=np.int32), 64) == (0, 0)


def test_crops_from_runs_skips_a_broken_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The project APIs are replaced by fakes: a threshold 'model' and synthetic test images."""
    images = []
    for seed in range(3):
        image, labels = _synthetic_crop(seed, size=96)
        images.append(SimpleNamespace(name=f"test_{seed}", image=image, instance_labels=labels))

    def make_run(name: str) -> collect.RunRecord:
        return collect.RunRecord(path=tmp_path / name, name=name, status="finished", model=name, metrics={"test": {}},
                                 config={"data": {"name": "synthetic"}})

    def load_model(run_dir: Path) -> Any:
        if run_dir.name == "broken":
            raise FileNotFoundError(f"{run_dir}: no checkpoint")
        return SimpleNamespace(module=run_dir.name, stain_normalizer=None, run_config={})

    def predict(model: Any, image: np.ndarray) -> np.ndarray:
        return (image[..., 0] < 128).astype(np.uint8)

    caplog.set_level(logging.WARNING)
    crops = crops_from_runs(
        {"unet": make_run("unet"), "broken": make_run("broken"), "resunet": make_run("resunet")},
        crop_size=48, num_images=2, load_model=load_model, load_test_images=lambda run, model: images, predict=predict,
    )
    assert [crop.source for crop in crops] == ["test_0", "test_1"]
    assert all(set(crop.predictions) == {"unet", "resunet"} for crop in crops)
    assert all(crop.image.shape == (48, 48, 3) and crop.predictions["unet"].shape == (48, 48) for crop in crops)
    assert np.array_equal(crops[0].predictions["unet"], crops[0].truth > 0)
    assert "broken" in caplog.text and "no checkpoint" in caplog.text


def test_tensorboard_layout_callback(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing import event_accumulator as ea

    from nucseg.callbacks import TensorBoardLayout, custom_scalars_layout

    layout = custom_scalars_layout()
    assert set(layout) == {"Loss", "Dice", "IoU", "Accuracy"}
    assert layout["Dice"]["val/dice"] == ["Multiline", [r"^val/dice(_epoch)?$"]]

    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tensorboard", version="", default_hp_metric=False)
    trainer = SimpleNamespace(is_global_zero=True, loggers=[CSVLogger(str(tmp_path / "csv")), logger])
    callback = TensorBoardLayout()
    callback.on_fit_start(trainer, None)
    callback.on_fit_start(trainer, None)  # a second fit must not write a second layout
    logger.finalize("success")
    accumulator = ea.EventAccumulator(str(tmp_path / "tensorboard"))
    accumulator.Reload()
    assert accumulator.Tags()["tensors"] == ["custom_scalars__config__"]
    assert len(accumulator.Tensors("custom_scalars__config__")) == 1
    TensorBoardLayout().on_fit_start(SimpleNamespace(is_global_zero=True, loggers=[]), None)


# ---- intervals and paired comparison from test.per_image ------------------------------------


def _per_image(dice_shift: float, with_instances: bool) -> list[dict[str, Any]]:
    """Four images of 100 px each; the prediction gains ``dice_shift`` in true positives."""
    records = []
    for index, (tp, fp, fn) in enumerate([(40, 10, 10), (30, 5, 15), (50, 10, 0), (20, 10, 10)]):
        tp = tp + round(100 * dice_shift)
        tn = 100 - tp - fp - fn
        record = {"name": f"img{index}", "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                  "dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn), "accuracy": (tp + tn) / 100}
        if with_instances:
            c, u = 30 + index + round(100 * dice_shift), 60
            record.update({"aji": c / u, "aji_intersection": c, "aji_union": u,
                           "pq_tp": 3, "pq_fp": 1, "pq_fn": 1, "pq_iou_sum": 2.4})
        records.append(record)
    return records


def _pooled_test_block(records: list[dict[str, Any]]) -> dict[str, Any]:
    tp, fp, fn, tn = (sum(record[key] for record in records) for key in ("tp", "fp", "fn", "tn"))
    return {"loss": 0.3, "dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn),
            "accuracy": (tp + tn) / (tp + fp + fn + tn), "num_images": len(records), "per_image": records}


@pytest.fixture()
def per_image_sweep(tmp_path: Path) -> Path:
    """linknet34 (one run, per-image with instances, +5 px TP per image), unet (two seeds, per-image
    pixel counts only), resunet (an older run without per_image)."""
    root = tmp_path / "sweep"
    _write_run(root, "0_model=linknet34", "linknet34", 0, _pooled_test_block(_per_image(0.05, True)))
    _write_run(root, "1_model=unet", "unet", 0, _pooled_test_block(_per_image(0.0, False)))
    _write_run(root, "2_model=unet,seed=1", "unet", 1, _pooled_test_block(_per_image(0.0, False)))
    _write_run(root, "3_model=resunet", "resunet", 0, {"loss": 0.4, "dice": 0.7, "iou": 0.55, "accuracy": 0.8})
    return root


def test_one_run_rows_get_bootstrap_intervals_over_images(per_image_sweep: Path) -> None:
    from nucseg.metrics.intervals import bootstrap_pooled, pooled_aji, pooled_dice

    table = build_table(collect.collect_runs([per_image_sweep]), num_resamples=2000)
    assert [column.title for column in table.columns][:6] == ["Loss", "Dice", "Accuracy", "IoU", "AJI", "PQ"]
    records = _per_image(0.05, True)
    counts = {key: [record[key] for record in records] for key in ("tp", "fp", "fn")}
    expected = bootstrap_pooled(counts, pooled_dice, num_resamples=2000)
    dice = table.intervals[(0, "test.dice")]
    assert (dice.low, dice.high, dice.method, dice.n) == (expected.low, expected.high, "bootstrap over images", 4)
    assert dice.low < dice.estimate < dice.high
    # AJI is not in the test block: pooled from the records, C = 30+31+32+33 + 4·5 = 146, U = 240
    aji = table.intervals[(0, "test.aji")]
    assert table.groups[0].mean("test.aji") == pytest.approx(146 / 240) == aji.estimate
    assert aji.low == bootstrap_pooled(
        {"aji_intersection": [35, 36, 37, 38], "aji_union": [60] * 4}, pooled_aji, num_resamples=2000).low
    # PQ: TP 12, FP 4, FN 4, IoU 9.6 -> DQ 12/16, SQ 0.8, PQ 0.6; identical images: zero width
    assert table.groups[0].mean("test.pq") == pytest.approx(0.6)
    cells = dict(zip(table.headers, (text for text, _ in table.cells(0)), strict=True))
    assert cells["PQ"] == "0.6000 [0.6000, 0.6000]" and cells["Loss"] == "0.3000"  # no per-image loss
    assert (1, "test.dice") in table.intervals and table.intervals[(1, "test.dice")].method == "t over seeds"
    assert not any(row == 2 for row, _ in table.intervals)  # the older run: plain means
    assert dict(zip(table.headers, (text for text, _ in table.cells(2)), strict=True))["Dice"] == "0.7000"


def test_paired_comparison_of_the_best_row(per_image_sweep: Path) -> None:
    table = build_table(collect.collect_runs([per_image_sweep]), num_resamples=2000)
    # linknet34 gains 5 TP px on every image: per-image Dice differences all positive, not equal
    assert [(row.metric, row.best, row.other) for row in table.paired] == [("dice", "linknet34", "unet")]
    comparison = table.paired[0].comparison
    differences = [a["dice"] - b["dice"] for a, b in zip(_per_image(0.05, True), _per_image(0.0, False), strict=True)]
    assert comparison.mean_difference == pytest.approx(np.mean(differences))
    assert comparison.n == 4 and comparison.verdict == "higher" and table.paired[0].verdict_text == "best higher"
    assert comparison.p_value == pytest.approx(2 / 2**4)  # exact Wilcoxon, all four positive
    assert min(differences) <= comparison.interval.low < comparison.interval.high <= max(differences)


def test_main_writes_intervals_and_paired_section(per_image_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([str(per_image_sweep), "--out", str(out), "--no-examples", "--resamples", "500"]) == 0
    markdown = (out / "comparison.md").read_text()
    assert "percentile bootstrap over its test images" in markdown and "Student-t" in markdown
    assert "## Paired comparison" in markdown and "500 resamples" in markdown
    assert "| Dice | linknet34 | unet | 4 | +0.0253 | [+0.01" in markdown and "| 0.12 | best higher |" in markdown
    header = (out / "comparison.csv").read_text().splitlines()[0].split(",")
    assert header[7] == "interval" and "test.aji_low" in header and "test.dice_high" in header


def test_main_rejects_a_percentage_confidence(per_image_sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([str(per_image_sweep), "--confidence", "95"])
    assert "--confidence must be in (0, 1)" in capsys.readouterr().err
