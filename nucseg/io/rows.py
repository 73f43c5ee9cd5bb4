"""Intermediate rasters kept on disk: a temporary ``numpy.memmap`` per result.

Streamed prediction post-processes an image band by band; its labels and probabilities are
written rows at a time into a memory-mapped temporary file and read back by later passes (the
raster writers), so no whole-image array is held in memory. The file lives next to the outputs
(where there is room for them) and is deleted when the block ends.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


@contextmanager
def temporary_rows(
    height: int, width: int, dtype: np.dtype | type, directory: str | os.PathLike[str] | None = None
) -> Iterator[np.memmap]:
    """A zero-filled (height, width) memory-mapped array in a temporary file, deleted on exit.

    Args:
        height: Rows.
        width: Columns.
        dtype: Element type (uint8 probabilities, int32 labels).
        directory: Folder of the temporary file (default: the system's).
    """
    with tempfile.NamedTemporaryFile(prefix=".nucseg-rows-", suffix=".raw", dir=directory) as handle:
        rows = np.memmap(handle, dtype=np.dtype(dtype), mode="w+", shape=(int(height), int(width)))
        yield rows
        del rows  # the mapping goes with its last view; the file is unlinked now
