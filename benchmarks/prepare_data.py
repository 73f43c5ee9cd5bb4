"""Time MoNuSeg preparation (TIFF + XML/labels → masks → Macenko) with an empty and a warm cache.

    python benchmarks/prepare_data.py ../shared/data/monuseg

Both passes run in one process, side by side; the cache lives in a temporary folder.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

from nucseg.data.datamodule import MonusegDataModule
from nucseg.data.stain import build_stain_normalizer


def prepare_once(root: str, cache_dir: str) -> dict[str, float]:
    """Seconds for each stage of ``setup`` on a fresh data module."""
    datamodule = MonusegDataModule(
        root=root, stain_normalizer=build_stain_normalizer("macenko"),
        stain_reference="TCGA-A7-A13E-01Z-00-DX1", cache_dir=cache_dir, num_val_images=4,
    )
    started = time.perf_counter()
    datamodule.setup("fit")
    datamodule.setup("test")
    return {**datamodule.preparation_seconds, "total": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="MoNuSeg root (train/ and test/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as cache_dir:
        first = prepare_once(args.root, cache_dir)
        cached = prepare_once(args.root, cache_dir)
    print(f"{'stage':<18}{'first run s':>12}{'cached s':>10}{'ratio':>8}")
    for stage in first:
        print(f"{stage:<18}{first[stage]:>12.2f}{cached[stage]:>10.2f}{first[stage] / max(cached[stage], 1e-9):>8.1f}")


if __name__ == "__main__":
    main()
