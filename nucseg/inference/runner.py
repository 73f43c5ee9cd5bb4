"""Moved to ``nucseg.predict.runner``; these names stay importable from here."""

from nucseg.predict.runner import (
    DEFAULT_STREAM_ABOVE,
    SLIDE_SUFFIXES,
    ImageResult,
    background_logits,
    is_slide,
    predict_file,
    work_grid,
)

__all__ = [
    "DEFAULT_STREAM_ABOVE",
    "SLIDE_SUFFIXES",
    "ImageResult",
    "background_logits",
    "is_slide",
    "predict_file",
    "work_grid",
]
