"""Hyperparameter search: the Optuna config composes, and a two-trial search on tiny synthetic data
writes its best parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import CONFIG_DIR, REPO_ROOT, TINY_OVERRIDES
from hydra import compose, initialize_config_dir

from nucseg.sweep import best_validation_score, check_multirun_strategy

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

# Small searchable values for tiny images (the config's patch sizes are for MoNuSeg).
TINY_SPACE = 'hydra.sweeper.params={optimizer.lr: "tag(log, interval(1e-3, 1e-2))", data.patch_size: "choice(32, 48)"}'
SEARCHED = {"optimizer.lr", "loss.terms.focal.weight", "loss.terms.dice.weight", "data.patch_size"}


def test_optuna_search_composes_and_maximises_a_validation_metric(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna", f"paths.root_dir={tmp_path}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimized_metric.startswith("val/")
    assert set(sweeper.params) == SEARCHED
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna", TINY_SPACE], return_hydra_config=True)
    assert cfg.hydra.sweeper.params["data.patch_size"] == "choice(32, 48)"
    assert set(cfg.hydra.sweeper.params) == SEARCHED


def test_a_local_multirun_refuses_re_launching_ddp(compose_train):
    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    ddp = compose_train(["trainer=ddp_cpu"]).trainer
    with pytest.raises(ValueError, match="use trainer=ddp_spawn for a local sweep"):
        check_multirun_strategy(ddp, multirun=True, launcher_target=basic)
    check_multirun_strategy(ddp, multirun=False, launcher_target=basic)
    check_multirun_strategy(compose_train(["trainer=ddp_spawn"]).trainer, multirun=True, launcher_target=basic)
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    check_multirun_strategy(ddp, multirun=True, launcher_target=slurm)


def test_best_validation_score_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no last.ckpt or best.ckpt"):
        best_validation_score(tmp_path)


@pytest.mark.slow
def test_two_trial_search_writes_its_best_parameters(tmp_path):
    overrides = [o for o in TINY_OVERRIDES if "widths" not in o and "patch_size" not in o] + [
        "+widths={unet: 4, resunet: 4}",
        "data.source.image_size=64",
        "module.inference.tile_size=64",
        "data.patches_per_image=4",
        "trainer.max_epochs=2",
    ]
    command = [sys.executable, "train.py", "-m", "hparams_search=optuna", "data=synthetic", "hydra.sweeper.n_trials=2",
               "hydra.sweeper.sampler.n_startup_trials=2", TINY_SPACE, f"hydra.sweep.dir={tmp_path / 'sweep'}",
               *overrides]
    env = {**os.environ, "NUCSEG_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna"
    assert set(best["best_params"]) == SEARCHED  # a params override merges into the config's space
    assert best["best_params"]["data.patch_size"] in (32, 48)
    assert 1e-3 <= best["best_params"]["optimizer.lr"] <= 1e-2

    trials = sorted(path.parent for path in (tmp_path / "sweep").glob("*/metrics.json"))
    assert len(trials) == 2
    validation = [best_validation_score(trial, "val/dice") for trial in trials]
    assert all(0.0 <= value <= 1.0 for value in validation)
    recorded = [json.loads((trial / "metrics.json").read_text())["validation"] for trial in trials]
    assert [entry["best"] for entry in recorded] == pytest.approx(validation)
    # The sweeper keeps the largest value train.py returned: validation Dice (optimized_metric), never a test metric.
    assert best["best_value"] == pytest.approx(max(validation))
