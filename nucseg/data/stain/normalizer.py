"""Stain normalisers by method name: Macenko (fit once, estimate per image, apply) and none.

A normaliser holds the fitted reference and the parameters; its ``state_dict()`` (plain lists,
JSON-compatible) goes into checkpoints, so prediction needs no training data. The fallback rule
(an image with too little tissue, or on which the estimate fails, is used unchanged: logged,
counted, never raised) lives here, in ``estimate_source``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from nucseg.data.stain.apply import apply_stain_transform
from nucseg.data.stain.estimate import (
    StainEstimate,
    StainNormalizationError,
    check_rgb_uint8,
    estimate_stains,
    estimation_sample,
    tissue_pixels,
)

logger = logging.getLogger(__name__)


class StainNormalizer:
    """Common interface of the stain normalisers (``method`` names the registry entry).

    ``normalize(image)`` is ``apply(image, estimate_source(image))``; a streamed image is
    estimated once on a thumbnail and each block applied with that estimate.

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

    def estimate_source(self, image: np.ndarray, name: str | None = None) -> StainEstimate | None:
        """Estimate the stains of ``image`` (None: nothing to apply, e.g. a recorded fallback)."""
        raise NotImplementedError

    def apply(self, image: np.ndarray, estimate: StainEstimate | None) -> np.ndarray:
        """Map ``image`` (any region of the estimated image) with a fixed estimate; None: unchanged."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this normaliser, as JSON-compatible values."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore parameters and fitted reference from ``state_dict()`` output."""
        raise NotImplementedError

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
        check_rgb_uint8(reference, "stain reference")
        return self

    def normalize(self, image: np.ndarray, name: str | None = None) -> np.ndarray:
        """Return a copy of ``image``."""
        check_rgb_uint8(image, name or "<unnamed>")
        return image.copy()

    def estimate_source(self, image: np.ndarray, name: str | None = None) -> None:
        """Nothing to estimate: returns None (which ``apply`` treats as "unchanged")."""
        check_rgb_uint8(image, name or "<unnamed>")
        return None

    def apply(self, image: np.ndarray, estimate: StainEstimate | None) -> np.ndarray:
        """Return a copy of ``image`` whatever the estimate."""
        check_rgb_uint8(image, "stain region")
        return image.copy()

    def state_dict(self) -> dict[str, Any]:
        """Only the method name."""
        return {"method": self.method}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check that ``state`` belongs to this method."""
        _check_method(state, self.method)


class MacenkoStainNormalizer(StainNormalizer):
    """Macenko et al. (ISBI 2009) normalisation: torchstain's estimate, ``apply_stain_transform``.

    Args:
        Io: transmitted light intensity (the white level of the scanner).
        alpha: percentile (in %) of the stain-angle distribution taken as the extreme stain vectors.
        beta: optical density below which a pixel counts as background (transparent).
        min_tissue_pixels: fewer tissue pixels than this makes the stain estimate meaningless.
        min_tissue_fraction: likewise as a fraction of the image; the larger threshold applies.
        max_pixels: images larger than this are estimated on a regular subsample of about this
            many pixels, to bound memory (``estimation_sample``).

    Raises:
        StainNormalizationError: a parameter out of range.
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
        self.reference: StainEstimate | None = None

    @property
    def is_fitted(self) -> bool:
        """Whether a reference has been fitted or loaded."""
        return self.reference is not None

    def fit(self, reference: np.ndarray) -> MacenkoStainNormalizer:
        """Estimate the reference stain matrix and concentrations from ``reference``.

        Raises:
            StainNormalizationError: the reference is not RGB uint8, has too little tissue, or
                gives a degenerate (non-finite or zero) stain estimate.
        """
        check_rgb_uint8(reference, "stain reference")
        reason = self._low_tissue_reason(reference)
        if reason is not None:
            raise StainNormalizationError(f"stain reference: {reason}; choose a reference image with more tissue")
        try:
            self.reference = estimate_stains(reference, self.Io, self.alpha, self.beta)
        except (IndexError, RuntimeError, StainNormalizationError) as error:
            raise StainNormalizationError(
                f"stain reference: Macenko estimate failed ({type(error).__name__}: {error})"
            ) from error
        return self

    def state_dict(self) -> dict[str, Any]:
        """Parameters and fitted reference as plain lists (``HERef``/``maxCRef`` are None unfitted)."""
        state: dict[str, Any] = {"method": self.method, **{key: getattr(self, key) for key in _MACENKO_PARAMS}}
        state["HERef"] = None if self.reference is None else self.reference.stain_matrix.tolist()
        state["maxCRef"] = None if self.reference is None else self.reference.max_concentrations.tolist()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore parameters and reference from ``state_dict()`` output (missing params keep defaults)."""
        _check_method(state, self.method)
        params = {key: state[key] for key in _MACENKO_PARAMS if key in state}
        fresh = MacenkoStainNormalizer(**params)  # validates the parameters
        for key in _MACENKO_PARAMS:
            setattr(self, key, getattr(fresh, key))
        if state.get("HERef") is None or state.get("maxCRef") is None:
            self.reference = None
            return
        try:
            self.reference = StainEstimate(state["HERef"], state["maxCRef"])
        except StainNormalizationError as error:
            raise StainNormalizationError(f"stain state: HERef/maxCRef unusable ({error})") from error

    def fingerprint(self) -> str:
        """sha256 of the parameters and fitted reference; fails when unfitted (nothing to key on)."""
        self._require_fitted()
        return super().fingerprint()

    def normalize(self, image: np.ndarray, name: str | None = None) -> np.ndarray:
        """Map ``image`` onto the reference stains; on a low-tissue image return it unchanged.

        The stains are estimated on ``image`` itself (a subsample above ``max_pixels``), so the
        whole image gets one transform; up to ``max_pixels`` the result is exactly torchstain's
        ``normalize``.

        Args:
            image: (H, W, 3) uint8 RGB.
            name: used in the fallback warning and ``fallback_names``.

        Returns:
            (H, W, 3) uint8; a copy of ``image`` when the fallback applies.

        Raises:
            StainNormalizationError: the normaliser is not fitted or ``image`` is not RGB uint8.
        """
        estimate = self.estimate_source(image, name=name)
        try:
            return self.apply(image, estimate)
        except (RuntimeError, StainNormalizationError) as error:  # not for a checked estimate
            self.record_fallback(name, f"{type(error).__name__}: {error}")
            return image.copy()

    def estimate_source(self, image: np.ndarray, name: str | None = None) -> StainEstimate | None:
        """Estimate the source stains of ``image`` once, to ``apply`` them to any region of it.

        Why separate: a streamed slide is never in memory whole, so its stains are estimated on
        a thumbnail and every block is then mapped with this one estimate (no seams between
        blocks).

        Args:
            image: (H, W, 3) uint8 RGB, the whole image or a thumbnail of it.
            name: used in the fallback warning and ``fallback_names``.

        Returns:
            The estimate, or None when the fallback applies (too little tissue, torchstain
            failed, or a degenerate estimate); the fallback is then recorded here, once, and
            ``apply(region, None)`` returns regions unchanged without counting again.

        Raises:
            StainNormalizationError: the normaliser is not fitted or ``image`` is not RGB uint8.
        """
        self._require_fitted()
        check_rgb_uint8(image, name or "<unnamed>")
        reason = self._low_tissue_reason(image)
        if reason is None:
            try:
                return estimate_stains(estimation_sample(image, self.max_pixels), self.Io, self.alpha, self.beta)
            except (IndexError, RuntimeError) as error:  # torch.linalg errors are RuntimeErrors
                reason = f"{type(error).__name__}: {error}"
            except StainNormalizationError as error:
                reason = f"non-finite result ({error})"
        self.record_fallback(name, reason)
        return None

    def apply(self, image: np.ndarray, estimate: StainEstimate | None) -> np.ndarray:
        """Map ``image`` (any region of the estimated image) onto the reference with a fixed estimate.

        See ``apply_stain_transform``; None (the recorded fallback) returns a copy.

        Raises:
            StainNormalizationError: unfitted or not RGB uint8.
        """
        return apply_stain_transform(image, estimate, self._require_fitted(), self.Io)

    def _require_fitted(self) -> StainEstimate:
        """The fitted reference."""
        if self.reference is None:
            raise StainNormalizationError(
                "macenko stain normaliser is not fitted: call fit(reference) or load_state_dict(state) first"
            )
        return self.reference

    def _low_tissue_reason(self, image: np.ndarray) -> str | None:
        """Why ``image`` has too little tissue for a stain estimate, or None when it has enough."""
        pixels = image.shape[0] * image.shape[1]
        needed = max(self.min_tissue_pixels, math.ceil(self.min_tissue_fraction * pixels))
        tissue = tissue_pixels(image, self.Io, self.beta)
        return None if tissue >= needed else f"too little tissue: {tissue} pixels, need {needed}"


_MACENKO_PARAMS = ("Io", "alpha", "beta", "min_tissue_pixels", "min_tissue_fraction", "max_pixels")


def _check_method(state: dict[str, Any], method: str) -> None:
    """Refuse a state dict written by another method."""
    found = state.get("method") if isinstance(state, dict) else None
    if found != method:
        raise StainNormalizationError(f"stain state: method {found!r} is not {method!r}")


_REGISTRY: dict[str, Callable[..., StainNormalizer]] = {
    "macenko": MacenkoStainNormalizer,
    "none": IdentityStainNormalizer,
}


def build_stain_normalizer(method: str = "macenko", **params: Any) -> StainNormalizer:
    """Build an (unfitted) normaliser by method name: ``"macenko"`` or ``"none"``.

    Raises:
        StainNormalizationError: an unknown method or parameter.
    """
    if method not in _REGISTRY:
        raise StainNormalizationError(
            f"unknown stain normalisation method {method!r}; known: {sorted(_REGISTRY)}"
        )
    try:
        return _REGISTRY[method](**params)
    except TypeError as error:
        raise StainNormalizationError(f"stain method {method!r}: invalid parameters ({error})") from error


def stain_normalizer_from_state_dict(state: dict[str, Any]) -> StainNormalizer:
    """Rebuild a fitted normaliser of any registered method from ``state_dict()`` output.

    States written by earlier versions (any subset of the parameters, ``HERef``/``maxCRef`` as
    nested lists) load unchanged; missing parameters take their defaults.

    Raises:
        StainNormalizationError: an unknown method or an unusable state.
    """
    method = state.get("method") if isinstance(state, dict) else None
    if method not in _REGISTRY:
        raise StainNormalizationError(f"stain state: unknown method {method!r}; known: {sorted(_REGISTRY)}")
    normalizer = _REGISTRY[method]()
    normalizer.load_state_dict(state)
    return normalizer
