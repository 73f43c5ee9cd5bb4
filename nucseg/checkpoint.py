"""Load a trained model from a run directory or a checkpoint, ready to predict.

A checkpoint written by ``train.py`` carries the resolved run config (under ``"nucseg"``) and the
data module's fitted stain reference, so loading needs neither Hydra's CLI nor the training data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nucseg.inference.instances import DEFAULT_SETTINGS, PostprocessSettings, postprocess_settings
from nucseg.inference.settings import InferenceSettings
from nucseg.module import SegmentationModule
from nucseg.utils.atomic import atomic_path

#: Microns per pixel of the data sets the project knows (MoNuSeg: 40x TCGA tiles, ~0.25 µm/px).
KNOWN_RESOLUTIONS_MPP = {"MonusegDataModule": 0.25, "MonusegSource": 0.25}


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


@dataclass(frozen=True)
class TrainedModel:
    """A trained run, loaded: the network and everything deployment needs to use it as tested.

    :func:`load_model` fills every field from a checkpoint; a model built in code (tests, a
    network trained elsewhere) may leave out what it does not have.

    Attributes:
        module: the :class:`SegmentationModule`, in eval mode.
        run_config: the resolved run config stored in the checkpoint (overrides merged).
        checkpoint: the ``.ckpt`` file it was loaded from (``None``: built in code).
        stain_normalizer: the stain reference fitted at training time (``None``: the run used none).
        inference: the run's sliding-window settings (``module.inference``).
        postprocess: the run's post-processing (target and parameters its test used).
        threshold: foreground probability above which a pixel is nucleus (pixel metrics).
        mpp: microns per pixel the run was trained at (``None``: unknown; :func:`run_resolution_mpp`).
    """

    module: SegmentationModule
    run_config: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    stain_normalizer: Any | None = None
    inference: InferenceSettings = InferenceSettings()
    postprocess: PostprocessSettings = DEFAULT_SETTINGS
    threshold: float = PostprocessSettings.threshold
    mpp: float | None = None


def load_model(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    config_overrides: list[str] | None = None,
) -> TrainedModel:
    """Rebuild a trained run: its :class:`SegmentationModule` in eval mode, stain reference and settings.

    Args:
        path: a run directory or a ``.ckpt`` file.
        map_location: device for the weights.
        config_overrides: dot-list overrides of the stored run config, e.g.
            ``["module.inference.tta=d4"]`` (the network's shape must stay the same).

    Pretrained encoder weights are not fetched again: the checkpoint's weights replace them.

    Raises:
        CheckpointError: no checkpoint, not one written by ``train.py``, or a stain-normalising
            run without its fitted reference.
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
    stain_normalizer = None
    normalizer_config = (config.get("data") or {}).get("stain_normalizer")
    if normalizer_config:
        stain_normalizer = instantiate(normalizer_config)
        normalizer_state = _stain_state(checkpoint)
        if normalizer_state is None:
            raise CheckpointError(f"{checkpoint_path}: the run normalised stains but the checkpoint has no fitted reference")
        stain_normalizer.load_state_dict(normalizer_state)
    return TrainedModel(
        module=module.eval().to(map_location),
        run_config=config,
        checkpoint=checkpoint_path,
        stain_normalizer=stain_normalizer,
        inference=module.inference_settings,
        postprocess=postprocess_settings(module.target, module.postprocess_params),
        threshold=float(module.threshold),
        mpp=run_resolution_mpp(config),
    )


def run_resolution_mpp(run_config: Mapping[str, Any] | None) -> float | None:
    """The microns per pixel a run was trained at: ``data.mpp`` if set, else the data set's own.

    ``None`` when unknown (synthetic data, or a folder source without ``mpp``).
    """
    data = (run_config or {}).get("data") or {}
    if data.get("mpp") is not None:
        return float(data["mpp"])
    source = data.get("source") or {}
    if isinstance(source, dict) and source.get("mpp") is not None:
        return float(source["mpp"])
    for target in (data.get("_target_"), source.get("_target_") if isinstance(source, dict) else None):
        name = str(target or "").rsplit(".", 1)[-1]
        if name in KNOWN_RESOLUTIONS_MPP:
            return KNOWN_RESOLUTIONS_MPP[name]
    return None


def _stain_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The data module's fitted stain reference (Lightning stores it under the class name)."""
    for value in checkpoint.values():
        if isinstance(value, dict) and "stain_normalizer" in value:
            return value["stain_normalizer"]
    return None


def store_module_options(path: str | os.PathLike[str], **options: Any) -> None:
    """Write module options chosen after training (e.g. post-processing tuned on validation) into
    the stored run config of a checkpoint, atomically, so that ``load_model``, ``evaluate.py``
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
