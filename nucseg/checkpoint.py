"""Load a trained model from a run directory or a checkpoint, ready to predict.

A checkpoint written by ``train.py`` carries the resolved run config (under ``"nucseg"``) and the
data module's fitted stain reference, so loading needs neither Hydra's CLI nor the training data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nucseg.module import SegmentationModule
from nucseg.utils.atomic import atomic_path


class CheckpointError(ValueError):
    """A run directory has no checkpoint, or a checkpoint lacks what nucseg needs."""


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it is a file, else ``<run>/checkpoints/best.ckpt`` (or ``last.ckpt``)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in ("best.ckpt", "last.ckpt"):
            if (path / "checkpoints" / candidate).is_file():
                return path / "checkpoints" / candidate
        raise CheckpointError(f"{path}: no checkpoints/best.ckpt or checkpoints/last.ckpt in this run directory")
    raise CheckpointError(f"{path}: no such checkpoint file or run directory")


def load_checkpoint_dict(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dictionary (our own files: full unpickling is intended)."""
    checkpoint_path = find_checkpoint(path)
    try:
        checkpoint = torch.load(checkpoint_path, map_location=map_location, weights_only=False)
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"{checkpoint_path}: cannot read checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{checkpoint_path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def run_config_of(checkpoint: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """The resolved run config stored by the training pipeline."""
    config = (checkpoint.get("nucseg") or {}).get("run_config")
    if not config:
        raise CheckpointError(f"{source}: no nucseg run config in this checkpoint (was it written by train.py?)")
    return config


def load_module(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    config_overrides: list[str] | None = None,
) -> SegmentationModule:
    """Rebuild the trained :class:`SegmentationModule`, in eval mode, with its stain normaliser.

    Args:
        path: a run directory or a ``.ckpt`` file.
        map_location: device for the weights.
        config_overrides: dot-list overrides of the stored run config, e.g.
            ``["module.inference.tta=d4"]`` (the network's shape must stay the same).

    Pretrained encoder weights are not fetched again: the checkpoint's weights replace them.
    """
    checkpoint_path = find_checkpoint(path)
    checkpoint = load_checkpoint_dict(checkpoint_path, map_location)
    config = run_config_of(checkpoint, str(checkpoint_path))
    if config_overrides:
        merged = OmegaConf.merge(OmegaConf.create(config), OmegaConf.from_dotlist(list(config_overrides)))
        config = OmegaConf.to_container(merged, resolve=True)
    net_config = dict(config["model"]["net"])
    if "encoder_weights" in net_config:
        net_config["encoder_weights"] = None
    module_config = {key: value for key, value in config["module"].items() if key != "_target_"}
    module = SegmentationModule(net=instantiate(net_config), loss=instantiate(config["loss"]), **module_config)
    module.load_state_dict(checkpoint["state_dict"])
    module.run_config = config
    normalizer_config = (config.get("data") or {}).get("stain_normalizer")
    if normalizer_config:
        module.stain_normalizer = instantiate(normalizer_config)
        normalizer_state = _stain_state(checkpoint)
        if normalizer_state is None:
            raise CheckpointError(f"{checkpoint_path}: the run normalised stains but the checkpoint has no fitted reference")
        module.stain_normalizer.load_state_dict(normalizer_state)
    return module.eval().to(map_location)


def _stain_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The data module's fitted stain reference (Lightning stores it under the class name)."""
    for value in checkpoint.values():
        if isinstance(value, dict) and "stain_normalizer" in value:
            return value["stain_normalizer"]
    return None


def store_module_options(path: str | os.PathLike[str], **options: Any) -> None:
    """Write module options chosen after training (e.g. post-processing tuned on validation) into
    the stored run config of a checkpoint, atomically, so that ``load_module``, ``evaluate.py``
    and ``predict`` rebuild the module with them.

    Args:
        path: a ``.ckpt`` file written by the training pipeline.
        **options: keys of the run config's ``module`` section and their new values.
    """
    checkpoint_path = find_checkpoint(path)
    checkpoint = load_checkpoint_dict(checkpoint_path)
    config = run_config_of(checkpoint, str(checkpoint_path))
    config.setdefault("module", {}).update(options)
    checkpoint["nucseg"]["run_config"] = config
    with atomic_path(checkpoint_path) as temporary:
        torch.save(checkpoint, temporary)
