"""Stain normalisation: Macenko (torchstain, torch backend) fitted once, applied per image, cached.

Why: H&E colour varies between hospitals and scanners; mapping every image onto the stain
vectors of one reference image removes much of that variation before training and prediction.

Rules, documented once:

- **Fit once.** ``MacenkoStainNormalizer.fit(reference)`` estimates the reference stain matrix
  (``HERef``, 3x2) and the 99th-percentile stain concentrations (``maxCRef``). Both go into
  ``state_dict()`` as plain lists, so a checkpoint carries them and prediction needs no training
  data. A reference with too little tissue raises ``StainNormalizationError``.
- **Low-tissue fallback.** An image with fewer tissue pixels than
  ``max(min_tissue_pixels, min_tissue_fraction * pixels)`` (a pixel is tissue when its optical
  density is at least ``beta`` in every channel, torchstain's own rule), or on which torchstain
  fails (``IndexError`` from ``kthvalue`` on an empty selection, any ``torch.linalg`` error) or
  gives a non-finite result, is returned unchanged. The fallback is logged as a warning naming
  the image and counted in ``fallback_count`` / ``fallback_names``; it never raises.
- **Estimate, then apply.** Macenko has two halves. ``estimate_source(image)`` finds the
  *source* stain matrix (3x2) and 99th-percentile concentrations of an image with torchstain
  (a ``SourceStainEstimate``; None on the low-tissue fallback, which it records).
  ``apply(region, estimate)`` maps any region with that fixed estimate: a pixelwise optical
  density transform, ``RGB = Io exp(-HERef diag(maxCRef / maxC) pinv(HE) OD)``, torchstain's
  formula with its ``lstsq`` written as the pseudo-inverse. It is evaluated from per-channel
  lookup tables (a product of three 256-entry tables per output channel), so a pixel's result
  depends only on its own RGB: applying one estimate block by block, in any layout, gives
  exactly the pixels of applying it to the whole image (no seams). ``normalize`` estimates on
  the image it gets and maps that same image, so one image always gets one stain transform.
- **Large images.** Images up to ``max_pixels`` (default 4096 x 4096) are normalised in one
  torchstain call (MoNuSeg's 1000 x 1000 takes about 45 ms, peak memory ~100 bytes per pixel);
  ``estimate_source`` + ``apply`` on them matches it within one grey level (float rounding).
  Larger images would need gigabytes that way, so their estimate is taken on a regular
  subsample of at most about ``max_pixels`` pixels and ``apply`` maps the image in blocks.
  Images too large to hold at all are streamed (``nucseg.inference.streaming``): their one
  estimate comes from a thumbnail of at most ``DEFAULT_OVERVIEW_PIXELS`` (2048 x 2048) pixels
  read region by region, and ``apply`` maps each streamed block.
- **Output** is always (H, W, 3) uint8 clipped to 0..255; like torchstain, values are truncated.
- **Cache.** ``StainNormalizationCache`` keys a result by sha256 of the image bytes, shape and
  dtype combined with ``normalizer.fingerprint()`` (method, parameters and fitted reference) and
  the installed torch and torchstain versions (a cache filled by other versions is not reused).
  A normalised image is stored as ``<key>.npy``; a fallback is stored as a small marker
  ``<key>.fallback.json`` (the result is the input itself, so no pixels are stored). On a hit
  of a marker the fallback is counted and logged again, so a cached run reports the same
  fallback count as the run that filled the cache. Unreadable entries are recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucseg.data.types import AnnotatedImage
from nucseg.utils.atomic import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

_CACHE_FORMAT = "nucseg-stain-cache-v1"


class StainNormalizationError(ValueError):
    """A normaliser cannot be fitted, is used before fitting, or gets an invalid image or state."""


def _check_rgb_uint8(image: np.ndarray, name: str) -> None:
    """Raise a one-line error unless ``image`` is (H, W, 3) uint8."""
    valid = isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == 3
    if not valid or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise StainNormalizationError(f"{name}: expected an (H, W, 3) uint8 RGB image, got {shape} {dtype}")


@dataclass(frozen=True, eq=False)
class SourceStainEstimate:
    """The stains of one source image: all ``apply`` needs to map any region of it.

    Kept apart from the pixels so that a large image is estimated once (from a thumbnail) and
    every block of it is then mapped with the same transform.

    Attributes:
        stain_matrix: (3, 2) float64, optical density of haematoxylin (column 0) and eosin (1).
        max_concentrations: (2,) float64, the 99th-percentile concentration of each stain.
    """

    stain_matrix: np.ndarray
    max_concentrations: np.ndarray

    def __post_init__(self) -> None:
        matrix = np.asarray(self.stain_matrix, dtype=np.float64)
        concentrations = np.asarray(self.max_concentrations, dtype=np.float64)
        if matrix.shape != (3, 2) or concentrations.shape != (2,):
            raise StainNormalizationError(
                f"source stain estimate: expected a 3x2 stain matrix and 2 concentrations, "
                f"got {matrix.shape} and {concentrations.shape}"
            )
        finite = np.isfinite(matrix).all() and np.isfinite(concentrations).all()
        if not (finite and (concentrations > 0).all()):
            raise StainNormalizationError(
                f"source stain estimate: degenerate (HE={matrix.tolist()}, maxC={concentrations.tolist()})"
            )
        object.__setattr__(self, "stain_matrix", matrix)
        object.__setattr__(self, "max_concentrations", concentrations)


class StainNormalizer:
    """Common interface of the stain normalisers (``method`` names the registry entry).

    Attributes:
        fallback_count: number of images returned unchanged because normalisation was impossible.
        fallback_names: the names of those images, in order (``"<unnamed>"`` when none was given).
        last_fallback_reason: why the latest fallback happened (stored in cache markers).
    """

    method: str = ""
    #: Whether a result is worth caching on disk (the identity is not).
    cacheable: bool = True

    def __init__(self) -> None:
        self.fallback_count = 0
        self.fallback_names: list[str] = []
        self.last_fallback_reason: str | None = None

    @property
    def is_fitted(self) -> bool:
        """Whether ``normalize`` can be called."""
        raise NotImplementedError

    def fit(self, reference: np.ndarray) -> StainNormalizer:
        """Fit to a reference (H, W, 3) uint8 image and return ``self``."""
        raise NotImplementedError

    def normalize(self, image: np.ndarray, name: str | None = None) -> np.ndarray:
        """Return the normalised (H, W, 3) uint8 image (the input unchanged on a fallback)."""
        raise NotImplementedError

    def estimate_source(self, image: np.ndarray, name: str | None = None) -> SourceStainEstimate | None:
        """Estimate the stains of ``image`` (None: nothing to apply, e.g. a recorded fallback)."""
        raise NotImplementedError

    def apply(self, image: np.ndarray, estimate: SourceStainEstimate | None) -> np.ndarray:
        """Map ``image`` (any region of the estimated image) with a fixed estimate; None: unchanged."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this normaliser, as JSON-compatible values."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore parameters and fitted reference from ``state_dict()`` output."""
        raise NotImplementedError

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> StainNormalizer:
        """Build a normaliser of this class from ``state_dict()`` output."""
        normalizer = cls()
        normalizer.load_state_dict(state)
        return normalizer

    def fingerprint(self) -> str:
        """sha256 of the method, its parameters and the fitted reference (part of the cache key)."""
        text = json.dumps(self.state_dict(), sort_keys=True, allow_nan=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def record_fallback(self, name: str | None, reason: str) -> None:
        """Count and log an image that is returned unchanged (also called by the cache on a hit)."""
        label = name if name else "<unnamed>"
        self.fallback_count += 1
        self.fallback_names.append(label)
        self.last_fallback_reason = reason
        logger.warning("stain normalisation skipped for %s (%s): image used unchanged", label, reason)


class IdentityStainNormalizer(StainNormalizer):
    """Method ``"none"``: returns images unchanged, so configs can turn normalisation off."""

    method = "none"
    cacheable = False

    @property
    def is_fitted(self) -> bool:
        """Always true: there is nothing to fit."""
        return True

    def fit(self, reference: np.ndarray) -> IdentityStainNormalizer:
        """Accept and ignore the reference (kept so that callers need no special case)."""
        _check_rgb_uint8(reference, "stain reference")
        return self

    def normalize(self, image: np.ndarray, name: str | None = None) -> np.ndarray:
        """Return a copy of ``image``."""
        _check_rgb_uint8(image, name or "<unnamed>")
        return image.copy()

    def estimate_source(self, image: np.ndarray, name: str | None = None) -> None:
        """Nothing to estimate: returns None (which ``apply`` treats as "unchanged")."""
        _check_rgb_uint8(image, name or "<unnamed>")
        return None

    def apply(self, image: np.ndarray, estimate: SourceStainEstimate | None) -> np.ndarray:
        """Return a copy of ``image`` whatever the estimate."""
        _check_rgb_uint8(image, "<region>")
        return image.copy()

    def state_dict(self) -> dict[str, Any]:
        """Only the method name."""
        return {"method": self.method}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check that ``state`` belongs to this method."""
        _check_method(state, self.method)


class MacenkoStainNormalizer(StainNormalizer):
    """Macenko et al. (ISBI 2009) normalisation through torchstain's torch backend.

    Args:
        Io: transmitted light intensity (the white level of the scanner).
        alpha: percentile (in %) of the stain-angle distribution taken as the extreme stain vectors.
        beta: optical density below which a pixel counts as background (transparent).
        min_tissue_pixels: fewer tissue pixels than this makes the stain estimate meaningless.
        min_tissue_fraction: likewise as a fraction of the image; the larger threshold applies.
        max_pixels: images larger than this are estimated on a subsample and mapped in chunks
            (see the module docstring) to bound memory.
    """

    method = "macenko"

    def __init__(
        self,
        Io: int = 240,  # noqa: N803 - torchstain's and Macenko's name
        alpha: float = 1.0,
        beta: float = 0.15,
        min_tissue_pixels: int = 100,
        min_tissue_fraction: float = 0.01,
        max_pixels: int = 4096 * 4096,
    ) -> None:
        super().__init__()
        if not Io > 0 or not 0.0 <= alpha < 50.0 or not beta >= 0.0:
            raise StainNormalizationError(f"macenko: invalid parameters Io={Io}, alpha={alpha}, beta={beta}")
        if min_tissue_pixels < 2 or not 0.0 <= min_tissue_fraction <= 1.0 or max_pixels < 1:
            raise StainNormalizationError(
                f"macenko: invalid min_tissue_pixels={min_tissue_pixels} (>= 2), "
                f"min_tissue_fraction={min_tissue_fraction} (0..1) or max_pixels={max_pixels} (>= 1)"
            )
        self.Io = int(Io)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.min_tissue_pixels = int(min_tissue_pixels)
        self.min_tissue_fraction = float(min_tissue_fraction)
        self.max_pixels = int(max_pixels)
        self._he_ref: torch.Tensor | None = None  # (3, 2) float32
        self._max_c_ref: torch.Tensor | None = None  # (2,) float32
        self._torchstain = self._new_torchstain()

    # -- fitting and state ---------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        """Whether a reference has been fitted or loaded."""
        return self._he_ref is not None

    def fit(self, reference: np.ndarray) -> MacenkoStainNormalizer:
        """Estimate the reference stain matrix and concentrations from ``reference``.

        Raises:
            StainNormalizationError: the reference is not RGB uint8, has too little tissue, or
                gives a degenerate (non-finite or zero) stain estimate.
        """
        _check_rgb_uint8(reference, "stain reference")
        tissue, needed = self._tissue_pixels(reference), self._needed_tissue_pixels(reference)
        if tissue < needed:
            raise StainNormalizationError(
                f"stain reference: only {tissue} tissue pixels ({tissue / _pixels(reference):.2%}), "
                f"need {needed}; choose a reference image with more tissue"
            )
        try:
            he_ref, max_c_ref = self._estimate(reference)
        except (IndexError, RuntimeError) as error:
            raise StainNormalizationError(
                f"stain reference: Macenko estimate failed ({type(error).__name__}: {error})"
            ) from error
        self._set_reference(he_ref, max_c_ref, source="stain reference")
        return self

    def state_dict(self) -> dict[str, Any]:
        """Parameters and fitted reference as plain lists (``HERef``/``maxCRef`` are None unfitted)."""
        return {
            "method": self.method,
            "Io": self.Io,
            "alpha": self.alpha,
            "beta": self.beta,
            "min_tissue_pixels": self.min_tissue_pixels,
            "min_tissue_fraction": self.min_tissue_fraction,
            "max_pixels": self.max_pixels,
            "HERef": None if self._he_ref is None else self._he_ref.tolist(),
            "maxCRef": None if self._max_c_ref is None else self._max_c_ref.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore parameters and reference from ``state_dict()`` output (missing params keep defaults)."""
        _check_method(state, self.method)
        params = {key: state[key] for key in _MACENKO_PARAMS if key in state}
        fresh = MacenkoStainNormalizer(**params)  # validates the parameters
        for key in _MACENKO_PARAMS:
            setattr(self, key, getattr(fresh, key))
        if state.get("HERef") is None or state.get("maxCRef") is None:
            self._he_ref = self._max_c_ref = None
            return
        try:
            he_ref = torch.tensor(state["HERef"], dtype=torch.float32)
            max_c_ref = torch.tensor(state["maxCRef"], dtype=torch.float32)
        except (TypeError, ValueError) as error:
            raise StainNormalizationError(
                f"stain state: HERef/maxCRef are not numeric lists ({error})"
            ) from error
        self._set_reference(he_ref, max_c_ref, source="stain state")

    def fingerprint(self) -> str:
        """sha256 of the parameters and fitted reference; fails when unfitted (nothing to key on)."""
        self._require_fitted()
        return super().fingerprint()

    # -- normalisation -------------------------------------------------------------------------

    def normalize(self, image: np.ndarray, name: str | None = None) -> np.ndarray:
        """Map ``image`` onto the reference stains; on a low-tissue image return it unchanged.

        The stains are estimated on ``image`` itself, so the whole image gets one transform.
        Up to ``max_pixels`` this is one torchstain call (the path training data takes);
        larger images go through ``estimate_source`` + ``apply`` to bound memory.

        Args:
            image: (H, W, 3) uint8 RGB.
            name: used in the fallback warning and ``fallback_names``.

        Returns:
            (H, W, 3) uint8; a copy of ``image`` when the fallback applies (see module docstring).

        Raises:
            StainNormalizationError: the normaliser is not fitted or ``image`` is not RGB uint8.
        """
        self._require_fitted()
        _check_rgb_uint8(image, name or "<unnamed>")
        if _pixels(image) > self.max_pixels:
            return self.apply(image, self.estimate_source(image, name=name))
        reason = self._low_tissue_reason(image)
        if reason is not None:
            self.record_fallback(name, reason)
            return image.copy()
        try:
            result = self._normalize_in_one_go(image)
        except (IndexError, RuntimeError) as error:  # torch.linalg errors are RuntimeErrors
            self.record_fallback(name, f"{type(error).__name__}: {error}")
            return image.copy()
        if result is None:
            self.record_fallback(name, "non-finite result")
            return image.copy()
        return result

    def estimate_source(self, image: np.ndarray, name: str | None = None) -> SourceStainEstimate | None:
        """Estimate the source stains of ``image`` once, to ``apply`` them to any region of it.

        Why separate: a streamed slide is never in memory whole, so its stains are estimated on
        a thumbnail and every block is then mapped with this one estimate (no seams between
        blocks). The fallback rules are those of ``normalize`` (tissue threshold, torchstain
        errors, degenerate result); an image above ``max_pixels`` is estimated on a subsample.

        Args:
            image: (H, W, 3) uint8 RGB, the whole image or a thumbnail of it.
            name: used in the fallback warning and ``fallback_names``.

        Returns:
            The estimate, or None when the fallback applies; the fallback is then recorded here,
            once, and ``apply(region, None)`` returns regions unchanged without counting again.

        Raises:
            StainNormalizationError: the normaliser is not fitted or ``image`` is not RGB uint8.
        """
        self._require_fitted()
        _check_rgb_uint8(image, name or "<unnamed>")
        reason = self._low_tissue_reason(image)
        if reason is None:
            estimate, reason = self._try_estimate(self._estimation_sample(image))
            if estimate is not None:
                return estimate
        self.record_fallback(name, reason or "no stain estimate")
        return None

    def apply(self, image: np.ndarray, estimate: SourceStainEstimate | None) -> np.ndarray:
        """Map ``image`` (any region of the estimated image) onto the reference with a fixed estimate.

        Pixelwise, so regions can be mapped separately and put together without seams.

        Args:
            image: (h, w, 3) uint8 RGB.
            estimate: from ``estimate_source``; None (the recorded fallback) returns a copy.

        Returns:
            (h, w, 3) uint8, values truncated like torchstain's.

        Raises:
            StainNormalizationError: unfitted, not RGB uint8, or an estimate whose transform
                overflows (``estimate_source`` never returns such an estimate).
        """
        self._require_fitted()
        _check_rgb_uint8(image, "stain region")
        if estimate is None:
            return image.copy()
        tables = self._lookup_tables(estimate)
        flat = image.reshape(-1, 3)
        output = np.empty_like(flat)
        for start in range(0, flat.shape[0], _APPLY_CHUNK_PIXELS):
            chunk = flat[start : start + _APPLY_CHUNK_PIXELS]
            rgb = tables[0][chunk[:, 0]]
            rgb *= tables[1][chunk[:, 1]]
            rgb *= tables[2][chunk[:, 2]]
            np.minimum(rgb, 255.0, out=rgb)
            output[start : start + _APPLY_CHUNK_PIXELS] = rgb.astype(np.uint8)
        return output.reshape(image.shape)

    # -- internals -----------------------------------------------------------------------------

    def _new_torchstain(self) -> Any:
        """A fresh torchstain Macenko normaliser (torch backend)."""
        import torchstain

        return torchstain.normalizers.MacenkoNormalizer(backend="torch")

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise StainNormalizationError(
                "macenko stain normaliser is not fitted: call fit(reference) or load_state_dict(state) first"
            )

    def _set_reference(self, he_ref: torch.Tensor, max_c_ref: torch.Tensor, source: str) -> None:
        """Validate and store the reference, and hand it to the torchstain object."""
        he_ref = he_ref.detach().to(torch.float32).cpu()
        max_c_ref = max_c_ref.detach().to(torch.float32).cpu()
        if tuple(he_ref.shape) != (3, 2) or tuple(max_c_ref.shape) != (2,):
            raise StainNormalizationError(
                f"{source}: HERef must be 3x2 and maxCRef 2 values, "
                f"got {tuple(he_ref.shape)} and {tuple(max_c_ref.shape)}"
            )
        if not (torch.isfinite(he_ref).all() and torch.isfinite(max_c_ref).all() and (max_c_ref > 0).all()):
            raise StainNormalizationError(
                f"{source}: degenerate stain estimate (HERef={he_ref.tolist()}, maxCRef={max_c_ref.tolist()})"
            )
        self._he_ref, self._max_c_ref = he_ref, max_c_ref
        self._torchstain.HERef = he_ref.clone()
        self._torchstain.maxCRef = max_c_ref.clone()

    def _tissue_pixels(self, image: np.ndarray) -> int:
        """Pixels whose optical density is at least ``beta`` in every channel (torchstain's rule)."""
        # OD = -log((I + 1) / Io) >= beta  <=>  I <= Io * exp(-beta) - 1, so no logarithms are needed.
        threshold = self.Io * math.exp(-self.beta) - 1.0
        return int(np.count_nonzero((image <= threshold).all(axis=-1)))

    def _needed_tissue_pixels(self, image: np.ndarray) -> int:
        return max(self.min_tissue_pixels, math.ceil(self.min_tissue_fraction * _pixels(image)))

    def _estimate(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """torchstain's stain matrix and 99th-percentile concentrations of ``image``."""
        estimator = self._new_torchstain()
        estimator.fit(_to_chw(image), Io=self.Io, alpha=self.alpha, beta=self.beta)
        return estimator.HERef, estimator.maxCRef

    def _normalize_in_one_go(self, image: np.ndarray) -> np.ndarray | None:
        """One torchstain call; None when the result is not finite."""
        with torch.no_grad():
            normalized, _, _ = self._torchstain.normalize(
                _to_chw(image), Io=self.Io, alpha=self.alpha, beta=self.beta, stains=False
            )
        # torchstain caps at 255 before ``.int()``; a NaN becomes a negative integer there.
        if bool((normalized < 0).any()):
            return None
        return normalized.clamp_(0, 255).to(torch.uint8).numpy()

    def _low_tissue_reason(self, image: np.ndarray) -> str | None:
        """Why ``image`` has too little tissue for a stain estimate, or None when it has enough."""
        tissue, needed = self._tissue_pixels(image), self._needed_tissue_pixels(image)
        return None if tissue >= needed else f"too little tissue: {tissue} pixels, need {needed}"

    def _estimation_sample(self, image: np.ndarray) -> np.ndarray:
        """``image``, or above ``max_pixels`` a regular subsample of about that many pixels."""
        if _pixels(image) <= self.max_pixels:
            return image
        stride = math.ceil(math.sqrt(_pixels(image) / self.max_pixels))
        return np.ascontiguousarray(image[::stride, ::stride])

    def _try_estimate(self, image: np.ndarray) -> tuple[SourceStainEstimate | None, str | None]:
        """torchstain's source estimate of ``image`` and None, or None and why it failed."""
        try:
            he_src, max_c_src = self._estimate(image)
            estimate = SourceStainEstimate(
                he_src.detach().cpu().to(torch.float64).numpy(),
                max_c_src.detach().cpu().to(torch.float64).numpy(),
            )
            self._lookup_tables(estimate)  # refuse an estimate whose transform overflows now
        except (IndexError, RuntimeError) as error:  # torch.linalg errors are RuntimeErrors
            return None, f"{type(error).__name__}: {error}"
        except StainNormalizationError as error:
            return None, f"non-finite result ({error})"
        return estimate, None

    def _lookup_tables(self, estimate: SourceStainEstimate) -> np.ndarray:
        """Per-channel factors of the fixed transform: (3 input channels, 256 levels, 3 outputs).

        torchstain computes ``C = lstsq(HE, OD)``, scales it by ``maxCRef / maxC`` and returns
        ``Io exp(-HERef C)``. With ``M = HERef diag(maxCRef / maxC) pinv(HE)`` (3x3) that is
        ``Io prod_j exp(-M[:, j] OD_j)``: each factor depends on one input channel's level, so
        it is tabulated and a pixel costs three look-ups and two products, bit-identical
        wherever the pixel sits in whatever region (plain float products, no vectorised exp).
        """
        assert self._he_ref is not None and self._max_c_ref is not None
        scale = self._max_c_ref.to(torch.float64).numpy() / estimate.max_concentrations
        concentrations = scale[:, None] * np.linalg.pinv(estimate.stain_matrix)  # (2, 3) per OD
        transform = self._he_ref.to(torch.float64).numpy() @ concentrations
        optical_density = -np.log((np.arange(256, dtype=np.float64) + 1.0) / self.Io)
        with np.errstate(over="ignore", under="ignore"):
            tables = np.exp(-transform.T[:, None, :] * optical_density[None, :, None])
        tables[0] *= self.Io
        if not (np.isfinite(tables).all() and (tables > 0).all()):
            raise StainNormalizationError(
                f"stain transform overflows (source HE={estimate.stain_matrix.tolist()}, "
                f"maxC={estimate.max_concentrations.tolist()})"
            )
        return tables


#: Pixels mapped per step by ``apply`` (about 6 MB of float64 temporaries), to bound memory.
_APPLY_CHUNK_PIXELS = 1 << 18

_MACENKO_PARAMS = ("Io", "alpha", "beta", "min_tissue_pixels", "min_tissue_fraction", "max_pixels")


def _check_method(state: dict[str, Any], method: str) -> None:
    """Refuse a state dict written by another method."""
    found = state.get("method") if isinstance(state, dict) else None
    if found != method:
        raise StainNormalizationError(f"stain state: method {found!r} is not {method!r}")


def _pixels(image: np.ndarray) -> int:
    return int(image.shape[0] * image.shape[1])


def _to_chw(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 numpy -> (3, H, W) uint8 tensor, as torchstain expects."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


# -- registry ---------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., StainNormalizer]] = {
    "macenko": MacenkoStainNormalizer,
    "none": IdentityStainNormalizer,
}


def build_stain_normalizer(method: str = "macenko", **params: Any) -> StainNormalizer:
    """Build an (unfitted) normaliser by method name: ``"macenko"`` or ``"none"``."""
    if method not in _REGISTRY:
        raise StainNormalizationError(
            f"unknown stain normalisation method {method!r}; known: {sorted(_REGISTRY)}"
        )
    try:
        return _REGISTRY[method](**params)
    except TypeError as error:
        raise StainNormalizationError(f"stain method {method!r}: invalid parameters ({error})") from error


def stain_normalizer_from_state_dict(state: dict[str, Any]) -> StainNormalizer:
    """Rebuild a fitted normaliser of any registered method from ``state_dict()`` output."""
    method = state.get("method") if isinstance(state, dict) else None
    if method not in _REGISTRY:
        raise StainNormalizationError(f"stain state: unknown method {method!r}; known: {sorted(_REGISTRY)}")
    normalizer = _REGISTRY[method]()
    normalizer.load_state_dict(state)
    return normalizer


# -- cache ------------------------------------------------------------------------------------


@functools.cache
def library_versions() -> str:
    """``torch=<version>|torchstain=<version>`` ("absent" when torchstain is not installed)."""
    try:
        torchstain_version = importlib.metadata.version("torchstain")
    except importlib.metadata.PackageNotFoundError:
        torchstain_version = "absent"
    return f"torch={torch.__version__}|torchstain={torchstain_version}"


class StainNormalizationCache:
    """Normalised images on disk, keyed by image content, normaliser fingerprint and library versions.

    Entries are written atomically, so concurrent processes (DDP ranks, multirun jobs) at worst
    compute the same entry twice. See the module docstring for the layout and the fallback rule.

    Attributes:
        hits: results read from disk.
        misses: results computed (including recomputed unreadable entries).
    """

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.cache_dir = Path(cache_dir)
        self.hits = 0
        self.misses = 0

    def key(self, image: np.ndarray, normalizer: StainNormalizer) -> str:
        """sha256 of the image bytes, shape and dtype, the normaliser fingerprint and the versions
        of torch and torchstain (another version may round differently: its entries are not reused).
        """
        digest = hashlib.sha256()
        digest.update(f"{_CACHE_FORMAT}|{image.shape}|{image.dtype.str}|".encode())
        digest.update(np.ascontiguousarray(image).data)
        digest.update(f"|{normalizer.fingerprint()}|{library_versions()}".encode())
        return digest.hexdigest()

    def normalize(
        self, image: np.ndarray, normalizer: StainNormalizer, name: str | None = None
    ) -> np.ndarray:
        """Return ``normalizer.normalize(image)``, from the cache when present.

        A normaliser that is not ``cacheable`` (the identity) bypasses the cache and its counters.
        """
        if not normalizer.cacheable:
            return normalizer.normalize(image, name=name)
        _check_rgb_uint8(image, name or "<unnamed>")
        key = self.key(image, normalizer)
        array_path = self.cache_dir / f"{key}.npy"
        marker_path = self.cache_dir / f"{key}.fallback.json"

        cached = self._load_array(array_path, image)
        if cached is not None:
            self.hits += 1
            return cached
        reason = self._load_marker(marker_path)
        if reason is not None:
            self.hits += 1
            normalizer.record_fallback(name, f"cached: {reason}")
            return image.copy()

        self.misses += 1
        before = normalizer.fallback_count
        result = normalizer.normalize(image, name=name)
        if normalizer.fallback_count > before:
            marker = {"format": _CACHE_FORMAT, "name": name, "reason": normalizer.last_fallback_reason}
            atomic_write_json(marker_path, marker)
        else:
            with atomic_path(array_path) as tmp:
                np.save(tmp, result, allow_pickle=False)
        return result

    @staticmethod
    def _load_array(path: Path, image: np.ndarray) -> np.ndarray | None:
        """The cached array, or None when absent or unreadable (then it is removed)."""
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            logger.warning("stain cache: %s is unreadable (%s); recomputing", path, error)
            path.unlink(missing_ok=True)
            return None
        if array.shape != image.shape or array.dtype != np.uint8:
            logger.warning("stain cache: %s holds %s %s, expected %s uint8; recomputing",
                           path, array.shape, array.dtype, image.shape)
            path.unlink(missing_ok=True)
            return None
        return array

    @staticmethod
    def _load_marker(path: Path) -> str | None:
        """The recorded fallback reason, or None when absent or unreadable (then it is removed)."""
        if not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("format") != _CACHE_FORMAT:
                raise ValueError(f"unexpected format {payload.get('format')!r}")
            return str(payload.get("reason") or "fallback")
        except (OSError, ValueError, AttributeError) as error:
            logger.warning("stain cache: %s is unreadable (%s); recomputing", path, error)
            path.unlink(missing_ok=True)
            return None


# -- whole data sets --------------------------------------------------------------------------


def normalize_images(
    images: list[AnnotatedImage],
    normalizer: StainNormalizer,
    cache: StainNormalizationCache | None = None,
) -> list[AnnotatedImage]:
    """Stain-normalise every image (labels untouched) and log one summary line.

    Returns:
        New ``AnnotatedImage`` objects in the same order; the inputs are not modified.
    """
    start = time.perf_counter()
    hits_before = cache.hits if cache is not None else 0
    misses_before = cache.misses if cache is not None else 0
    fallbacks_before = normalizer.fallback_count
    result = []
    for item in images:
        if cache is not None:
            normalized = cache.normalize(item.image, normalizer, name=item.name)
        else:
            normalized = normalizer.normalize(item.image, name=item.name)
        result.append(AnnotatedImage(name=item.name, image=normalized, instance_labels=item.instance_labels))
    fallback_names = normalizer.fallback_names[fallbacks_before:]
    cache_text = (
        f"cache {cache.hits - hits_before} hits / {cache.misses - misses_before} misses"
        if cache is not None
        else "no cache"
    )
    logger.info(
        "stain normalisation (%s): %d images, %s, %d fallbacks%s, %.2f s",
        normalizer.method,
        len(images),
        cache_text,
        len(fallback_names),
        f" ({', '.join(fallback_names)})" if fallback_names else "",
        time.perf_counter() - start,
    )
    return result
