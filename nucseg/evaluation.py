"""Evaluate a saved model on its data set's test (or validation) split, exactly as the training run's test did.

The run's own config (stored in the checkpoint) rebuilds the data module and the network; the
fitted stain reference comes from the checkpoint, so the test images are normalised as in training.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nucseg.checkpoint import find_checkpoint, load_model
from nucseg.hardware import resolve_precision
from nucseg.models import count_parameters
from nucseg.pipeline import tune_postprocessing
from nucseg.results import json_safe_records, summarise_subsets
from nucseg.schema import FINISHED, METRICS_FILE, collect_test_results, make_test_block
from nucseg.utils.atomic import atomic_write_json

log = logging.getLogger(__name__)


def _default_output_dir(checkpoint_path: Path) -> Path:
    """The run directory of ``<run>/checkpoints/x.ckpt``, else the checkpoint's folder."""
    parent = checkpoint_path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def evaluation_name(split: str, overrides: list[str]) -> str:
    """A file name that says what was evaluated: the split, then the overrides (safe characters only)."""
    parts = [split, *overrides]
    name = "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", part).strip("-") for part in parts)
    return name[:120]


def data_overrides(data: Any) -> list[str]:
    """``evaluate.py RUN data.root=/path`` (any key under ``data``) as dot-list overrides of the run config.

    Nested keys stay dotted (``data.augmentation.hflip_p=0``). ``root: null``, conf/eval.yaml's
    default, keeps the stored root; a null given for any other key is passed on.
    """
    settings = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else dict(data or {})
    if settings.get("root") is None:
        settings.pop("root", None)

    def leaves(prefix: str, value: Any) -> list[str]:
        if isinstance(value, dict) and value:
            return [line for key, item in value.items() for line in leaves(f"{prefix}.{key}", item)]
        return [f"{prefix}={value if isinstance(value, str) else json.dumps(value)}"]

    return [line for key, value in settings.items() for line in leaves(f"data.{key}", value)]


def _use_split(datamodule: Any, split: str) -> None:
    """Make the data module's test loader serve ``split`` (``test`` or ``val``)."""
    if split == "test":
        return
    if split != "val":
        raise ValueError(f"evaluate.py: split must be test or val, got {split!r}")
    datamodule.setup("fit")
    datamodule.test_images = list(datamodule.val_images)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score the checkpoint named by ``cfg.run_dir`` or ``cfg.ckpt_path`` on ``cfg.split``.

    The run's own ``metrics.json`` is never changed: the result goes to
    ``<run>/evaluations/<split>[_<overrides>].json`` (or ``cfg.name``), or to
    ``<cfg.output_dir>/metrics.json`` when an output folder other than the run's is given. With
    ``cfg.tune_postprocess`` the post-processing is first chosen by mean AJI on the run's
    validation images (never on the test images), as training does.
    """
    target = cfg.get("ckpt_path") or cfg.get("run_dir")
    if not target:
        raise ValueError("evaluate.py needs run_dir=<run directory> or ckpt_path=<checkpoint file>")
    checkpoint_path = find_checkpoint(target)
    run_dir = _default_output_dir(checkpoint_path)
    overrides = data_overrides(cfg.get("data")) + list(cfg.get("overrides") or [])
    split = str(cfg.get("split") or "test")
    model = load_model(checkpoint_path, config_overrides=overrides)
    module = model.module
    run_config = OmegaConf.create(model.run_config)  # the stored config with the overrides merged
    datamodule = instantiate(run_config.data)
    datamodule.stain_normalizer = model.stain_normalizer or datamodule.stain_normalizer
    if cfg.get("tune_postprocess"):
        datamodule.setup("fit")
    postprocess = tune_postprocessing(cfg, module, datamodule, best_path=None, write=False) or {
        "params": dict(module.postprocess_params),
        "chosen_on": "stored run config",
    }
    _use_split(datamodule, split)
    precision = resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator")).used  # "auto" → this machine's
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False, precision=precision)
    results = collect_test_results(trainer.test(module, datamodule=datamodule))
    per_image = json_safe_records(module.test_records)

    metrics: dict[str, Any] = {
        "model": run_config.model.name,
        "run_name": run_dir.name,
        "status": FINISHED,
        "seed": run_config.get("seed"),
        "split": split,
        "protocol": getattr(datamodule, "protocol", None),
        "postprocess": postprocess,
        "test": make_test_block(results, per_image),
        "test_summary": summarise_subsets(per_image, {} if split != "test" else getattr(datamodule, "test_subsets", {}) or {}),
        "params": count_parameters(module.net),
        "evaluated_checkpoint": str(checkpoint_path),
        "evaluation_overrides": overrides,
        "config": OmegaConf.to_container(run_config, resolve=True),
    }
    output_dir = cfg.get("output_dir")
    if output_dir and Path(output_dir).resolve() != run_dir.resolve():
        output_path = Path(output_dir) / METRICS_FILE
    else:
        output_path = run_dir / "evaluations" / f"{cfg.get('name') or evaluation_name(split, overrides)}.json"
    atomic_write_json(output_path, metrics)
    log.info("wrote %s: %s", output_path, results)
    return metrics
