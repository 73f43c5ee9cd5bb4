"""Network output -> probabilities -> instance labels, the same for an image in memory and streamed.

``instance_function`` turns a (C, H, W) probability map into instance labels with the run's own
post-processing, ``nucseg.postprocess.postprocess(probabilities, target, **params)``
(connected components for binary runs, marker-controlled watershed for contour/distance runs),
with the parameters the run's test used (``SegmentationModule.postprocess_params``), so the
instances ``predict`` writes are the instances the test scored (AJI, PQ).

Threshold. ``postprocess`` calls a pixel foreground when ``p > threshold``, the rule of the module's
test (torchmetrics' pooled Dice/IoU and the per-image records), so predict's masks and instances
are exactly what the test scored.

Streaming. ``HaloBandLabeller`` post-processes an image that arrives in bands of rows: each
band's *core* rows are processed together with ``halo`` rows above and below, and a nucleus is
kept by the band whose core holds its top row (the first row of its first pixel), so every
nucleus is labelled once, from a window that contains all of it (when it is at most ``halo``
rows tall). Ids are then renumbered in raster order of each object's first pixel, which is
also how ``canonical_labels`` (and ``postprocess``) number an image processed whole; so streamed
labels equal in-memory labels exactly, not only up to a permutation, as long as the
post-processing of a nucleus depends only on pixels within ``halo`` rows of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nucseg.postprocess import default_params, postprocess

logger = logging.getLogger(__name__)

Labeller = Callable[[np.ndarray], np.ndarray]
"""(C, H, W) float32 probabilities -> (H, W) integer instance labels (0 = background)."""


@dataclass(frozen=True)
class PostprocessSettings:
    """Probability -> instances -> polygons settings.

    Attributes:
        threshold: Foreground when the probability is above this (unless ``params`` sets it).
        min_size: Instances with fewer pixels (at the model's scale) are dropped (same).
        connectivity: 1 (4-connected) or 2 (8-connected) components, binary runs (same); also
            how polygons are traced.
        tolerance: Polygon simplification in pixels.
        max_object_rows: Streamed images: rows of halo above and below each band of rows; a
            nucleus taller than this may be cut (a warning says how many were).
        target: The run's target (``binary``, ``contour``, ``distance``).
        params: The run's post-processing parameters, passed to ``nucseg.postprocess.postprocess``.
        labeller: Use this function instead of the run's post-processing (tests, custom methods).
        band_rows: Streamed images: core rows post-processed together.
    """

    threshold: float = 0.5
    min_size: int = 10
    connectivity: int = 1
    tolerance: float = 0.25
    max_object_rows: int = 128
    target: str = "binary"
    params: Mapping[str, Any] = field(default_factory=dict)
    labeller: Labeller | None = None
    band_rows: int = 256


DEFAULT_SETTINGS = PostprocessSettings()


def instance_function(settings: PostprocessSettings = DEFAULT_SETTINGS) -> Labeller:
    """The post-processing of ``settings`` as one function of the (C, H, W) probabilities.

    ``settings.threshold``/``min_size`` (and ``connectivity`` for binary runs) are the
    parameters ``settings.params`` does not set.
    """
    if settings.labeller is not None:
        return settings.labeller
    params: dict[str, Any] = {"threshold": settings.threshold, "min_size": settings.min_size}
    if settings.target == "binary":
        params["connectivity"] = settings.connectivity
    params.update(settings.params)
    target = settings.target

    def run(probabilities: np.ndarray) -> np.ndarray:
        return postprocess(probabilities, target, **params)

    return run


@dataclass(frozen=True)
class Heads:
    """How to read a network's logits: (C, h, w) logits -> (C', h, w) probabilities -> (h, w) foreground."""

    probabilities: Callable[[np.ndarray], np.ndarray]
    foreground: Callable[[np.ndarray], np.ndarray]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function in float32."""
    logits = np.asarray(logits, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)


def heads_of(model: Any) -> Heads:
    """The module's ``probabilities``/``foreground_probability`` when it has them, else sigmoid / channel 0."""
    probabilities_fn = getattr(model, "probabilities", None)
    foreground_fn = getattr(model, "foreground_probability", None)

    def probabilities(logits: np.ndarray) -> np.ndarray:
        if not callable(probabilities_fn):
            return sigmoid(logits)
        with torch.no_grad():
            out = probabilities_fn(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None])
        return out[0].float().cpu().numpy()

    def foreground(probability: np.ndarray) -> np.ndarray:
        if not callable(foreground_fn):
            return np.asarray(probability[0], dtype=np.float32)
        with torch.no_grad():
            out = foreground_fn(torch.from_numpy(np.ascontiguousarray(probability, dtype=np.float32))[None])
        return out[0, 0].float().cpu().numpy()

    return Heads(probabilities, foreground)


def postprocess_settings(
    target: str = "binary",
    params: Mapping[str, Any] | None = None,
    threshold: float | None = None,
    min_size: int | None = None,
    connectivity: int | None = None,
    **overrides: Any,
) -> PostprocessSettings:
    """A run's post-processing settings, with command-line values replacing the run's.

    Args:
        target: the run's target (``SegmentationModule.target``).
        params: the parameters its test used (``SegmentationModule.postprocess_params``); the
            target's defaults fill what they leave out.
        threshold, min_size, connectivity: replace the run's values when given.
        **overrides: other :class:`PostprocessSettings` fields (``max_object_rows``...).

    Raises:
        ValueError: ``connectivity`` for a run whose target is not binary.
    """
    params = {**default_params(target), **dict(params or {})}
    if threshold is not None:
        params["threshold"] = float(threshold)
    if min_size is not None:
        params["min_size"] = int(min_size)
    if connectivity is not None:
        if target != "binary":
            raise ValueError(f"connectivity applies to binary runs; this run's target is {target!r}")
        params["connectivity"] = int(connectivity)
    return PostprocessSettings(
        threshold=float(params["threshold"]),
        min_size=int(params["min_size"]),
        connectivity=int(params.get("connectivity", 1)),
        target=target,
        params=params,
        **overrides,
    )


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 1..N in raster order of each object's first pixel (int32, gaps removed)."""
    flat = np.asarray(labels).ravel()
    values, first = np.unique(flat, return_index=True)
    keep = values != 0
    values, first = values[keep], first[keep]
    order = np.argsort(first, kind="stable")
    if len(values) == 0:
        return np.zeros(labels.shape, dtype=np.int32)
    lut_values = np.zeros(len(values), dtype=np.int32)
    lut_values[order] = np.arange(1, len(values) + 1, dtype=np.int32)
    index = np.searchsorted(values, flat)
    index = np.minimum(index, len(values) - 1)
    out = np.where((flat != 0) & (values[index] == flat), lut_values[index], 0).astype(np.int32)
    return out.reshape(labels.shape)


@dataclass
class Band:
    """What ``HaloBandLabeller`` gives for one band of core rows.

    Attributes:
        top: First core row (in the whole image).
        rows: Final labels of the core rows ``top .. top + len(rows)`` (global ids).
        window_top: First row of ``objects`` in the whole image.
        objects: The objects this band owns, complete, in a window of rows around the core,
            numbered 1..n (global id = ``first_id + local - 1``); other objects are 0.
        first_id: Global id of local object 1.
    """

    top: int
    rows: np.ndarray
    window_top: int
    objects: np.ndarray
    first_id: int


class HaloBandLabeller:
    """Post-process an image given as consecutive bands of probability rows (module docstring).

    Memory: ``band_rows + 2 * halo`` rows of the (C, ·, W) float32 probabilities, plus one
    carried band of labels. Feed bands with :meth:`add`, then call :meth:`finish`; both yield
    :class:`Band` results in order.

    Args:
        labeller: (C, h, W) probabilities -> (h, W) labels, as for the whole image.
        height: Image height in rows.
        band_rows: Core rows per band.
        halo: Rows of context above and below each core.
        name: The image's name in warnings.
    """

    def __init__(
        self, labeller: Labeller, height: int, band_rows: int = 256, halo: int = 128, name: str = "image"
    ):
        if band_rows < 1 or halo < 0:
            raise ValueError(f"{name}: band_rows must be >= 1 and halo >= 0, got {band_rows}, {halo}")
        self.labeller = labeller
        self.height = int(height)
        self.band_rows = int(band_rows)
        self.halo = int(halo)
        self.name = name
        self._buffer: np.ndarray | None = None  # (C, rows, W) from row self._buffer_top
        self._buffer_top = 0
        self._core_top = 0
        self._next_id = 1
        self._carry: np.ndarray | None = None  # labels of rows from self._core_top on
        self.cut_objects = 0

    @property
    def rows_seen(self) -> int:
        """Rows added so far."""
        return self._buffer_top + (0 if self._buffer is None else self._buffer.shape[1])

    def add(self, probabilities: np.ndarray) -> Iterator[Band]:
        """Append (C, h, W) probability rows; yield every band whose window is now complete."""
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if self._buffer is None:
            self._buffer = probabilities.copy()
        else:
            self._buffer = np.concatenate([self._buffer, probabilities], axis=1)
        while self._core_top < self.height:
            core_bottom = min(self._core_top + self.band_rows, self.height)
            if self.rows_seen < min(core_bottom + self.halo, self.height):
                return
            yield self._process(core_bottom)

    def finish(self) -> Iterator[Band]:
        """Process what is left; check every row came."""
        if self.rows_seen != self.height:
            raise ValueError(f"{self.name}: prediction covered {self.rows_seen} of {self.height} rows")
        if self._core_top < self.height:  # nothing was added (an image of zero width)
            raise ValueError(f"{self.name}: no probabilities were given")
        yield from ()
        if self.cut_objects:
            logger.warning(
                "%s: %d nuclei taller than %d rows may be cut at band borders (raise max_object_rows)",
                self.name,
                self.cut_objects,
                self.halo,
            )

    def _process(self, core_bottom: int) -> Band:
        assert self._buffer is not None
        top = self._core_top
        window_top = max(0, top - self.halo)
        window_bottom = min(self.height, core_bottom + self.halo)
        window = self._buffer[:, window_top - self._buffer_top : window_bottom - self._buffer_top]
        labels = np.asarray(self.labeller(window))
        values, first = np.unique(labels.ravel(), return_index=True)
        keep = values != 0
        values, first = values[keep], first[keep]
        first_row = first // labels.shape[1] + window_top
        owned = (first_row >= top) & (first_row < core_bottom)
        values, first = values[owned], first[owned]
        order = np.argsort(first, kind="stable")
        values = values[order]
        count = len(values)
        local = np.zeros(labels.shape, dtype=np.int32)
        if count:
            sorter = np.argsort(values)
            index = np.clip(np.searchsorted(values, labels, sorter=sorter), 0, count - 1)
            match = values[sorter[index]] == labels
            local = np.where(match & (labels != 0), sorter[index] + 1, 0).astype(np.int32)
            if window_bottom < self.height:
                self.cut_objects += int(np.count_nonzero(np.unique(local[-1])))
        first_id = self._next_id
        self._next_id += count
        global_rows = np.where(local[top - window_top :] > 0, local[top - window_top :] + (first_id - 1), 0)
        global_rows = global_rows.astype(np.int32)
        if self._carry is not None:
            carried = self._carry[: len(global_rows)]
            global_rows[: len(carried)] = np.where(carried > 0, carried, global_rows[: len(carried)])
        core = core_bottom - top
        self._carry = global_rows[core:]
        self._core_top = core_bottom
        next_window_top = max(0, core_bottom - self.halo)
        drop = next_window_top - self._buffer_top
        if drop > 0:
            self._buffer = self._buffer[:, drop:]
            self._buffer_top = next_window_top
        return Band(top, global_rows[:core], window_top, local, first_id)
