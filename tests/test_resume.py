"""Resume: a run killed with SIGKILL after its first checkpoint ends with the metrics of an
uninterrupted run; a relaunched sweep skips finished runs; checkpoints are written atomically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, TINY_OVERRIDES

from nucseg.checkpoint import CheckpointError
from nucseg.pipeline import train
from nucseg.resume import AtomicCheckpointIO, RandomStateCheckpoint, config_differences, resume_checkpoint

# Stalls the first launch after its first checkpoint (epoch 0), so the test can kill it there.
STALL_CALLBACK = '''
import time
from pathlib import Path
import lightning as L

class StallAfterFirstCheckpoint(L.Callback):
    def __init__(self, marker):
        self.marker = Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            self.marker.write_text(str(trainer.global_step))
            time.sleep(600)
'''
EPOCHS = ["trainer.max_epochs=3"]


def _command(run_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "train.py", *TINY_OVERRIDES, *EPOCHS, f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}", *extra,
    ]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_a_run_killed_after_its_first_checkpoint_resumes_to_the_same_metrics(tmp_path):
    (tmp_path / "stall_callback.py").write_text(STALL_CALLBACK)
    marker = tmp_path / "stalled"

    _run(_command(tmp_path / "uninterrupted", tmp_path), tmp_path)
    expected = json.loads((tmp_path / "uninterrupted" / "metrics.json").read_text())

    killed = tmp_path / "killed"
    stall = ["+callbacks.stall._target_=stall_callback.StallAfterFirstCheckpoint", f"+callbacks.stall.marker={marker}"]
    process = subprocess.Popen(
        _command(killed, tmp_path, *stall), cwd=REPO_ROOT, env=_env(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert marker.exists(), f"the run did not reach epoch 1: {process.stderr.read()[-3000:] if process.poll() is not None else ''}"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert (killed / "checkpoints" / "last.ckpt").is_file()
    assert not (killed / "metrics.json").exists()
    assert json.loads((killed / "status.json").read_text())["status"] == "running"
    assert not list((killed / "checkpoints").glob(".*tmp*")), "no half-written checkpoint is left behind"

    result = _run(_command(killed, tmp_path, "ckpt_path=last"), tmp_path)
    assert "resuming from" in result.stdout + result.stderr
    resumed = json.loads((killed / "metrics.json").read_text())
    assert resumed["epochs"] == expected["epochs"] == 3
    assert resumed["test"] == expected["test"], "resumed and uninterrupted runs must end identical"
    assert json.loads((killed / "status.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_relaunched_sweep_skips_finished_runs_and_trains_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in TINY_OVERRIDES if "widths" not in o] + ["+widths={unet: 4, resunet: 4}"]
    common = [sys.executable, "train.py", "-m", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides]
    _run([*common, "model=unet"], tmp_path)  # the "crash": only the first run of the sweep finished
    (first,) = sweep.glob("0_*/metrics.json")
    before = first.read_bytes()

    result = _run([*common, "model=unet,resunet", "resume=true"], tmp_path)
    assert "not trained again" in result.stdout + result.stderr
    assert first.read_bytes() == before, "a finished run is left as it is"
    (second,) = sweep.glob("1_*/metrics.json")
    assert json.loads(second.read_text())["model"] == "resunet"


def test_resume_true_returns_a_finished_run_without_training(compose_train, tmp_path):
    cfg = compose_train(["resume=true"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from omegaconf import OmegaConf

    finished = {"status": "finished", "test": {"dice": 0.5}, "config": OmegaConf.to_container(cfg, resolve=True)}
    (run_dir / "metrics.json").write_text(json.dumps(finished))
    assert train(cfg) == finished
    assert not (run_dir / "checkpoints").exists()

    other = dict(finished, config={**finished["config"], "seed": 7})
    (run_dir / "metrics.json").write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match="seed: 7 -> 42"):
        train(cfg)


def test_resume_checkpoint_choices(tmp_path):
    config = {"seed": 1, "model": {"name": "unet"}, "data": {"root": "/a"}}
    assert resume_checkpoint(None, False, tmp_path, config) is None
    assert resume_checkpoint("last", False, tmp_path, config) is None  # killed before its first checkpoint
    assert resume_checkpoint(None, True, tmp_path, config) is None
    with pytest.raises(CheckpointError, match="absent.ckpt: checkpoint not found"):
        resume_checkpoint(str(tmp_path / "absent.ckpt"), False, tmp_path, config)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    torch.save({"state_dict": {}, "nucseg": {"run_config": {**config, "data": {"root": "/b"}}}, "epoch": 1}, last)
    assert resume_checkpoint("last", False, tmp_path, config) == str(last)  # the data may have moved
    with pytest.raises(CheckpointError, match="model.name: 'unet' -> 'resunet'"):
        resume_checkpoint("last", True, tmp_path, {**config, "model": {"name": "resunet"}})


def test_config_differences_ignore_where_data_lives():
    stored = {"seed": 1, "data": {"root": "/a", "num_workers": 0, "patch_size": 64}, "trainer": {"devices": 1}}
    current = {"seed": 1, "data": {"root": "/b", "num_workers": 4, "patch_size": 64}, "trainer": {"devices": 2}}
    assert config_differences(stored, current) == []
    assert config_differences(stored, {**current, "seed": 2}) == ["seed: 1 -> 2"]


def test_atomic_checkpoint_io_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, path)
    assert torch.load(path)["epoch"] == 1

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError, match="killed while writing"):
        io.save_checkpoint({"epoch": 2, "bad": Unpicklable()}, path)
    assert torch.load(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_random_state_round_trip_through_a_checkpoint_file(tmp_path):
    import random

    import numpy as np

    callback = RandomStateCheckpoint()
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    torch.save({"rng": callback.state_dict()}, tmp_path / "state.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    callback.load_state_dict(torch.load(tmp_path / "state.ckpt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
