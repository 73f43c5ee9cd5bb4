"""Data parallelism: whole-image evaluation split without repeats, and DDP test metrics that
equal a single-process evaluation of the same checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO_ROOT, TINY_OVERRIDES

from nucseg.data.samplers import evaluation_sampler

# Scores that must not depend on how the images were split over processes. The loss is left
# out: Lightning averages a logged loss per process, and does not reduce it across processes.
SPLIT_INDEPENDENT = ("dice", "iou", "accuracy", "precision", "recall", "dice_per_image", "iou_per_image",
                     "accuracy_per_image", "num_images")


@pytest.mark.parametrize("num_images, world_size", [(5, 2), (4, 2), (7, 3), (3, 3)])
def test_evaluation_sampler_covers_each_image_once(num_images, world_size):
    dataset = list(range(num_images))
    seen = [i for rank in range(world_size) for i in evaluation_sampler(dataset, world_size, rank)]
    assert sorted(seen) == dataset
    sizes = [len(evaluation_sampler(dataset, world_size, rank)) for rank in range(world_size)]
    assert max(sizes) - min(sizes) <= 1


def test_evaluation_sampler_single_process_and_errors():
    assert evaluation_sampler([1, 2, 3], world_size=1, rank=0) is None
    with pytest.raises(ValueError, match="2 evaluation images cannot be split over 3 processes"):
        evaluation_sampler([1, 2], world_size=3, rank=0)
    with pytest.raises(ValueError, match="rank 3 is not in"):
        evaluation_sampler([1, 2, 3, 4], world_size=2, rank=3)


@pytest.mark.parametrize("name", ["ddp", "ddp_spawn", "ddp_cpu"])
def test_ddp_trainer_configs_compose(compose_train, name):
    trainer = compose_train([f"trainer={name}"]).trainer
    expected = {"ddp": "ddp", "ddp_spawn": "ddp_spawn", "ddp_cpu": "ddp"}[name]
    assert trainer.strategy == expected and trainer.num_nodes == 1


def test_eval_loaders_of_a_two_rank_trainer_split_the_images(compose_train):
    """The data module asks its trainer for the world size and hands the evaluation loaders our sampler."""
    from types import SimpleNamespace

    from hydra.utils import instantiate

    datamodule = instantiate(compose_train(["data.source.num_test_images=5"]).data)
    datamodule.setup("test")
    names = []
    for rank in range(2):
        datamodule.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        names += [name for batch in datamodule.test_dataloader() for name in batch["name"]]
    assert sorted(names) == sorted(image.name for image in datamodule.test_images)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_tests_like_one_process(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        *TINY_OVERRIDES,
        "data.source.num_test_images=5",  # not a multiple of 2: one rank scores 3 images, the other 2
        "data.source.num_train_images=5",
        "data.num_val_images=3",
        "data.source.image_size=64",
        "data.patch_size=32",
        "module.inference.tile_size=32",
        "module.inference.overlap=8",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.sync_batchnorm=false",  # SyncBatchNorm has no CPU kernel
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stdout + result.stderr, "the run did not start a second process"
    distributed = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert distributed["num_images"] == 5, "each test image scored exactly once"
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()

    single_dir = tmp_path / "single"
    result = subprocess.run(
        [sys.executable, "evaluate.py", f"run_dir={run_dir}", f"output_dir={single_dir}", "trainer.accelerator=cpu",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    single = json.loads((single_dir / "metrics.json").read_text())["test"]
    for key in SPLIT_INDEPENDENT:
        assert distributed[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_ddp_spawn_inside_a_multirun_writes_one_folder_per_job(tmp_path):
    """The local multirun path: spawned processes do not re-run the sweep."""
    sweep = tmp_path / "sweep"
    overrides = [
        *[o for o in TINY_OVERRIDES if "widths" not in o],
        "+widths={unet: 4}",
        "data.source.num_test_images=3",
        "data.source.num_train_images=5",
        "data.num_val_images=2",
        "data.source.image_size=64",
        "data.patch_size=32",
        "module.inference.tile_size=32",
        "module.inference.overlap=8",
        "trainer=ddp_spawn",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.sync_batchnorm=false",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUCSEG_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "seed=1", *overrides], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(path.name for path in sweep.iterdir() if path.is_dir() and not path.name.startswith("."))
    assert len(jobs) == 1 and jobs[0].startswith("0_"), jobs
    assert json.loads((sweep / jobs[0] / "metrics.json").read_text())["test"]["num_images"] == 3
    assert len(list(tmp_path.glob("**/multirun.yaml"))) == 1, "one sweep, not one per process"


def test_unshare_metric_states_gives_each_state_its_own_storage():
    from torchmetrics import MeanMetric, SumMetric

    from nucseg.distributed import unshare_metric_states

    module = torch.nn.ModuleDict({"sum": SumMetric(), "mean": MeanMetric()})
    shared = [module["sum"].sum_value, module["mean"].mean_value]
    assert unshare_metric_states(module) == 3  # sum_value, mean_value, weight
    module["sum"].update(2.0)
    assert float(shared[0]) == 0.0 and float(module["sum"].compute()) == 2.0
