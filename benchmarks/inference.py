"""Inference benchmark: our sliding window vs MONAI vs the bare network, and streaming memory.

One run measures, on the same network, image, tile size, overlap, batch size and blending:

(a) ``nucseg.inference.sliding_window_predict`` tiles/s,
(b) MONAI's ``sliding_window_inference`` tiles/s (MONAI is a benchmark-only dependency),
(c) the bare network forward over the same tiles, batch for batch (tiles cut beforehand),

with the ratios a/b (>= 1: we are at least as fast as MONAI) and a/c (the engine's share of the
time; overhead = c/a - 1). Runs of a, b and c are interleaved round by round so that load from
other processes on a shared machine hits all three alike, and the median of the rounds is
reported. Then it predicts a 10 000 x 10 000 RGB tiled TIFF by streaming, with Macenko stain
normalisation and every output written, in a fresh process, and reports that process's peak RSS.

Usage: ``python benchmarks/inference.py [--threads N] [--rounds R] [--stream-size 10000]``
(``make bench``). Numbers are recorded in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nucseg.inference import sliding_window_predict, tile_starts  # noqa: E402

BACKGROUND = (205, 150, 190)  # eosin pink, dense enough to count as tissue for Macenko
NUCLEUS = (92, 58, 140)  # haematoxylin purple


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per method (after one warm-up)")
    parser.add_argument("--image-size", type=int, default=1000)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--encoder", default="resnet18", help="segmentation_models_pytorch U-Net encoder")
    parser.add_argument(
        "--stream-size",
        type=int,
        nargs="+",
        default=[10000],
        help="sides of the streamed TIFFs (several show the trend); 0 skips",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child-stream", nargs=3, metavar=("TIFF", "OUT", "STAIN"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- throughput -----------------------------------------------------------------------------


def build_model(encoder: str) -> nn.Module:
    """The representative network: a U-Net with a ResNet encoder, random weights, eval mode."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    return smp.Unet(encoder, encoder_weights=None, classes=1).eval()


def time_call(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def throughput(args: argparse.Namespace) -> dict[str, object]:
    """Time a, b and c (module docstring) and return tiles/s and ratios."""
    from monai.inferers import sliding_window_inference

    net = build_model(args.encoder)
    image = torch.rand(1, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    tile, overlap, batch = args.tile, args.overlap, args.batch
    ours_starts = tile_starts(args.image_size, tile, overlap)
    tiles_ours = len(ours_starts) ** 2
    # MONAI places windows every int(tile * (1 - overlap)) pixels and clamps the last one
    interval = int(tile * (1 - overlap / tile))
    tiles_monai = (int(np.ceil((args.image_size - tile) / interval)) + 1) ** 2
    cut = [image[0, :, y : y + tile, x : x + tile] for y in ours_starts for x in ours_starts]
    batches = [torch.stack(cut[i : i + batch]) for i in range(0, len(cut), batch)]

    def ours() -> None:
        sliding_window_predict(
            image, net, tile_size=tile, overlap=overlap, batch_size=batch, blend="gaussian"
        )

    def monai() -> None:
        with torch.inference_mode():
            sliding_window_inference(
                image,
                roi_size=(tile, tile),
                sw_batch_size=batch,
                predictor=net,
                overlap=overlap / tile,
                mode="gaussian",
            )

    def raw() -> None:
        with torch.inference_mode():
            for tiles in batches:
                net(tiles)

    methods = {"ours": ours, "monai": monai, "raw": raw}
    for function in methods.values():  # warm-up: allocator, oneDNN kernels
        function()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, function in methods.items():
            times[name].append(time_call(function))
    median = {name: statistics.median(values) for name, values in times.items()}
    rate = {
        "ours": tiles_ours / median["ours"],
        "monai": tiles_monai / median["monai"],
        "raw": tiles_ours / median["raw"],
    }
    return {
        "tiles": {"ours": tiles_ours, "monai": tiles_monai, "raw": tiles_ours},
        "seconds_per_image": {name: round(value, 4) for name, value in median.items()},
        "all_seconds": {name: [round(v, 4) for v in values] for name, values in times.items()},
        "tiles_per_s": {name: round(value, 3) for name, value in rate.items()},
        "ratio_ours_over_monai": round(rate["ours"] / rate["monai"], 4),
        "ratio_ours_over_raw": round(rate["ours"] / rate["raw"], 4),
        "overhead_over_raw": round(median["ours"] / median["raw"] - 1, 4),
        "images_per_s": {name: round(1 / value, 4) for name, value in median.items() if name != "raw"},
    }


# -- streaming memory -------------------------------------------------------------------------


class DarknessNet(nn.Module):
    """A tiny fixed net (logit = 12 (0.55 - local mean)): the streaming run is about memory."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(-12.0 / 27.0)
            self.conv.bias.fill_(12.0 * 0.55)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


def synthetic_he(size: int, nuclei: int, seed: int) -> np.ndarray:
    """A size x size H&E-like image: pink tissue with purple disks, some noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    rows, cols = np.ogrid[:size, :size]
    for _ in range(nuclei):
        r, c, radius = rng.integers(0, size), rng.integers(0, size), int(rng.integers(4, 10))
        top, left = max(0, r - radius), max(0, c - radius)
        disk = (rows[top : r + radius + 1] - r) ** 2 + (cols[:, left : c + radius + 1] - c) ** 2 <= radius**2
        image[top : r + radius + 1, left : c + radius + 1][disk] = NUCLEUS
    noise = rng.integers(-10, 11, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_big_tiff(path: Path, size: int) -> None:
    """A size x size RGB tiled TIFF written tile by tile from a 1000-pixel periodic pattern."""
    import tifffile

    period = synthetic_he(1000, 450, seed=1)
    wrapped = np.pad(period, ((0, 512), (0, 512), (0, 0)), mode="wrap")

    def tiles():
        for y in range(0, size, 512):
            for x in range(0, size, 512):
                yield np.ascontiguousarray(wrapped[y % 1000 : y % 1000 + 512, x % 1000 : x % 1000 + 512])

    tifffile.imwrite(
        path,
        tiles(),
        shape=(size, size, 3),
        dtype=np.uint8,
        tile=(512, 512),
        photometric="rgb",
        compression="zlib",
    )


def fitted_stain_state() -> dict | None:
    """Macenko fitted on a synthetic reference, as a checkpoint would carry it (None if unavailable)."""
    try:
        from nucseg.data.stain import MacenkoStainNormalizer

        return MacenkoStainNormalizer().fit(synthetic_he(1000, 450, seed=2)).state_dict()
    except Exception as error:  # noqa: BLE001 - the benchmark still measures memory without it
        print(
            f"warning: Macenko unavailable ({error}); streaming without stain normalisation", file=sys.stderr
        )
        return None


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Linux's ``VmHWM`` is used because ``getrusage(RUSAGE_SELF).ru_maxrss`` survives ``execve``: a
    child started by a big parent would report the parent's size as its own peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def child_stream(tiff: str, out: str, stain_json: str) -> None:
    """Run in a fresh process: stream-predict ``tiff`` and print time, nuclei and peak RSS as JSON.

    The stain reference is loaded from a state dict (as ``load_model`` does from a checkpoint),
    not fitted here, so the peak reflects prediction alone.
    """
    import logging

    from nucseg.inference.instances import PostprocessSettings
    from nucseg.predict.grid import OutputPaths
    from nucseg.predict.runner import predict_file

    torch.set_num_threads(os.cpu_count() or 1)
    state = json.loads(Path(stain_json).read_text())
    normalizer, stain = None, "none"
    if state is not None:
        from nucseg.data.stain import MacenkoStainNormalizer

        normalizer, stain = MacenkoStainNormalizer(), "macenko"
        normalizer.load_state_dict(state)
    logging.getLogger("nucseg.data.stain").setLevel(logging.ERROR)  # background blocks fall back quietly
    baseline = peak_rss_bytes()  # libraries and model
    started = time.perf_counter()
    result = predict_file(
        tiff,
        DarknessNet().eval(),
        OutputPaths.for_image(out, "big", probability=True),
        normalizer,
        {"tile_size": 256, "overlap": 64, "batch_size": 8},
        PostprocessSettings(min_size=10),
    )
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    outputs = {p.name: p.stat().st_size for p in Path(out).iterdir()}
    print(
        json.dumps(
            {
                "seconds": seconds,
                "nuclei": result.nuclei,
                "streamed": result.streamed,
                "stain": stain,
                "baseline_rss_bytes": baseline,
                "peak_rss_bytes": peak,
                "outputs": outputs,
            }
        )
    )


def streaming(size: int, stain_state: dict | None) -> dict[str, object]:
    """Write a size x size TIFF, stream-predict it in a child process, return the child's report."""
    with tempfile.TemporaryDirectory(prefix="nucseg-bench-") as tmp:
        tiff = Path(tmp) / "big.tif"
        stain_json = Path(tmp) / "stain.json"
        stain_json.write_text(json.dumps(stain_state))
        started = time.perf_counter()
        write_big_tiff(tiff, size)
        written = time.perf_counter() - started
        completed = subprocess.run(
            [sys.executable, __file__, "--child-stream", str(tiff), str(Path(tmp) / "out"), str(stain_json)],
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"streaming child failed:\n{completed.stderr[-3000:]}")
        report = json.loads(completed.stdout.strip().splitlines()[-1])
        report["input_bytes"] = tiff.stat().st_size
        report["tiff_write_seconds"] = round(written, 1)
        report["size"] = size
        return report


# -- report -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_stream:
        child_stream(*args.child_stream)
        return 0
    torch.set_num_threads(args.threads)
    results: dict[str, object] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "setting": f"smp.Unet({args.encoder}) image {args.image_size}^2 tile {args.tile} overlap {args.overlap} "
        f"batch {args.batch} gaussian, {args.rounds} rounds (median)",
    }
    import monai

    results["monai"] = monai.__version__
    print(
        f"# {results['setting']}; torch {torch.__version__}, MONAI {monai.__version__}, {args.threads} threads"
    )
    speed = throughput(args)
    results["throughput"] = speed
    rate, seconds, tiles = speed["tiles_per_s"], speed["seconds_per_image"], speed["tiles"]
    print(f"{'method':<34}{'tiles':>6}{'s/image':>10}{'tiles/s':>10}")
    labels = {
        "ours": "(a) nucseg sliding_window_predict",
        "monai": "(b) MONAI sliding_window_inference",
        "raw": "(c) raw forward, same tiles",
    }
    for key, label in labels.items():
        print(f"{label:<34}{tiles[key]:>6}{seconds[key]:>10.3f}{rate[key]:>10.2f}")
    print(
        f"a/b = {speed['ratio_ours_over_monai']:.3f}   a/c = {speed['ratio_ours_over_raw']:.3f}   "
        f"overhead over raw = {100 * speed['overhead_over_raw']:.1f}%"
    )
    results["streaming"] = []
    sizes = [size for size in args.stream_size if size > 0]
    stain_state = fitted_stain_state() if sizes else None
    for size in sizes:
        report = streaming(size, stain_state)
        results["streaming"].append(report)
        print(
            f"streaming {size}x{size} RGB TIFF ({report['stain']} stain, all outputs): {report['seconds']:.0f} s, "
            f"{report['nuclei']} nuclei, peak RSS {report['peak_rss_bytes'] / 2**30:.2f} GiB "
            f"(after imports {report['baseline_rss_bytes'] / 2**30:.2f} GiB)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
