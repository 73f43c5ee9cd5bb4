"""Evaluate a saved model on its data set's test split, exactly as the training run's test did.

The run's own config (stored in the checkpoint) rebuilds the data module and the network; the
fitted stain reference comes from the checkpoint, so the test images are normalised as in training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nucseg.checkpoint import find_checkpoint, load_module
from nucseg.hardware import resolve_precision
from nucseg.models import count_parameters
from nucseg.pipeline import collect_test_results, with_image_count
from nucseg.utils.atomic import atomic_write_json

log = logging.getLogger(__name__)


def _default_output_dir(checkpoint_path: Path) -> Path:
    """The run directory of ``<run>/checkpoints/x.ckpt``, else the checkpoint's folder."""
    parent = checkpoint_path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the checkpoint named by ``cfg.run_dir`` or ``cfg.ckpt_path``; write ``metrics.json``.

    An existing ``metrics.json`` (from training) keeps its other fields; ``test`` is replaced and
    ``evaluated_checkpoint`` records what was tested.
    """
    target = cfg.get("ckpt_path") or cfg.get("run_dir")
    if not target:
        raise ValueError("evaluate.py needs run_dir=<run directory> or ckpt_path=<checkpoint file>")
    checkpoint_path = find_checkpoint(target)
    overrides = list(cfg.get("overrides") or [])
    module = load_module(checkpoint_path, config_overrides=overrides)
    run_config = OmegaConf.create(module.run_config)  # the stored config with the overrides merged
    datamodule = instantiate(run_config.data)
    datamodule.stain_normalizer = module.stain_normalizer or datamodule.stain_normalizer
    precision = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator")).used  # "auto" → this machine's
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False, precision=precision)
    results = collect_test_results(trainer.test(module, datamodule=datamodule))

    output_dir = Path(cfg.get("output_dir") or _default_output_dir(checkpoint_path))
    metrics_path = output_dir / "metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics.update(
        model=run_config.model.name,
        status=metrics.get("status", "finished"),
        test=with_image_count(results),
        params=count_parameters(module.net),
        evaluated_checkpoint=str(checkpoint_path),
        evaluation_overrides=overrides,
    )
    metrics.setdefault("run_name", output_dir.name)
    metrics.setdefault("seed", run_config.get("seed"))
    metrics.setdefault("config", OmegaConf.to_container(run_config, resolve=True))
    atomic_write_json(metrics_path, metrics)
    log.info("wrote %s: %s", metrics_path, results)
    return metrics
