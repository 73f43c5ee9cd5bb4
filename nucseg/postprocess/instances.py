"""From a foreground probability (or binary mask) to instance labels by connected components.

Rules, the same for an image in memory and for one streamed band by band:

- a pixel is foreground when its probability is ``> threshold`` (torchmetrics' rule, so the
  test's pixel metrics and the instances see one foreground; a binary mask passes as is);
- components are 4-connected (``connectivity=1``, pixels sharing an edge) by default, which
  splits nuclei that touch only at a corner; ``connectivity=2`` joins corners too;
- components of fewer than ``min_size`` pixels are dropped (set to 0);
- labels are int32, 0 is background, and objects are numbered 1..N in raster order of their
  first pixel (what ``scipy.ndimage.label`` gives for the whole image).

Touching nuclei merge into one component: separating them needs a contour/distance channel, a
later model's job. ``StreamingLabeler`` labels an image that is never whole in memory: each band
is labelled alone, components that continue across a band border are joined with a union-find,
and a lookup table maps provisional to final labels at the end (see its docstring).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def foreground(probability_or_mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean foreground of a probability map in [0, 1], a uint8 map in 0..255, or a mask."""
    array = np.asarray(probability_or_mask)
    if array.dtype == np.bool_:
        return array
    if array.dtype == np.uint8:
        return array >= round(threshold * 255)
    return array > threshold


def structure(connectivity: int) -> np.ndarray:
    """The 3x3 neighbourhood of ``connectivity`` 1 (edges) or 2 (edges and corners)."""
    if connectivity not in (1, 2):
        raise ValueError(f"instances: connectivity must be 1 or 2, got {connectivity}")
    return ndimage.generate_binary_structure(2, connectivity)


def label_instances(
    probability_or_mask: np.ndarray, threshold: float = 0.5, min_size: int = 0, connectivity: int = 1
) -> np.ndarray:
    """Label the connected components of an (H, W) foreground.

    Args:
        probability_or_mask: Float probabilities in [0, 1], uint8 probabilities in 0..255
            (thresholded at ``round(threshold * 255)``) or a boolean mask.
        threshold: Foreground threshold on the probability.
        min_size: Components with fewer pixels are removed.
        connectivity: 1 (4-connected) or 2 (8-connected).

    Returns:
        (H, W) int32 labels, 0 = background, 1..N in raster order.
    """
    labels, count = ndimage.label(
        foreground(probability_or_mask, threshold), structure=structure(connectivity)
    )
    labels = labels.astype(np.int32, copy=False)
    if min_size > 1 and count:
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        keep = areas >= min_size
        keep[0] = False
        lut = np.zeros(count + 1, dtype=np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = lut[labels]
    return labels


class StreamingLabeler:
    """Connected components of an image given as consecutive bands of rows, in bounded memory.

    Use: call :meth:`add_band` for each band from top to bottom (it returns the band's
    provisional labels, which the caller stores, e.g. in a raw file on disk), then
    :meth:`finish` once for the lookup table ``lut`` such that ``lut[provisional]`` is the final
    label of every pixel. Memory is one band plus a few numbers per provisional label; the final
    labels equal :func:`label_instances` on the whole image.

    Args:
        min_size: Components with fewer pixels are removed.
        connectivity: 1 (4-connected) or 2 (8-connected).
    """

    def __init__(self, min_size: int = 0, connectivity: int = 1) -> None:
        self.min_size = int(min_size)
        self.connectivity = connectivity
        self._structure = structure(connectivity)
        self._parent: list[int] = [0]
        self._area: list[np.ndarray] = []
        self._bbox: list[np.ndarray] = []  # per band: (n, 4) top, left, bottom, right (exclusive)
        self._count = 0
        self._row = 0
        self._last_row: np.ndarray | None = None
        self.lut: np.ndarray | None = None
        self.bboxes: np.ndarray | None = None
        self.areas: np.ndarray | None = None

    @property
    def rows_seen(self) -> int:
        """Rows added so far."""
        return self._row

    def add_band(self, band_foreground: np.ndarray) -> np.ndarray:
        """Label the next band (rows of a boolean mask) and return its provisional int32 labels."""
        if self.lut is not None:
            raise RuntimeError("StreamingLabeler: add_band after finish")
        mask = np.asarray(band_foreground, dtype=bool)
        local, count = ndimage.label(mask, structure=self._structure)
        if count:
            self._parent.extend(range(self._count + 1, self._count + count + 1))
            self._area.append(np.bincount(local.ravel(), minlength=count + 1)[1:])
            slices = ndimage.find_objects(local)
            boxes = np.array([(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in slices], dtype=np.int64)
            boxes[:, (0, 2)] += self._row
            self._bbox.append(boxes)
        labels = np.where(local > 0, local + self._count, 0).astype(np.int32)
        if self._last_row is not None and len(labels):
            self._join(self._last_row, labels[0])
        if len(labels):
            self._last_row = labels[-1].copy()
        self._count += count
        self._row += len(labels)
        return labels

    def finish(self) -> np.ndarray:
        """Resolve the joins; return ``lut`` (int32, provisional -> final) and set ``bboxes``/``areas``.

        After this, ``bboxes[k - 1]`` is (top, left, bottom, right) (exclusive ends) and
        ``areas[k - 1]`` the pixel count of final label ``k``.
        """
        count = self._count
        roots = np.array([self._find(index) for index in range(count + 1)], dtype=np.int64)
        area = np.concatenate(self._area) if self._area else np.zeros(0, dtype=np.int64)
        boxes = np.concatenate(self._bbox) if self._bbox else np.zeros((0, 4), dtype=np.int64)
        root_area = np.zeros(count + 1, dtype=np.int64)
        np.add.at(root_area, roots[1:], area)
        root_box = np.tile(np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).max, -1, -1]), (count + 1, 1))
        np.minimum.at(root_box[:, 0], roots[1:], boxes[:, 0])
        np.minimum.at(root_box[:, 1], roots[1:], boxes[:, 1])
        np.maximum.at(root_box[:, 2], roots[1:], boxes[:, 2])
        np.maximum.at(root_box[:, 3], roots[1:], boxes[:, 3])
        # A root is the smallest provisional id of its set (see _join), which is the set's first
        # pixel in raster order, so numbering roots in increasing order matches ndimage.label.
        is_root = roots == np.arange(count + 1)
        is_root[0] = False
        keep = is_root & (root_area >= max(self.min_size, 1))
        final_of_root = np.zeros(count + 1, dtype=np.int32)
        final_of_root[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        self.lut = final_of_root[roots]
        self.areas = root_area[keep]
        self.bboxes = root_box[keep]
        return self.lut

    def _join(self, above: np.ndarray, below: np.ndarray) -> None:
        """Union the labels that touch across the border between two consecutive rows."""
        pairs = [np.stack([above, below], axis=1)]
        if self.connectivity == 2:
            pairs.append(np.stack([above[:-1], below[1:]], axis=1))
            pairs.append(np.stack([above[1:], below[:-1]], axis=1))
        touching = np.concatenate(pairs)
        touching = touching[(touching[:, 0] > 0) & (touching[:, 1] > 0)]
        for first, second in np.unique(touching, axis=0).tolist():
            root_a, root_b = self._find(first), self._find(second)
            if root_a != root_b:
                low, high = min(root_a, root_b), max(root_a, root_b)
                self._parent[high] = low

    def _find(self, index: int) -> int:
        """Root of ``index`` with path halving."""
        parent = self._parent
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index
