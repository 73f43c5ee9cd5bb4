"""Predict nuclei in images with a trained model: the command, the per-file runner, the outputs.

- ``nucseg.predict.cli``: ``python -m nucseg.predict`` / ``predict.py`` (``main``);
- ``nucseg.predict.runner``: one file in, its outputs written (``predict_file``);
- ``nucseg.predict.outputs``: the files of one image (``write_outputs``);
- ``nucseg.predict.grid``: their names (``OutputPaths``) and pixel grids (``ImageGrid``).

The engine (sliding window, TTA, streaming) is ``nucseg.inference``; reading and the
intermediate rasters are ``nucseg.io``.
"""

from nucseg.predict.cli import build_parser, collect_inputs, main, unique_stems
from nucseg.predict.grid import ImageGrid, OutputPaths
from nucseg.predict.outputs import write_image_outputs, write_outputs
from nucseg.predict.runner import ImageResult, predict_file

__all__ = [
    "ImageGrid",
    "ImageResult",
    "OutputPaths",
    "build_parser",
    "collect_inputs",
    "main",
    "predict_file",
    "unique_stems",
    "write_image_outputs",
    "write_outputs",
]
