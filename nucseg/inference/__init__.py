"""Inference: sliding-window prediction, test-time augmentation, streaming of large images."""

from nucseg.inference.sliding_window import TileGrid, sliding_window_predict, tile_starts
from nucseg.inference.streaming import TiffRegionReader, open_region_reader, stream_logits
from nucseg.inference.tta import TTA_MODES, D4Transform, tta_forward, tta_transforms

__all__ = [
    "TTA_MODES",
    "D4Transform",
    "TiffRegionReader",
    "TileGrid",
    "open_region_reader",
    "sliding_window_predict",
    "stream_logits",
    "tile_starts",
    "tta_forward",
    "tta_transforms",
]
