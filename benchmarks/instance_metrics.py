"""Instance-metric benchmark: every nucleus-level metric of one MoNuSeg test image, timed.

The ground truth of one 1000 x 1000 test image (by default the one with the most nuclei, 818) (the organisers' label map, or the XML rasterised
with ``nucseg.data.annotations.xml_to_instance_labels`` when ``--from-xml`` is given) is scored
against a copy of itself shifted by a few pixels, so that nuclei overlap partially, as a
prediction's would. Prints the median seconds per ``instance_metrics`` call over ``--rounds``
calls, and the values.

Usage: ``python benchmarks/instance_metrics.py [--image NAME] [--shift 3 2] [--rounds 5] [--from-xml]``
(``make bench``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nucseg.metrics.instance import METRIC_KEYS, instance_metrics  # noqa: E402

DEFAULT_TEST_DIR = REPO.parent / "shared" / "data" / "monuseg" / "test"
DEFAULT_IMAGE = "TCGA-44-2665-01B-06-BS6"  # the test image with the most nuclei (818)


def load_ground_truth(test_dir: Path, name: str | None, from_xml: bool) -> tuple[str, np.ndarray]:
    """The named test image's instance labels."""
    folder = test_dir / ("annotations" if from_xml else "organiser_labels")
    files = sorted(folder.glob("*.xml" if from_xml else "*.png"))
    if name:
        files = [path for path in files if path.stem == name]
    if not files:
        raise SystemExit(f"error: {folder}: no {'XML' if from_xml else 'PNG'} label file{' named ' + name if name else ''}; "
                         "pass --test-dir pointing at MoNuSeg's test/ folder")
    path = files[0]
    if from_xml:
        from nucseg.data.annotations import xml_to_instance_labels

        return path.stem, xml_to_instance_labels(path, (1000, 1000))
    from PIL import Image

    return path.stem, np.asarray(Image.open(path)).astype(np.int32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-dir", type=Path, default=DEFAULT_TEST_DIR, help="MoNuSeg test/ folder")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"test image name (default: {DEFAULT_IMAGE})")
    parser.add_argument("--shift", type=int, nargs=2, default=(3, 2), metavar=("ROWS", "COLS"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--from-xml", action="store_true", help="rasterise the XML instead of reading the PNG")
    args = parser.parse_args(argv)

    name, truth = load_ground_truth(args.test_dir, args.image, args.from_xml)
    prediction = np.roll(truth, tuple(args.shift), axis=(0, 1))
    instance_metrics(truth, prediction)  # warm-up: imports and first-call allocations
    seconds = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        values = instance_metrics(truth, prediction)
        seconds.append(time.perf_counter() - started)
    print(f"image {name} {truth.shape[0]}x{truth.shape[1]}, {int(values['num_true'])} nuclei, "
          f"prediction = ground truth shifted by {tuple(args.shift)} px")
    print(f"instance_metrics: {statistics.median(seconds) * 1000:.1f} ms per call (median of {args.rounds})")
    print("  " + "  ".join(f"{key}={values[key]:.4f}" for key in METRIC_KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
