"""The results schema (:mod:`nucseg.schema`) matches what training and evaluation write."""

from __future__ import annotations

import json
import math

import pytest
from helpers import CONFIG_DIR
from hydra import compose, initialize_config_dir

from nucseg import schema


def test_status_record_and_file(tmp_path) -> None:
    schema.write_status(tmp_path, schema.FAILED, "ValueError: boom")
    written = json.loads((tmp_path / schema.STATUS_FILE).read_text())
    assert list(written) == list(schema.RunStatus.__annotations__)
    assert written["status"] == "failed" and written["error"] == "ValueError: boom"
    assert written["updated"].endswith("+00:00")


def test_test_block_and_hparams() -> None:
    merged = schema.collect_test_results([{"test/dice": 0.5, "test/num_images": 2.0}, {"test/loss": math.nan}])
    assert merged == {"dice": 0.5, "num_images": 2.0, "loss": None}
    block = schema.make_test_block(merged, [{"name": "a"}])
    assert block == {"dice": 0.5, "num_images": 2, "loss": None, "per_image": [{"name": "a"}]}
    assert isinstance(block["num_images"], int)
    assert schema.hparams_metrics(merged) == {"test/dice": 0.5, "test/num_images": 2.0}
    config = {"model": {"name": "unet", "_target_": "x", "widths": [1, 2]}, "seed": 3, "paths": {"a": "b"}, "optimizer": {"lr": None}}
    assert schema.hparams(config) == {"model/name": "unet", "seed": 3}


def test_optimized_metric_is_the_best_validation_value() -> None:
    assert schema.optimized_metric({"validation": {"metric": "val/dice", "best": 0.7}, "test": {"dice": 0.9}}) == 0.7
    assert math.isnan(schema.optimized_metric({"validation": {"metric": "val/dice", "best": None}}))


def test_schema_key_lists_name_typed_keys() -> None:
    typed = set(schema.RunMetrics.__annotations__)
    assert set(schema.TRAINING_KEYS) <= typed and set(schema.EVALUATION_KEYS) <= typed
    assert set(schema.TRAINING_KEYS) | set(schema.EVALUATION_KEYS) == typed


@pytest.mark.slow
def test_a_tiny_run_and_its_evaluation_write_the_schema(compose_train, tmp_path) -> None:
    """One tiny training and one evaluation: metrics.json, status.json and the CSV curves."""
    from nucseg.compare.curves import read_epoch_curves
    from nucseg.evaluation import evaluate
    from nucseg.pipeline import train

    metrics = train(compose_train(["model=unet", "tune_postprocess=false"]))
    run_dir = tmp_path / "run"
    written = json.loads((run_dir / schema.METRICS_FILE).read_text())
    assert tuple(written) == schema.TRAINING_KEYS
    assert written["status"] == schema.FINISHED and written == json.loads(json.dumps(metrics))
    assert list(written["validation"]) == list(schema.ValidationSummary.__annotations__)
    assert {"loss", "dice", "iou", "accuracy", "num_images", "per_image"} <= set(written["test"])
    assert set(schema.PIXEL_TEST_KEYS) - {"precision", "recall"} <= set(written["test"])
    assert set(schema.RUN_COST_KEYS) <= set(written)
    status = json.loads((run_dir / schema.STATUS_FILE).read_text())
    assert tuple(status) == tuple(schema.RunStatus.__annotations__) and status["status"] == schema.FINISHED

    # the CSV logger beside TensorBoard gives the curves of the comparison
    assert list((run_dir / "csv").rglob("metrics.csv")) and list((run_dir / "tensorboard").glob("events.*"))
    curves = read_epoch_curves(run_dir)
    assert set(curves["val/dice"]) == {0} and set(curves["train/loss"]) == {0}
    # example crops: the checkpoint through load_model, test images with the checkpoint's data config
    from nucseg.compare.collect import load_run
    from nucseg.compare.examples import crops_from_runs

    crops = crops_from_runs({"unet": load_run(run_dir)}, crop_size=32, num_images=1)
    assert len(crops) == 1 and crops[0].predictions["unet"].shape == (32, 32)

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        overrides = [f"run_dir={run_dir}", "trainer.accelerator=cpu", f"paths.output_dir={tmp_path / 'eval'}"]
        eval_cfg = compose("eval", overrides=overrides)
    evaluated = evaluate(eval_cfg)
    assert tuple(evaluated) == schema.EVALUATION_KEYS
    assert tuple(json.loads((run_dir / "evaluations" / "test.json").read_text())) == schema.EVALUATION_KEYS
