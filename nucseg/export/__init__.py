"""Writing predictions for people and other tools: QuPath GeoJSON, measurements, overlays, PNG, TIFF."""

from nucseg.export.geojson import GeoJsonWriter, features_from_labels, nucleus_ring, write_geojson
from nucseg.export.measurements import MeasurementCsvWriter, measure_nuclei
from nucseg.export.overlay import boundary, overlay_contours
from nucseg.export.png import StreamingPngWriter, write_png

__all__ = [
    "GeoJsonWriter",
    "MeasurementCsvWriter",
    "StreamingPngWriter",
    "boundary",
    "features_from_labels",
    "measure_nuclei",
    "nucleus_ring",
    "overlay_contours",
    "write_geojson",
    "write_png",
]
