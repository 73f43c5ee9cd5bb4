"""The sliding-window settings of a run: one type, its defaults written once.

Validation, test, ``evaluate.py``, ``predict`` and the Python API all predict whole images with
these settings (``module.inference`` of the run config), so a checkpoint's reported metrics
and its deployed predictions come from the same tiles, blending and TTA. The command line of
``predict`` offers the same options, with the choices of the engine (``BLEND_MODES``,
``TTA_MODES``); what it does not set comes from the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class InferenceSettings:
    """Keyword arguments of :func:`nucseg.inference.sliding_window_predict` chosen per run.

    Attributes:
        tile_size: Tile side, or (height, width), in pixels.
        overlap: Pixels shared by neighbouring tiles (int), or a fraction of the tile (< 1).
        batch_size: Tiles per forward pass.
        blend: ``gaussian`` or ``flat`` tile weights (``nucseg.inference.tiling.BLEND_MODES``).
        tta: ``none``, ``flips`` or ``d4`` (``nucseg.inference.tta.TTA_MODES``).
        amp: Autocast the network (float16 on CUDA, bfloat16 on CPU); off: float32 logits.
        tile_multiple: Tile sides must be multiples of this (None: the network's own divisor).
        border_pad: Pixels of reflected context around each image (images predicted whole;
            ``predict`` streams large images and leaves it out).
    """

    tile_size: int | tuple[int, int] = 256
    overlap: int | float = 64
    batch_size: int = 8
    blend: str = "gaussian"
    tta: str = "none"
    amp: bool = False
    tile_multiple: int | None = None
    border_pad: int = 0

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> InferenceSettings:
        """The defaults with ``options`` (a run config's ``module.inference``) applied."""
        return cls().updated(options)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any] | None) -> InferenceSettings:
        """The settings of a resolved run config (``module.inference``; defaults when absent)."""
        module = (run_config or {}).get("module") or {}
        return cls.from_mapping(module.get("inference"))

    def updated(self, options: Mapping[str, Any] | None) -> InferenceSettings:
        """A copy with ``options`` replacing these settings.

        Raises:
            ValueError: A key that is not a setting (named, with the known ones).
        """
        options = dict(options or {})
        known = [field.name for field in fields(self)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown inference settings {unknown}; known: {', '.join(known)}")
        if isinstance(options.get("tile_size"), list):
            options["tile_size"] = tuple(options["tile_size"])
        return replace(self, **options)

    def kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments of ``sliding_window_predict``."""
        return asdict(self)
