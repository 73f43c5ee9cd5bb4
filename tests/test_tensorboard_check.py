"""The TensorBoard check: a real server on loopback reads fake logs of a three-model sweep."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

# A script, not part of the package: loaded from its file.
_spec = importlib.util.spec_from_file_location("tensorboard_check", REPO_ROOT / "scripts" / "tensorboard_check.py")
tensorboard_check = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tensorboard_check
_spec.loader.exec_module(tensorboard_check)
TensorBoardReport = tensorboard_check.TensorBoardReport
TensorBoardServer = tensorboard_check.TensorBoardServer
main = tensorboard_check.main
wait_for_report = tensorboard_check.wait_for_report

MODELS = ("unet", "resunet", "linknet34")
TAGS = ("train/loss", "val/loss", "val/dice", "val/iou", "val/accuracy")


def _write_sweep(root: Path) -> Path:
    """Three runs logged as the project's module does: Lightning's TensorBoardLogger, version ''."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from nucseg.callbacks import TensorBoardLayout

    for index, model in enumerate(MODELS):
        logger = TensorBoardLogger(
            save_dir=str(root / f"{index}_model={model}"), name="tensorboard", version="", default_hp_metric=False
        )
        for epoch in range(3):
            metrics = {tag: 0.5 + 0.1 * epoch + 0.01 * index for tag in TAGS}
            logger.log_metrics({**metrics, "epoch": epoch}, step=10 * (epoch + 1) - 1)
        writer = logger.experiment
        writer.add_custom_scalars(TensorBoardLayout().layout)
        test = {"test/dice": 0.7 + 0.01 * index, "test/iou": 0.6, "test/accuracy": 0.9, "test/loss": 0.3}
        logger.log_hyperparams({"model": {"name": model}, "seed": 0, "optimizer": {"lr": 1e-3}}, metrics=test)
        logger.finalize("success")
        metrics = {"model": model, "status": "finished", "test": {key.split("/")[1]: value for key, value in test.items()}}
        (root / f"{index}_model={model}" / "metrics.json").write_text(json.dumps(metrics))
    return root


def _refuses(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((host, int(port))) != 0


def test_report_problems_name_what_is_missing() -> None:
    report = TensorBoardReport(
        scalar_tags={"a": list(TAGS), "b": ["train/loss"]},
        hparams_sessions={"a": {"test/dice": 0.7}},
    )
    assert report.runs_with_tags(TAGS) == ["a"]
    problems = report.problems(expect_runs=2)
    assert len(problems) == 2
    assert problems[0].startswith("1 of 2 expected runs have scalar tags")
    assert problems[1].startswith("1 of 2 expected HParams sessions report ['test/dice']")
    assert report.problems(expect_runs=1) == []


def test_server_refuses_missing_logdir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such log directory"):
        TensorBoardServer(tmp_path / "absent").start()


@pytest.mark.slow
def test_tensorboard_serves_all_models_and_hparams(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logdir = _write_sweep(tmp_path / "sweep")
    with TensorBoardServer(logdir) as server:
        report = wait_for_report(server.url, expect_runs=3, expect_tags=TAGS, timeout=60)
        process = server.process
    assert process is not None and process.poll() is not None, "the server outlived the check"
    assert _refuses(report.url)

    assert report.problems(expect_runs=3, expect_tags=TAGS) == []
    assert sorted(report.runs) == [f"{i}_model={m}/tensorboard" for i, m in enumerate(MODELS)]
    for run in report.runs:
        assert set(TAGS) <= set(report.scalar_tags[run])
    assert {"model/name", "optimizer/lr", "seed"} <= set(report.hparams)
    assert set(report.hparams_metrics) == {"test/dice", "test/iou", "test/accuracy", "test/loss"}
    assert report.hparams_sessions["1_model=resunet/tensorboard"]["test/dice"] == pytest.approx(0.71)
    assert report.custom_scalar_charts["Dice"] == ["train/dice", "val/dice", "train and val dice"]
    assert {"scalars", "custom_scalars"} <= set(report.active_plugins)

    # The command line, end to end: by default every finished run (metrics.json) must show up;
    # then an expectation that cannot hold gives exit 1.
    assert main([str(logdir)]) == 0
    assert "hparams metrics: test/accuracy=0.9000" in capsys.readouterr().out
    assert main([str(logdir), "--expect-runs", "4", "--timeout", "3"]) == 1
    assert "3 of 4 expected runs" in capsys.readouterr().err
