"""Every config option composes, objects instantiate, and a wrong option fails at once."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import CONFIG_DIR, REPO_ROOT
from hydra.utils import instantiate

from nucseg.pipeline import build_module

GROUPS = ["data", "model", "loss", "optimizer", "scheduler", "module", "callbacks", "logger", "trainer", "experiment", "debug"]


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_and_resolves(compose_train, monkeypatch, tmp_path, group, option):
    monkeypatch.setenv("MONUSEG_ROOT", str(tmp_path))
    cfg = compose_train([f"{group}={option}"], tiny=False)
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"]["name"]
    assert resolved["paths"]["output_dir"] == str(tmp_path / "run")


@pytest.mark.parametrize("model", _options("model"))
@pytest.mark.parametrize("loss", _options("loss"))
def test_models_and_losses_instantiate_into_a_module(compose_train, model, loss):
    cfg = compose_train([f"model={model}", f"loss={loss}"])
    module = build_module(cfg)
    assert module.model_name == cfg.model.name
    assert set(module.loss.terms) == set(cfg.loss.terms)


@pytest.mark.parametrize("option", _options("trainer"))
def test_trainer_options_name_a_lightning_trainer(compose_train, option):
    cfg = compose_train([f"trainer={option}"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


def test_callbacks_and_logger_instantiate(compose_train):
    cfg = compose_train()
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    assert {type(callback).__name__ for callback in callbacks} >= {"ModelCheckpoint", "TrainingSpeed"}
    assert [type(instantiate(node)).__name__ for node in cfg.logger.values()] == ["TensorBoardLogger", "CSVLogger"]


def test_model_widths_come_from_the_experiment(compose_train):
    cfg = compose_train(["experiment=demo", "model=unet"], tiny=False)
    assert cfg.model.net.width == 16
    assert compose_train(["model=unet"], tiny=False).model.net.width == 64


@pytest.mark.parametrize("data", _options("data"))
def test_augmentation_knobs_are_in_the_config_and_reach_the_object(compose_train, monkeypatch, tmp_path, data):
    # Every knob is listed, so `data.augmentation.hed_jitter_p=0.5` works without a `+`.
    monkeypatch.setenv("MONUSEG_ROOT", str(tmp_path))
    cfg = compose_train([f"data={data}", "data.augmentation.hed_jitter_p=0.5"], tiny=False)
    augmentation = instantiate(cfg.data.augmentation)
    assert augmentation.hed_jitter_p == 0.5
    assert compose_train([f"data={data}"], tiny=False).data.augmentation.hed_jitter_p == 0.0


def test_recipes_set_stain_jitter_as_documented(compose_train, monkeypatch, tmp_path):
    monkeypatch.setenv("MONUSEG_ROOT", str(tmp_path))
    assert compose_train(["experiment=monuseg"], tiny=False).data.augmentation.hed_jitter_p == 0.5
    assert compose_train(["experiment=monuseg_reference"], tiny=False).data.augmentation.hed_jitter_p == 0.0


def test_wrong_option_fails_at_once_with_the_list_of_choices(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "model=unte", f"paths.log_dir={tmp_path}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "Could not find 'model/unte'" in result.stderr
    assert "linknet34" in result.stderr and "resunet" in result.stderr
    assert not any(tmp_path.iterdir()), "no run directory may be created for a wrong option"


def test_long_override_lists_give_short_distinct_directory_names():
    from nucseg.utils.resolvers import short_dirname

    assert short_dirname("model-unet_seed-1") == "model-unet_seed-1"
    assert short_dirname("data.root-../shared/data_widths-{unet:4}") == "data.root-..-shared-data_widths--unet-4-"
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(short_dirname(long_a)) == 120 and "~" not in short_dirname(long_a)
    assert short_dirname(long_a) != short_dirname(long_b)


def test_cpu_recipe_is_a_time_budget_and_the_overrides_give_back_v3_v2_and_v1(compose_train, monkeypatch, tmp_path):
    """docs/results.md reproduces its v1–v3 rows with overrides of the budgeted config: keep them true."""
    monkeypatch.setenv("MONUSEG_ROOT", str(tmp_path))
    budget = compose_train(["experiment=monuseg_cpu", "model=linknet34"], tiny=False)
    assert budget.trainer.precision == "auto" and budget.module.channels_last == "auto"
    assert budget.trainer.max_epochs == -1 and budget.trainer.max_time == "00:00:14:30"
    assert budget.scheduler._target_ == "nucseg.schedules.CosineToBudget"
    v3_epochs = "cpu_epochs={unet: 22, resunet: 20, linknet34: 46}"
    v3 = compose_train(["experiment=monuseg_cpu", "model=linknet34", "scheduler=cosine", "trainer.precision=bf16-mixed", v3_epochs], tiny=False)
    assert v3.trainer.max_epochs == 46 and v3.scheduler.T_max == 46
    v2_overrides = ["scheduler=cosine", "trainer.precision=32-true", "module.channels_last=false", "cpu_epochs={unet: 8, resunet: 6, linknet34: 22}"]
    v2 = compose_train(["experiment=monuseg_cpu", "model=linknet34", *v2_overrides], tiny=False)
    assert v2.callbacks.ema.decay == 0.99 and v2.module.validation_inference.tta == "none"
    assert v2.trainer.max_epochs == 22 and v2.module.inference.tta == "flips"
    assert v2.trainer.precision == "32-true" and v2.module.channels_last is False
    v1_overrides = [
        *v2_overrides[:3],
        "callbacks.ema=null",
        "module.validation_inference=null",
        "cpu_epochs={unet: 8, resunet: 6, linknet34: 20}",
    ]
    v1 = compose_train(["experiment=monuseg_cpu", "model=linknet34", *v1_overrides], tiny=False)
    callbacks = [instantiate(callback) for callback in v1.callbacks.values() if callback]  # as the pipeline does
    assert "ExponentialMovingAverage" not in {type(callback).__name__ for callback in callbacks}
    assert v1.module.validation_inference is None and v1.trainer.max_epochs == 20


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_recipes_choose_precision_for_the_machine(compose_train, monkeypatch, tmp_path, experiment):
    monkeypatch.setenv("MONUSEG_ROOT", str(tmp_path))
    assert compose_train([f"experiment={experiment}"], tiny=False).trainer.precision == "auto"


def test_the_demo_trains_on_a_time_budget_with_a_schedule_that_follows_it(compose_train):
    cfg = compose_train(["experiment=demo", "model=linknet34"], tiny=False)
    assert cfg.trainer.max_time and cfg.scheduler._target_ == "nucseg.schedules.CosineToBudget"
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values() if callback]
    assert "TrainingProgress" in {type(callback).__name__ for callback in callbacks}
    optimizer = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    assert type(instantiate(cfg.scheduler)(optimizer=optimizer)).__name__ == "CosineToBudget"


# Source-specific options (where the images come from and how they are read and split).
SOURCE_KEYS = {
    "monuseg": {"root", "annotation_rule", "split", "kumar_list"},
    "synthetic": {"source"},
    "folder": {"root", "annotation_kind", "splits", "test_fraction", "validation_fraction", "object_types", "classes"},
}


def test_every_data_config_lists_every_data_module_option(compose_train, monkeypatch, tmp_path):
    """The same keys under every source, so `data.X=...` works with each without a `+`."""
    import inspect

    from nucseg.data.datamodule import NucleiDataModule

    monkeypatch.setenv("MONUSEG_ROOT", str(tmp_path))
    shared = set(inspect.signature(NucleiDataModule.__init__).parameters) - {"self", "source", "protocol"}
    assert set(_options("data")) == set(SOURCE_KEYS)
    for data, own in SOURCE_KEYS.items():
        keys = set(compose_train([f"data={data}", "data.root=x"] if data == "folder" else [f"data={data}"], tiny=False).data)
        assert keys - {"_target_"} == shared | own, f"conf/data/{data}.yaml: {sorted(keys ^ (shared | own | {'_target_'}))}"


def test_folder_data_follows_the_target_and_old_folder_configs_keep_their_defaults(compose_train, tmp_path):
    import inspect

    from nucseg.data.datamodule import NucleiDataModule

    cfg = compose_train(["data=folder", f"data.root={tmp_path}", "target=contour"], tiny=False)
    assert cfg.data.target.name == "contour", "the data module builds the target the network is trained for"
    # Keys added to conf/data/folder.yaml: runs stored without them rebuild the same data module.
    defaults = inspect.signature(NucleiDataModule.__init__).parameters
    for key in ("val_strategy", "num_folds", "fold", "pin_memory", "persistent_workers", "device_resident"):
        assert cfg.data[key] == defaults[key].default, key
