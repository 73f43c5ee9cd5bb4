"""nucseg: nucleus segmentation experiments on H&E histopathology (MoNuSeg and your own slides).

``nucseg.load(run)`` returns a trained model ready to predict (see :mod:`nucseg.api`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    """``nucseg.load`` is imported on first use, so ``import nucseg`` stays light (no torch)."""
    if name == "load":
        from nucseg.api import load

        return load
    raise AttributeError(f"module 'nucseg' has no attribute {name!r}")
