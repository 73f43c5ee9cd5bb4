"""Python API: ``model = nucseg.load(run)``, then ``model.predict(image_or_path)``.

One object carries everything a trained run needs to predict as it was validated: the network,
its stain reference (fitted at training time, applied automatically), the resolution it was
trained at, the sliding-window settings and the post-processing. No Hydra is involved::

    import nucseg
    model = nucseg.load("logs/runs/<run>")
    result = model.predict("tile.png")          # or an (H, W, 3) uint8 array
    result.labels, result.probability           # (H, W) int32 instances, float32 in [0, 1]
    result.nuclei                               # pandas DataFrame: id, centroid, area

Images are held in memory; for slides and very large TIFFs use ``python -m nucseg.predict``
(which streams) or read regions with :mod:`nucseg.io.slide` and predict them one by one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nucseg.inference import sliding_window_predict
from nucseg.inference.instances import (
    DEFAULT_SETTINGS,
    PostprocessSettings,
    heads_of,
    instance_function,
    postprocess_settings,
)
from nucseg.inference.settings import InferenceSettings
from nucseg.io.images import read_rgb_image, to_rgb_uint8

if TYPE_CHECKING:
    import pandas as pd

@dataclass
class Prediction:
    """What :meth:`NucleusModel.predict` returns for one image.

    Attributes:
        probability: (H, W) float32 nucleus probability.
        labels: (H, W) int32 instances, 0 = background, 1..N.
        nuclei: one row per nucleus: ``id``, ``centroid_y``, ``centroid_x`` (pixels, row/column),
            ``area_px`` and, when the resolution is known, ``area_um2``.
        image: (H, W, 3) uint8 input as read (before stain normalisation).
    """

    probability: np.ndarray
    labels: np.ndarray
    nuclei: pd.DataFrame
    image: np.ndarray = field(repr=False)


class NucleusModel:
    """A trained run ready to predict (build it with :func:`load`).

    Attributes:
        module: the :class:`~nucseg.module.SegmentationModule`, in eval mode.
        stain_normalizer: the training stain reference (``None``: the run used none).
        mpp: microns per pixel the model was trained at (``None``: unknown).
        inference: sliding-window settings (tile size, overlap, blending, TTA...).
        postprocess: the run's post-processing (target and the parameters its test used), so
            that contour, distance and hv runs split touching nuclei as they were scored.
    """

    def __init__(
        self,
        module: Any,
        stain_normalizer: Any | None = None,
        mpp: float | None = None,
        inference: InferenceSettings | None = None,
        postprocess: PostprocessSettings = DEFAULT_SETTINGS,
    ) -> None:
        self.module = module
        self.stain_normalizer = stain_normalizer
        self.mpp = mpp
        self.inference = inference or InferenceSettings()
        self.postprocess = postprocess
        self._heads = heads_of(module)
        self._labeller = instance_function(postprocess)

    @property
    def threshold(self) -> float:
        """Foreground probability above which a pixel is nucleus."""
        return float(self.postprocess.params.get("threshold", self.postprocess.threshold))

    @property
    def min_size(self) -> int:
        """Instances with fewer pixels are dropped."""
        return int(self.postprocess.params.get("min_size", self.postprocess.min_size))

    def __repr__(self) -> str:
        name = getattr(self.module, "model_name", type(self.module).__name__)
        stain = type(self.stain_normalizer).__name__ if self.stain_normalizer is not None else None
        return (
            f"NucleusModel({name}, mpp={self.mpp}, stain={stain}, tile={self.inference.tile_size}, "
            f"threshold={self.threshold})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    # -- steps, each usable on its own ---------------------------------------------------------
    def read(self, image_or_path: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
        """(H, W, 3) uint8 RGB from a path (PNG/JPEG/TIFF) or an array (grey/RGBA/16 bit converted)."""
        if isinstance(image_or_path, str | os.PathLike):
            return read_rgb_image(image_or_path)
        return to_rgb_uint8(np.asarray(image_or_path))

    def normalize_stain(self, image: np.ndarray, name: str | None = None) -> np.ndarray:
        """The image mapped onto the training stain reference (unchanged without one)."""
        if self.stain_normalizer is None:
            return image
        return self.stain_normalizer.normalize(image, name=name)

    def probabilities(self, normalized: np.ndarray, progress: bool = False) -> np.ndarray:
        """(C, H, W) float32 probabilities of the run's target (``SegmentationModule.probabilities``)
        for a stain-normalised uint8 image."""
        tensor = torch.from_numpy(np.ascontiguousarray(normalized)).permute(2, 0, 1).float().div_(255.0)
        logits = sliding_window_predict(tensor, self.module, progress=progress, **self.inference.kwargs())
        return self._heads.probabilities(logits.float().cpu().numpy())

    def probability(self, normalized: np.ndarray, progress: bool = False) -> np.ndarray:
        """(H, W) float32 nucleus probability of a stain-normalised uint8 image."""
        return self._heads.foreground(self.probabilities(normalized, progress))

    def instances(self, probabilities: np.ndarray) -> np.ndarray:
        """(H, W) int32 instances by the run's post-processing, from its (C, H, W) probabilities
        (an (H, W) map is read as a binary run's one channel)."""
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if probabilities.ndim == 2:
            probabilities = probabilities[None]
        return np.asarray(self._labeller(probabilities), dtype=np.int32)

    def measure(self, labels: np.ndarray) -> pd.DataFrame:
        """One row per nucleus: id, centroid (row, column in pixels), area (pixels, and µm² if known)."""
        import pandas as pd
        from skimage.measure import regionprops_table

        table = regionprops_table(labels, properties=("label", "centroid", "area"))
        frame = pd.DataFrame({
            "id": np.asarray(table["label"], dtype=np.int64),
            "centroid_y": np.asarray(table["centroid-0"], dtype=np.float64),
            "centroid_x": np.asarray(table["centroid-1"], dtype=np.float64),
            "area_px": np.asarray(table["area"], dtype=np.int64),
        })
        if self.mpp is not None:
            frame["area_um2"] = frame["area_px"] * self.mpp**2
        return frame

    # -- all of it -----------------------------------------------------------------------------
    def predict(
        self,
        image_or_path: np.ndarray | str | os.PathLike[str],
        normalize_stain: bool = True,
        progress: bool = False,
    ) -> Prediction:
        """Read, stain-normalise, predict by sliding window, label instances and measure them.

        Args:
            image_or_path: a PNG/JPEG/TIFF path or an (H, W, 3) / (H, W) / (H, W, 4) array.
            normalize_stain: apply the training stain reference (turn off only for images
                already normalised to it).
            progress: show a progress bar over tiles.

        Returns:
            A :class:`Prediction`.
        """
        name = str(image_or_path) if isinstance(image_or_path, str | os.PathLike) else None
        image = self.read(image_or_path)
        normalized = self.normalize_stain(image, name) if normalize_stain else image
        probabilities = self.probabilities(normalized, progress)
        labels = self.instances(probabilities)
        probability = self._heads.foreground(probabilities)
        return Prediction(probability=probability, labels=labels, nuclei=self.measure(labels), image=image)


def load(
    run: str | os.PathLike[str],
    device: str | torch.device = "auto",
    mpp: float | None = None,
    threshold: float | None = None,
    min_size: int | None = None,
    connectivity: int | None = None,
    **inference: Any,
) -> NucleusModel:
    """Load a trained run (its directory or a ``.ckpt``) for prediction.

    Args:
        run: ``logs/runs/<run>`` or a checkpoint file.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``.
        mpp: the training resolution in microns per pixel, when the run did not record it.
        threshold: probability above which a pixel is nucleus (default: the run's
            post-processing, as tuned on validation, which ``predict`` and the test use too).
        min_size: instances with fewer pixels are dropped (default: the run's).
        connectivity: binary runs: 1 (4-connected) or 2 (8-connected) instances (default: the run's).
        **inference: :class:`~nucseg.inference.settings.InferenceSettings` replacing the run's,
            e.g. ``tta="d4"``.

    Raises:
        nucseg.checkpoint.CheckpointError: no checkpoint, or not one written by ``train.py``.
        ValueError: an unknown inference setting, or ``connectivity`` for a run that is not binary.
    """
    from nucseg.checkpoint import load_model

    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(Path(run), map_location=torch.device(device))
    return NucleusModel(
        model.module,
        model.stain_normalizer,
        mpp if mpp is not None else model.mpp,
        model.inference.updated(inference),
        postprocess_settings(model.postprocess.target, model.postprocess.params, threshold, min_size, connectivity),
    )
