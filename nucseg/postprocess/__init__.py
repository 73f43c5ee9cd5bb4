"""Post-processing of predicted probabilities into instance labels, and its tuning on validation images.

``postprocess(probabilities (C, H, W), target, **params) -> (H, W) int32`` is the one entry point
for an image in memory: connected components for ``binary``, marker-controlled watershed for
``contour`` and ``distance``. ``StreamingLabeler`` labels connected components band by band.
"""

from nucseg.postprocess.instances import StreamingLabeler, foreground, label_instances
from nucseg.postprocess.tuning import DEFAULT_GRIDS, tune_on_validation, tune_postprocess
from nucseg.postprocess.watershed import (
    DEFAULT_PARAMS,
    POSTPROCESS_TARGETS,
    default_params,
    marker_watershed,
    postprocess,
)

__all__ = [
    "DEFAULT_GRIDS",
    "DEFAULT_PARAMS",
    "POSTPROCESS_TARGETS",
    "StreamingLabeler",
    "default_params",
    "foreground",
    "label_instances",
    "marker_watershed",
    "postprocess",
    "tune_on_validation",
    "tune_postprocess",
]
