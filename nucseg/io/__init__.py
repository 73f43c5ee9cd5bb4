"""Reading images and keeping intermediate rasters: one place for the package's pixel I/O.

- ``nucseg.io.images``: whole images (TIFF through tifffile, PNG/JPEG through Pillow) to RGB uint8;
- ``nucseg.io.regions``: rectangles of an image without reading the rest (tifffile's memmap
  and zarr interfaces), ``RegionReader`` and the in-memory ``ArrayRegionReader``;
- ``nucseg.io.resample``: a region reader at another pixel size;
- ``nucseg.io.overview``: a strided thumbnail read region by region;
- ``nucseg.io.rows``: temporary memory-mapped rasters;
- ``nucseg.io.slide``: whole-slide pyramids (tiffslide / openslide).

Writers of the outputs (TIFF, PNG, GeoJSON, CSV) are ``nucseg.export``.
"""

from nucseg.io.images import ImageReadError, read_rgb_image, to_rgb_uint8
from nucseg.io.regions import (
    ArrayRegionReader,
    RegionReader,
    TiffRegionReader,
    open_region_reader,
    read_whole,
)
from nucseg.io.resample import ResampledRegionReader
from nucseg.io.rows import temporary_rows
from nucseg.io.slide import SlideError, SlideRegionReader, TissueMask, WholeSlide, open_slide

__all__ = [
    "ArrayRegionReader",
    "ImageReadError",
    "RegionReader",
    "ResampledRegionReader",
    "SlideError",
    "SlideRegionReader",
    "TiffRegionReader",
    "TissueMask",
    "WholeSlide",
    "open_region_reader",
    "open_slide",
    "read_rgb_image",
    "read_whole",
    "temporary_rows",
    "to_rgb_uint8",
]
