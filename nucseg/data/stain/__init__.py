"""Stain normalisation: Macenko (torchstain) fitted once, estimated per image, applied, cached.

Why: H&E colour varies between hospitals and scanners; mapping every image onto the stain
vectors of one reference image removes much of that variation before training and prediction.

One concern per module:

- ``estimate``: torchstain's Macenko estimate of an image's stains (``StainEstimate``: 3x2
  stain matrix, 99th-percentile concentrations), the tissue rule, the input check.
- ``apply``: ``apply_stain_transform``, the one function that maps pixels onto the reference,
  for training, evaluation and prediction alike (streamed blocks included).
- ``normalizer``: the normalisers by method name (``macenko``, ``none``), their fitted reference
  and ``state_dict`` (what checkpoints store), and the low-tissue fallback.
- ``cache``: normalised images on disk and ``normalize_images``, the data module's entry point.

Rules, documented once:

- **Fit once.** ``MacenkoStainNormalizer.fit(reference)`` estimates the reference stains; they go
  into ``state_dict()`` as plain lists (``HERef`` 3x2, ``maxCRef`` 2), so a checkpoint carries
  them and prediction needs no training data. A reference with too little tissue raises
  ``StainNormalizationError``.
- **One transform per image.** ``normalize(image)`` is ``apply(image, estimate_source(image))``:
  the source stains are estimated on the image itself (above ``max_pixels``, default 4096 x 4096,
  on a regular subsample) and the image mapped with them, giving exactly torchstain's
  ``normalize``. A streamed image (``nucseg.inference.streaming``) is estimated once on a
  thumbnail and every block mapped with that estimate by the same ``apply``.
- **Low-tissue fallback.** An image with fewer tissue pixels than
  ``max(min_tissue_pixels, min_tissue_fraction * pixels)`` (a pixel is tissue when its optical
  density is at least ``beta`` in every channel, torchstain's own rule), on which torchstain
  fails, or whose estimate is degenerate, is returned unchanged. The fallback is logged as a
  warning naming the image and counted in ``fallback_count`` / ``fallback_names``; it never
  raises.
- **Output** is always (H, W, 3) uint8 clipped to 0..255; like torchstain, values are truncated.
"""

from nucseg.data.stain.apply import apply_stain_transform
from nucseg.data.stain.cache import StainNormalizationCache, normalize_images
from nucseg.data.stain.estimate import StainEstimate, StainNormalizationError, estimate_stains
from nucseg.data.stain.normalizer import (
    IdentityStainNormalizer,
    MacenkoStainNormalizer,
    StainNormalizer,
    build_stain_normalizer,
    stain_normalizer_from_state_dict,
)

__all__ = [
    "IdentityStainNormalizer",
    "MacenkoStainNormalizer",
    "StainEstimate",
    "StainNormalizationCache",
    "StainNormalizationError",
    "StainNormalizer",
    "apply_stain_transform",
    "build_stain_normalizer",
    "estimate_stains",
    "normalize_images",
    "stain_normalizer_from_state_dict",
]
