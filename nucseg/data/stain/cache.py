"""Normalised images on disk, and the data module's entry point that uses them.

``StainNormalizationCache`` keys a result by sha256 of the image bytes, shape and dtype combined
with ``normalizer.fingerprint()`` (method, parameters and fitted reference) and the installed
torch and torchstain versions (a cache filled by other versions is not reused). A normalised
image is stored as ``<key>.npy``; a fallback as a small marker ``<key>.fallback.json`` (the
result is the input itself, so no pixels are stored). On a hit of a marker the fallback is
counted and logged again, so a cached run reports the same fallback count as the run that
filled the cache. Unreadable entries are recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from nucseg.data.stain.estimate import check_rgb_uint8
from nucseg.data.stain.normalizer import StainNormalizer
from nucseg.data.types import AnnotatedImage
from nucseg.utils.atomic import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

#: Part of every key; v2: images above ``max_pixels`` are mapped with torchstain's transform
#: (``apply_stain_transform``) rather than v1's float64 lookup tables.
_CACHE_FORMAT = "nucseg-stain-cache-v2"


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
        check_rgb_uint8(image, name or "<unnamed>")
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
