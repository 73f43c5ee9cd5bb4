"""Train → test the best checkpoint → write ``metrics.json``: what ``train.py`` runs, without Hydra's CLI.

Every object comes from the config's ``_target_`` entries; this module only wires them and
records the outcome. ``status.json`` says running / finished / failed at all times, so a crashed
run is visible as such to ``nucseg.compare``.

Before the first training step the data files of every split are checked
(:mod:`nucseg.data.check`) and every split is loaded, so that no problem with the data surfaces
after hours of training; ``provenance.json`` records what the run is made of. ``resume=true``
skips a run whose ``metrics.json`` is complete and continues any other from its last checkpoint
(:mod:`nucseg.resume`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from nucseg.callbacks import NonFiniteLossGuard, TrainingProgress, TrainingSpeed
from nucseg.checkpoint import store_module_options
from nucseg.data.check import check_data_source
from nucseg.hardware import log_choice, resolve_precision
from nucseg.models import count_parameters
from nucseg.postprocess.tuning import tune_on_validation
from nucseg.results import json_safe_records, summarise_subsets
from nucseg.resume import AtomicCheckpointIO, RandomStateCheckpoint, finished_metrics, resume_checkpoint
from nucseg.schema import (
    FAILED,
    FINISHED,
    METRICS_FILE,
    RUNNING,
    collect_test_results,
    hparams,
    hparams_metrics,
    make_test_block,
    write_status,
)
from nucseg.schema import (
    optimized_metric as optimized_metric,  # what train.py returns to a sweeper
)
from nucseg.sweep import check_multirun_strategy
from nucseg.utils.atomic import atomic_write_json
from nucseg.utils.provenance import write_provenance

log = logging.getLogger(__name__)
CallbackT = TypeVar("CallbackT", bound=L.Callback)


def build_module(cfg: DictConfig) -> L.LightningModule:
    """The LightningModule with network, loss, optimiser and scheduler built from config."""
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") and cfg.scheduler.get("_target_") else None
    return instantiate(
        cfg.module,
        net=instantiate(cfg.model.net),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler,
    )


def validation_summary(monitor: str, checkpoint: ModelCheckpoint | None, trainer: L.Trainer) -> dict[str, Any]:
    """The validation metric that chose the checkpoint and its best value, for metrics.json.

    Raises:
        ValueError: ``monitor`` is not a validation metric (``val/...``).
    """
    if not str(monitor).startswith("val/"):
        raise ValueError(f"optimized_metric must be a validation metric (val/...), got {monitor!r}")
    if checkpoint is not None and checkpoint.monitor == monitor and checkpoint.best_model_score is not None:
        best = float(checkpoint.best_model_score)
    else:
        last = trainer.callback_metrics.get(monitor)
        best = float(last) if last is not None else None
        log.warning("optimized_metric %s is not what chose the checkpoint; reporting its last value", monitor)
    return {"metric": monitor, "best": best if best is not None and math.isfinite(best) else None}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best-on-validation checkpoint, and write ``metrics.json`` into the run directory.

    With ``cfg.resume`` a run directory whose ``metrics.json`` is complete is not trained again:
    its metrics are returned as they are.
    """
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("resume"):
        finished = finished_metrics(run_dir, OmegaConf.to_container(cfg, resolve=True))
        if finished is not None:
            log.info("%s: finished before (metrics.json is complete); not trained again", run_dir)
            return finished
    write_status(run_dir, RUNNING)
    try:
        metrics = _train(cfg, run_dir)
    except BaseException as error:
        write_status(run_dir, FAILED, f"{type(error).__name__}: {error}")
        raise
    write_status(run_dir, FINISHED)
    return metrics


def instantiate_loggers(logger_cfg: Any) -> list[Any]:
    """The run's loggers: one ``_target_`` node (configs before ``conf/logger/default.yaml``) or a
    mapping of such nodes (``tensorboard``, ``csv``); none for ``logger=null``."""
    if not logger_cfg:
        return []
    if "_target_" in logger_cfg:
        return [instantiate(logger_cfg)]
    return [instantiate(node) for node in logger_cfg.values() if node and "_target_" in node]


class RunConfigInCheckpoints(L.Callback):
    """Writes the resolved run config and model name into every checkpoint (under ``"nucseg"``):
    what :func:`nucseg.checkpoint.load_model` rebuilds the model from, without Hydra."""

    def __init__(self, run_config: dict[str, Any]) -> None:
        self.run_config = run_config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["nucseg"] = {"run_config": self.run_config, "model_name": pl_module.model_name}


def _with_callback(callbacks: list[L.Callback], kind: type[CallbackT]) -> CallbackT:
    """The callback of ``kind`` in ``callbacks``, appended when the config has none."""
    found = next((c for c in callbacks if isinstance(c, kind)), None)
    if found is None:
        found = kind()
        callbacks.append(found)
    return found


def check_data(cfg: DictConfig, datamodule: Any) -> Any:
    """Check every data file the run will read (``cfg.check_data``, default on); None when skipped.

    Raises:
        DataCheckError: every problem found, one line per file.
    """
    if not cfg.get("check_data", True):
        return None
    return check_data_source(
        getattr(datamodule, "source", None),
        num_val_images=getattr(datamodule, "num_val_images", 0),
        stain_reference=getattr(datamodule, "stain_reference", None),
    )


def tune_postprocessing(
    cfg: DictConfig, module: L.LightningModule, datamodule: Any, best_path: str | None, write: bool
) -> dict[str, Any] | None:
    """Choose the post-processing parameters by mean AJI on the validation images (``tune_postprocess``).

    The best-on-validation weights are loaded first, so the parameters are tuned for the network
    the test scores; the choice is set on the module for the test and written into the best
    checkpoint's stored config (``write``: rank 0), so ``evaluate.py`` and ``predict`` use it.
    The test split is never looked at. Returns what ``metrics.json`` records, or None when off.
    """
    if not cfg.get("tune_postprocess", True) or not getattr(datamodule, "val_images", None):
        return None
    if best_path:
        state = torch.load(best_path, map_location=module.device, weights_only=False)["state_dict"]
        module.load_state_dict(state)
    best, table = tune_on_validation(module, datamodule)
    if best_path and write:
        store_module_options(best_path, postprocess=best)
    chosen = max(table, key=lambda row: row["aji"])
    return {
        "params": best,
        "chosen_on": "validation",
        "validation_images": [image.name for image in datamodule.val_images],
        "validation_aji": chosen["aji"],
        "validation_pq": chosen["pq"],
        "grid": table,
    }


def _check_launch(cfg: DictConfig) -> None:
    """Refuse ``strategy=ddp`` inside a local ``-m`` sweep (see :func:`nucseg.sweep.check_multirun_strategy`)."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    launcher = hydra_cfg.launcher.get("_target_") if hydra_cfg.get("launcher") else None
    check_multirun_strategy(cfg.trainer, hydra_cfg.mode == RunMode.MULTIRUN, launcher)


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    _check_launch(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    data_check = check_data(cfg, datamodule)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path = resume_checkpoint(cfg.get("ckpt_path"), bool(cfg.get("resume")), run_dir, run_config)
    write_provenance(run_dir, run_config, data_check.checksums if data_check is not None else None)
    module = build_module(cfg)
    callbacks = [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values() if callback]
    callbacks.append(RunConfigInCheckpoints(run_config))
    speed = _with_callback(callbacks, TrainingSpeed)
    _with_callback(callbacks, NonFiniteLossGuard)
    _with_callback(callbacks, RandomStateCheckpoint)
    loggers = instantiate_loggers(cfg.get("logger"))
    precision = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"))
    log_choice("trainer.precision", precision)
    log_choice("module.channels_last", module.channels_last_choice)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision.used, plugins=[AtomicCheckpointIO()]
    )
    progress = next((c for c in callbacks if isinstance(c, TrainingProgress)), None)
    # Every split is read before the first step: a file the header-level check could not judge
    # (a damaged compressed strip) fails now, not after training.
    datamodule.setup("fit")
    datamodule.setup("test")

    started = time.perf_counter()
    # our own checkpoints (they hold the run config): full unpickling is intended
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False if ckpt_path else None)
    train_seconds = time.perf_counter() - started
    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    best_path = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    if best_path is None:
        log.warning("no best checkpoint was recorded; testing the last weights")
    validation = validation_summary(str(cfg.get("optimized_metric") or "val/dice"), checkpoint, trainer)
    postprocess = tune_postprocessing(cfg, module, datamodule, best_path, trainer.is_global_zero)
    test_results = collect_test_results(trainer.test(module, datamodule=datamodule, ckpt_path=best_path, weights_only=False))
    per_image = json_safe_records(module.test_records)

    metrics: dict[str, Any] = {
        "model": cfg.model.name,
        "run_name": run_dir.name,
        "status": FINISHED,
        "seed": int(cfg.seed),
        "protocol": getattr(datamodule, "protocol", None),
        "validation": validation,
        "postprocess": postprocess,
        "test": make_test_block(test_results, per_image),
        "test_summary": summarise_subsets(per_image, getattr(datamodule, "test_subsets", {}) or {}),
        "params": count_parameters(module.net),
        "train_time_s": round(train_seconds, 2),
        "train_patches_per_s": round(speed.patches_per_second, 3),
        "train_patches": speed.patches,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "precision": precision.as_dict(),
        "channels_last": module.channels_last_choice.as_dict(),
        "progress": progress.summary(trainer) if progress is not None else None,
        "best_ckpt": str(Path(best_path).relative_to(run_dir)) if best_path and Path(best_path).is_relative_to(run_dir) else best_path,
        "stain": {"fallbacks": getattr(datamodule.stain_normalizer, "fallback_count", 0)},
        "data_preparation_s": {key: round(value, 2) for key, value in datamodule.preparation_seconds.items()},
        "data_check": data_check.to_dict() if data_check is not None else None,
        "config": run_config,
    }
    if not trainer.is_global_zero:  # under DDP every rank runs this function; one writes
        return metrics
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams(run_config), metrics=hparams_metrics(test_results))
            logger.finalize("success")
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    log.info("test: %s", test_results)
    return metrics
