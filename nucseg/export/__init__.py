"""Writing predictions for people and other tools: QuPath GeoJSON, contour overlays, PNG, TIFF."""

from nucseg.export.geojson import features_from_labels, nucleus_ring, write_geojson
from nucseg.export.overlay import boundary, overlay_contours
from nucseg.export.png import StreamingPngWriter, write_png

__all__ = [
    "StreamingPngWriter",
    "boundary",
    "features_from_labels",
    "nucleus_ring",
    "overlay_contours",
    "write_geojson",
    "write_png",
]
