"""Moved to ``nucseg.predict.outputs`` and ``nucseg.predict.grid``; these names stay importable from here."""

from nucseg.inference.instances import DEFAULT_SETTINGS, PostprocessSettings, sigmoid
from nucseg.predict.grid import ImageGrid, OutputPaths
from nucseg.predict.outputs import probability_to_uint8, write_image_outputs, write_outputs

__all__ = [
    "DEFAULT_SETTINGS",
    "ImageGrid",
    "OutputPaths",
    "PostprocessSettings",
    "probability_to_uint8",
    "sigmoid",
    "write_image_outputs",
    "write_outputs",
]
