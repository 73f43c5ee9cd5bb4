"""Check a MoNuSeg data root before any training: every problem at once, nothing changed silently.

``python -m nucseg.data.check ROOT`` (or ``make check-data ROOT=...``) runs the check alone;
``train.py`` runs it before the first training step on every split the run uses (train, whose
held-out images are the validation set, and test).

What is read, once per file, so that the check costs seconds on MoNuSeg:

- images: the bytes (hashed for the run's record) and the header (size, channels, bit depth,
  and for TIFF whether the file holds all the bytes its strips or tiles claim); pixels are not
  decoded;
- XML annotations: parsed with :func:`nucseg.data.annotations.parse_aperio_xml`; their vertices
  are compared with the image's size;
- label maps: decoded (they are small) to check shape, type and that they hold nuclei.

Problems (the run cannot be right) are collected, one line per file with the reason and the fix,
and raised together as :class:`DataCheckError`. Changes that alter what the model sees without
being wrong (alpha dropped, greyscale replicated, 16-bit scaled, degenerate regions skipped,
vertices clipped at the border, XML preferred over a label map, files without an image ignored)
are counted and listed in the report, which the training run logs and stores in ``metrics.json``.

Modules: :mod:`~nucseg.data.check.headers` (image headers without pixels),
:mod:`~nucseg.data.check.report` (problems, changes, :class:`DataCheckError`),
:mod:`~nucseg.data.check.checker` (the walk over the files), :mod:`~nucseg.data.check.cli`.
"""
from nucseg.data.check.checker import OUTSIDE_TOLERANCE_PX, check_data_source, check_monuseg_root
from nucseg.data.check.cli import main
from nucseg.data.check.headers import ImageHeader, read_image_header
from nucseg.data.check.report import (
    DEGENERATE_REGIONS_SKIPPED,
    FILES_IGNORED,
    ORPHAN_ANNOTATIONS_IGNORED,
    VERTICES_CLIPPED,
    XML_PREFERRED_OVER_LABEL_MAP,
    DataCheckError,
    DataCheckReport,
    DataProblem,
)

__all__ = [
    "DEGENERATE_REGIONS_SKIPPED",
    "FILES_IGNORED",
    "ORPHAN_ANNOTATIONS_IGNORED",
    "OUTSIDE_TOLERANCE_PX",
    "VERTICES_CLIPPED",
    "XML_PREFERRED_OVER_LABEL_MAP",
    "DataCheckError",
    "DataCheckReport",
    "DataProblem",
    "ImageHeader",
    "check_data_source",
    "check_monuseg_root",
    "main",
    "read_image_header",
]
