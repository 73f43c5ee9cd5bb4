"""nucseg: nucleus segmentation experiments on H&E histopathology (MoNuSeg and your own slides)."""

__version__ = "0.1.0"
