"""Contour overlays: the image with each nucleus outlined, for a quick visual check.

A pixel is drawn as contour when it belongs to a nucleus and one of its 4 neighbours has a
different label (another nucleus, background, or the outside of the image), so touching
nuclei keep a visible border between them: scikit-image's ``find_boundaries`` (inner mode,
connectivity 1) on the labels framed by an "outside" value. Contours are one pixel wide, drawn in one colour.
``boundary`` takes optional context rows above and below, which lets the streaming writer draw
a band of a large image exactly as the whole image would be drawn.
"""

from __future__ import annotations

import numpy as np

CONTOUR_COLOUR = (0, 255, 0)


def boundary(
    labels: np.ndarray, above: np.ndarray | None = None, below: np.ndarray | None = None
) -> np.ndarray:
    """Boolean (H, W) map of the contour pixels of ``labels``.

    Args:
        labels: (H, W) int labels, 0 = background.
        above: The label row just above ``labels`` (None at the top of the image).
        below: The label row just below ``labels`` (None at the bottom of the image).
    """
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    width = labels.shape[1]
    outside = np.full((1, width), -1, dtype=labels.dtype)
    top = outside if above is None else np.asarray(above, dtype=labels.dtype).reshape(1, width)
    bottom = outside if below is None else np.asarray(below, dtype=labels.dtype).reshape(1, width)
    framed = np.pad(np.vstack([top, labels, bottom]), ((0, 0), (1, 1)), constant_values=-1)
    edge = find_boundaries(framed, connectivity=1, mode="inner", background=0)[1:-1, 1:-1]
    return edge & (labels > 0)


def overlay_contours(
    image: np.ndarray,
    labels: np.ndarray,
    colour: tuple[int, int, int] = CONTOUR_COLOUR,
    above: np.ndarray | None = None,
    below: np.ndarray | None = None,
) -> np.ndarray:
    """A copy of the (H, W, 3) uint8 ``image`` with the contours of ``labels`` drawn in ``colour``."""
    out = np.array(image, dtype=np.uint8, copy=True)
    out[boundary(labels, above, below)] = colour
    return out
