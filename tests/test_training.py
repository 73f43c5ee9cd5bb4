"""End to end on tiny synthetic data: fast_dev_run per model, a real tiny run, evaluate, a multirun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, TINY_OVERRIDES
from hydra.utils import instantiate

from nucseg.checkpoint import CheckpointError, load_checkpoint_dict, load_model
from nucseg.pipeline import train

MODELS = ["unet", "resunet", "linknet34"]


@pytest.mark.slow
@pytest.mark.parametrize("model", [*MODELS, "smp"])
def test_fast_dev_run_trains_validates_and_tests_each_model(compose_train, model, tmp_path):
    overrides = [f"model={model}", "debug=fast"]
    if model == "smp":
        overrides += ["model.net.arch=FPN", "model.net.encoder_name=resnet18"]
    metrics = train(compose_train(overrides))
    assert metrics["model"] == compose_train(overrides).model.name
    assert 0.0 <= metrics["test"]["dice"] <= 1.0
    # fast_dev_run tests one batch (one whole image) of the two: the count says what was scored.
    assert metrics["test"]["num_images"] == 1
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_short_run_learns_and_its_checkpoint_predicts_like_the_test(compose_train, tmp_path):
    cfg = compose_train(
        ["model=unet", "++widths.unet=8", "trainer.max_epochs=6", "data.patches_per_image=8", "optimizer.lr=3e-3"]
    )
    metrics = train(cfg)
    run_dir = tmp_path / "run"
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["test"]["dice"] == pytest.approx(metrics["test"]["dice"])
    assert written["test"]["dice"] > 0.6, "six short epochs on synthetic nuclei should be well above chance"
    assert written["params"] > 0 and written["train_patches_per_s"] > 0
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()

    stored = load_checkpoint_dict(run_dir)
    assert set(stored["nucseg"]) == {"run_config", "model_name"} and stored["nucseg"]["model_name"] == "unet"
    assert stored["nucseg"]["run_config"]["data"] == metrics["config"]["data"]
    assert not any("RunConfig" in key for key in stored.get("callbacks", {}))  # nothing else stored
    model = load_model(run_dir)
    module = model.module
    assert not module.training
    assert model.stain_normalizer is not None and model.stain_normalizer.is_fitted
    images = torch.rand(1, 3, 96, 96)
    logits = module.predict_logits(images)
    assert logits.shape == (1, 1, 96, 96) and torch.isfinite(logits).all()


def test_load_model_names_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints/best.ckpt"):
        load_model(tmp_path)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.ckpt: cannot read checkpoint"):
        load_model(broken)


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
        env={**__import__("os").environ, "NUCSEG_CACHE_DIR": str(tmp_path / "cache")},
    )


@pytest.mark.slow
def test_two_model_multirun_writes_two_metrics_files_and_evaluate_writes_beside_them(tmp_path):
    overrides = [o for o in TINY_OVERRIDES if "widths" not in o] + ["+widths={unet: 4, resunet: 4}"]
    result = _run(["train.py", "-m", "model=unet,resunet", f"paths.log_dir={tmp_path / 'logs'}", *overrides], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics_files = sorted((tmp_path / "logs" / "multiruns").glob("*/*/metrics.json"))
    names = [path.parent.name for path in metrics_files]
    assert [name[:2] for name in names] == ["0_", "1_"]
    assert all(len(name) <= 122 for name in names), "long override lists are shortened"
    for path, model in zip(metrics_files, ["unet", "resunet"], strict=True):
        metrics = json.loads(path.read_text())
        assert metrics["model"] == model
        assert {"dice", "iou", "accuracy", "loss"} <= set(metrics["test"])
        assert list((path.parent / "tensorboard").glob("events.out.tfevents.*"))

    run_dir = metrics_files[0].parent
    before = json.loads(metrics_files[0].read_text())
    # a plain path works as the run directory; the run's own metrics.json is left as it is
    result = _run(["evaluate.py", str(run_dir), f"paths.log_dir={tmp_path / 'logs'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(metrics_files[0].read_text()) == before
    after = json.loads((run_dir / "evaluations" / "test.json").read_text())
    assert after["test"]["dice"] == pytest.approx(before["test"]["dice"], abs=1e-6)
    assert [r["name"] for r in after["test"]["per_image"]] == [r["name"] for r in before["test"]["per_image"]]
    assert after["evaluated_checkpoint"].endswith("best.ckpt")
    # the validation images, under a name that says so
    result = _run(["evaluate.py", f"run_dir={run_dir}", "split=val", f"paths.log_dir={tmp_path / 'logs'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    validation = json.loads((run_dir / "evaluations" / "val.json").read_text())
    assert [r["name"] for r in validation["test"]["per_image"]] == before["protocol"]["val_images"]


# -- targets: contour end to end, the model x target sweep, old binary checkpoints -------------------
@pytest.mark.slow
def test_contour_fast_dev_run_logs_instance_metrics_and_per_image_records(compose_train):
    from nucseg.pipeline import build_module

    cfg = compose_train(["target=contour", "debug=fast", "module.val_instance_metrics=true"])
    metrics = train(cfg)
    assert {"aji", "aji_per_image", "aji_plus", "pq", "dq", "sq", "pq_per_image"} <= set(metrics["test"])
    assert 0.0 <= metrics["test"]["aji"] <= 1.0
    assert metrics["config"]["target"]["name"] == "contour"
    assert build_module(cfg).net.head.out_channels == 3


@pytest.mark.slow
def test_the_model_by_target_sweep_runs(tmp_path):
    overrides = [o for o in TINY_OVERRIDES if "widths" not in o] + ["+widths={unet: 4, resunet: 4}"]
    result = _run(
        ["train.py", "-m", "model=unet,resunet,linknet34", "target=binary,contour", "debug=fast",
         f"paths.log_dir={tmp_path / 'logs'}", *overrides],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(path.read_text()) for path in sorted((tmp_path / "logs" / "multiruns").glob("*/*/metrics.json"))]
    assert [(run["model"], run["config"]["target"]["name"]) for run in runs] == [
        (model, target) for model in MODELS for target in ("binary", "contour")
    ]
    assert all("aji" in run["test"] for run in runs)


def _binary_run_config_of_today() -> dict:
    """A run config as train.py wrote it before targets existed: no target keys anywhere."""
    return {
        "model": {"name": "unet", "net": {"_target_": "nucseg.models.build_model", "name": "unet", "width": 4, "depth": 2}},
        "loss": {"_target_": "nucseg.losses.CompositeLoss", "_convert_": "all", "terms": {"bce": {"weight": 1.0}}},
        "module": {"_target_": "nucseg.module.SegmentationModule", "model_name": "unet", "threshold": 0.5},
    }


def test_a_checkpoint_without_target_keys_loads_as_binary(tmp_path):
    from nucseg.losses import CompositeLoss
    from nucseg.models import build_model
    from nucseg.module import SegmentationModule

    module = SegmentationModule(build_model("unet", width=4, depth=2), CompositeLoss({"bce": {}}))
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "nucseg": {"run_config": _binary_run_config_of_today()}}, path)
    model = load_model(path)
    assert model.stain_normalizer is None and model.postprocess.target == "binary"
    loaded = model.module
    assert loaded.target == "binary" and loaded.postprocess_params["threshold"] == 0.5
    images = torch.rand(1, 3, 32, 32)
    logits = loaded.predict_logits(images)
    probabilities = loaded.probabilities(logits)
    assert torch.equal(probabilities, torch.sigmoid(logits))
    assert torch.equal(loaded.foreground_probability(probabilities), probabilities)
    assert loaded.instances(probabilities[0]).shape == (32, 32)


def test_probabilities_and_foreground_of_each_target():
    from nucseg.module import target_foreground_probability, target_probabilities

    logits = torch.randn(2, 3, 4, 4)
    contour = target_probabilities(logits, "contour")
    assert torch.allclose(contour.sum(1), torch.ones(2, 4, 4))
    assert torch.allclose(target_foreground_probability(contour, "contour"), 1 - contour[:, :1])
    distance = target_probabilities(logits[:, :2] * 3, "distance")
    assert torch.allclose(distance[:, :1], torch.sigmoid(logits[:, :1] * 3))
    assert distance[:, 1].min() >= 0 and distance[:, 1].max() <= 1
    assert torch.equal(target_foreground_probability(distance, "distance"), distance[:, :1])
    hv = target_probabilities(logits * 3, "hv")
    assert hv[:, 1:].min() >= -1 and hv[:, 1:].max() <= 1 and hv[:, 1:].min() < 0


def test_test_records_hold_pixel_counts_and_instance_metrics_per_image(compose_train):
    import lightning as L

    from nucseg.pipeline import build_module

    cfg = compose_train(["target=contour"])
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    results = trainer.test(module, datamodule=datamodule, weights_only=False)[0]
    assert len(module.test_records) == 2
    record = module.test_records[0]
    assert record["name"] == datamodule.test_images[0].name
    assert record["tp"] + record["fp"] + record["fn"] + record["tn"] == 96 * 96
    assert {"dice", "iou", "accuracy", "aji", "aji_plus", "pq", "dq", "sq"} <= set(record)
    assert results["test/aji_per_image"] == pytest.approx(sum(r["aji"] for r in module.test_records) / 2, abs=1e-6)
