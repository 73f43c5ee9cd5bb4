"""Hydra launchers for sweeps: the SLURM config becomes the sbatch script we expect; the local
parallel launcher composes. Nothing is submitted and no cluster is needed."""

from __future__ import annotations

import pytest
from helpers import CONFIG_DIR
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig


def _compose_with_hydra(overrides: list[str], tmp_path) -> DictConfig:
    paths = [f"paths.root_dir={tmp_path}", f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.job.name=train"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=paths + overrides, return_hydra_config=True)


def _sbatch_script(cfg: DictConfig, monkeypatch) -> str:
    """Run the real launcher on two jobs with submission replaced by capturing the executor."""
    submitit = pytest.importorskip("submitit")
    captured = {}

    def fake_map_array(executor, fn, *args):
        captured["executor"] = executor
        captured["num_jobs"] = len(args[0])
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun is on PATH"
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda _: None, config=cfg)
    launcher.launch([["seed=1"], ["seed=2"]], initial_job_idx=0)
    assert captured["num_jobs"] == 2
    slurm = captured["executor"]._executor
    assert slurm.parameters["array_parallelism"] == cfg.hydra.launcher.array_parallelism
    return slurm._make_submission_file_text("python -u -m submitit.core._submit x", "uid")


def test_slurm_launcher_writes_one_task_per_gpu(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose_with_hydra(
        [
            "hydra/launcher=slurm",
            "trainer=ddp",
            "hydra.launcher.partition=gpu-a100",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.timeout_min=90",
            "hydra.launcher.mem_gb=120",
            "hydra.launcher.setup=[source .venv/bin/activate]",
        ],
        tmp_path,
    )
    assert cfg.hydra.launcher.tasks_per_node == 4
    script = _sbatch_script(cfg, monkeypatch)
    lines = set(script.splitlines())
    for expected in (
        "#SBATCH --partition=gpu-a100",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --nodes=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=120GB",
        "#SBATCH --time=90",
        "#SBATCH --job-name=train",
        "source .venv/bin/activate",
    ):
        assert expected in lines, f"{expected!r} not in the sbatch script:\n{script}"
    assert "srun" in script


def test_slurm_launcher_without_partition_leaves_it_to_the_cluster(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.delenv("NUCSEG_SLURM_PARTITION", raising=False)
    script = _sbatch_script(_compose_with_hydra(["hydra/launcher=slurm"], tmp_path), monkeypatch)
    assert "--partition" not in script and "#SBATCH --gpus-per-node=1" in script


def test_local_parallel_launcher_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    launcher = _compose_with_hydra(["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=3"], tmp_path).hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == 3
    assert type(instantiate(launcher)).__name__ == "JoblibLauncher"
