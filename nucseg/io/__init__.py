"""Reading images that do not fit the usual PNG/TIFF path: whole-slide pyramids (``nucseg.io.slide``)."""

from nucseg.io.slide import SlideError, SlideRegionReader, TissueMask, WholeSlide, open_slide

__all__ = ["SlideError", "SlideRegionReader", "TissueMask", "WholeSlide", "open_slide"]
