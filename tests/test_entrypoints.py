"""Entry points: input problems are one line and exit status 2; bugs keep their traceback (1);
the data are checked, every split included, before the first training step; a NaN loss stops
the run naming its step."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import CONFIG_DIR, REPO_ROOT, make_monuseg_root
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from nucseg.callbacks import NonFiniteLossError, NonFiniteLossGuard
from nucseg.checkpoint import CheckpointError
from nucseg.cli import find_user_error, run_task, user_error_message
from nucseg.data.check import DataCheckError
from nucseg.data.monuseg import MonusegError
from nucseg.evaluation import data_overrides, evaluation_name
from nucseg.pipeline import train


def _python(args: list[str], tmp_path: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("HYDRA_FULL_ERROR", "MONUSEG_ROOT")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, *args, f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env,
    )


def test_user_errors_are_found_behind_hydra_wrappers():
    cause = MonusegError("/x: MoNuSeg root not found")
    try:
        try:
            raise cause
        except MonusegError as error:
            raise InstantiationException("Error in call to target 'MonusegDataModule'") from error
    except InstantiationException as wrapped:
        assert find_user_error(wrapped) is cause
    assert find_user_error(RuntimeError("a bug")) is None
    bad_value = InstantiationException("Error in call to target 'EMA': ValueError('decay must be in (0, 1)')")
    bad_value.__cause__ = ValueError("decay must be in (0, 1)")
    assert find_user_error(bad_value) is bad_value
    assert user_error_message(MonusegError("a\nb")) == "error: a\nerror: b"


def test_run_task_exits_2_on_user_errors_and_reraises_bugs(capsys):
    def missing_checkpoint() -> float:
        raise CheckpointError("/runs/x: no such checkpoint file or run directory")

    with pytest.raises(SystemExit) as exited:
        run_task(missing_checkpoint)
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == "error: /runs/x: no such checkpoint file or run directory"
    with pytest.raises(ZeroDivisionError):
        run_task(lambda: 1 / 0)
    assert run_task(lambda: 0.5) == 0.5


def test_missing_test_split_fails_before_any_training_step(compose_train, tmp_path):
    root = make_monuseg_root(tmp_path / "monuseg", with_test=False)
    cfg = compose_train(
        ["data=monuseg", f"data.root={root}", "data.stain_reference=null", "data.num_val_images=1", "data.patch_size=32",
         "data.patches_per_image=1", "data.batch_size=2", "++widths.unet=4", "trainer.accelerator=cpu", "trainer.max_epochs=1"],
        tiny=False,
    )
    with pytest.raises(DataCheckError, match="test split folder not found"):
        train(cfg)
    run_dir = tmp_path / "run"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "tensorboard").exists()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "test split folder not found" in status["error"]


@pytest.mark.slow
def test_data_check_result_and_provenance_are_recorded(compose_train, tmp_path):
    root = make_monuseg_root(tmp_path / "monuseg", num_train=3)
    cfg = compose_train(
        ["data=monuseg", f"data.root={root}", "data.stain_reference=null", "data.num_val_images=1", "data.patch_size=32",
         "data.patches_per_image=1", "data.batch_size=2", "++widths.unet=4", "trainer.accelerator=cpu",
         "trainer.max_epochs=1", "module.inference.tile_size=32", "module.inference.overlap=8",
         "module.num_logged_images=0", "trainer.enable_progress_bar=false"],
        tiny=False,
    )
    metrics = train(cfg)
    assert metrics["data_check"]["ok"] and metrics["data_check"]["images"] == {"train": 3, "test": 1}
    provenance = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert set(provenance["data_files_sha256"]) >= {"train/images/good0.tif", "test/annotations/testgood.xml"}
    assert provenance["versions"]["torch"] and provenance["versions"]["python"]
    assert provenance["config"]["data"]["root"] == str(root)
    assert "commit" in provenance["git"]


def test_nan_loss_stops_the_run_naming_the_step_and_the_last_finite_loss():
    guard = NonFiniteLossGuard()
    trainer = SimpleNamespace(global_step=7, current_epoch=1)
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.25)}, None, 2)
    trainer.global_step = 8
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 8 \(epoch 1, batch 3\); the last finite loss was 0.25 at step 7"):
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 3)
    with pytest.raises(NonFiniteLossError, match="loss is inf at step 0.*no step had a finite loss"):
        NonFiniteLossGuard().on_train_batch_end(SimpleNamespace(global_step=0, current_epoch=0), None, torch.tensor(float("inf")), None, 0)


@pytest.mark.slow
def test_train_py_exit_status_for_input_problems_bugs_and_hydra_errors(tmp_path):
    missing_root = _python(["train.py", "data=monuseg", f"data.root={tmp_path / 'nowhere'}"], tmp_path)
    assert missing_root.returncode == 2, missing_root.stderr[-2000:]
    assert "Traceback" not in missing_root.stderr
    assert f"error: {tmp_path / 'nowhere'}: MoNuSeg root not found" in missing_root.stderr

    bad_value = _python(["train.py", "callbacks=ema", "callbacks.ema.decay=2"], tmp_path)
    assert bad_value.returncode == 2 and "Traceback" not in bad_value.stderr
    assert "decay must be in (0, 1), got 2" in bad_value.stderr

    (tmp_path / "broken_callback.py").write_text(
        "import lightning as L\n\nclass Broken(L.Callback):\n"
        "    def on_train_start(self, trainer, pl_module):\n        raise RuntimeError('a bug')\n"
    )
    bug = _python(["train.py", "+callbacks.broken._target_=broken_callback.Broken"], tmp_path, pythonpath=tmp_path)
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "RuntimeError: a bug" in bug.stderr

    hydra_error = _python(["train.py", "model=unte"], tmp_path)
    assert hydra_error.returncode == 1 and "Could not find 'model/unte'" in hydra_error.stderr


@pytest.mark.slow
def test_evaluate_py_and_a_multirun_of_bad_roots_exit_2(tmp_path):
    missing = _python(["evaluate.py", f"run_dir={tmp_path / 'no_run'}"], tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"error: {tmp_path / 'no_run'}: no such checkpoint file or run directory" in missing.stderr
    nothing = _python(["evaluate.py"], tmp_path)
    assert nothing.returncode == 2 and "needs run_dir=" in nothing.stderr

    sweep = _python(["train.py", "-m", "data=monuseg", f"data.root={tmp_path / 'a'},{tmp_path / 'b'}"], tmp_path)
    assert sweep.returncode == 2 and "Traceback" not in sweep.stderr
    assert f"{tmp_path / 'a'}: MoNuSeg root not found" in sweep.stderr
    assert f"{tmp_path / 'b'}: MoNuSeg root not found" in sweep.stderr, "the other jobs still run"
    assert "2 run(s) of the sweep stopped on input problems" in sweep.stderr


def _evaluate_script():
    """evaluate.py as a module (its ``__main__`` block does not run)."""
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO_ROOT / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_py_takes_data_settings_as_train_py_does(tmp_path):
    script = _evaluate_script()
    argv = [str(tmp_path), "data.root=/moved/monuseg", "data.num_workers=2", "split=val", "overrides=[]"]
    assert script.data_settings_as_in_train(script.positional_run_dir(argv)) == [
        f"run_dir={tmp_path}", "++data.root=/moved/monuseg", "++data.num_workers=2", "split=val", "overrides=[]",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"run_dir={tmp_path}", "++data.root=/moved/monuseg", "++data.num_workers=2"])
        assert compose("eval").data.root is None
    assert data_overrides(cfg.data) == ["data.root=/moved/monuseg", "data.num_workers=2"]
    assert data_overrides(OmegaConf.create({"root": None})) == [], "root: null keeps the stored root"
    assert data_overrides({"splits": {"train": ["a"]}, "mpp": 0.5, "stain_reference": None}) == [
        'data.splits.train=["a"]', "data.mpp=0.5", "data.stain_reference=null",
    ]


@pytest.mark.slow
def test_evaluate_py_reads_a_moved_data_set_given_by_data_root(compose_train, tmp_path):
    root = make_monuseg_root(tmp_path / "monuseg", num_train=3)
    cfg = compose_train(
        ["data=monuseg", f"data.root={root}", "data.stain_reference=null", "data.num_val_images=1", "data.patch_size=32",
         "data.patches_per_image=1", "data.batch_size=2", "++widths.unet=4", "trainer.accelerator=cpu",
         "trainer.max_epochs=1", "module.inference.tile_size=32", "module.inference.overlap=8",
         "module.num_logged_images=0", "trainer.enable_progress_bar=false", "tune_postprocess=false"],
        tiny=False,
    )
    train(cfg)
    run_dir = tmp_path / "run"
    moved = root.rename(tmp_path / "moved")

    missing = _python(["evaluate.py", str(run_dir), "trainer.accelerator=cpu"], tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"error: {root}: MoNuSeg root not found: set data.root=/path/to/monuseg" in missing.stderr

    found = _python(["evaluate.py", str(run_dir), f"data.root={moved}", "trainer.accelerator=cpu"], tmp_path)
    assert found.returncode == 0, found.stderr[-3000:]
    (path,) = (run_dir / "evaluations").glob("*.json")
    assert path.name == f"{evaluation_name('test', [f'data.root={moved}'])}.json"
    record = json.loads(path.read_text())
    assert record["evaluation_overrides"] == [f"data.root={moved}"]
    assert record["config"]["data"]["root"] == str(moved) and record["test"]["num_images"] == 1
