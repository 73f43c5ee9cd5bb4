"""What several test files build: tiny images, MoNuSeg-layout folders, a hand-set network, a tiny run.

Import with ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``); test files do
not import each other. Everything here is small, seeded and made in the test's own folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"

# Tiny but complete: 4 synthetic training images of 96 px, one held out, two test images.
TINY_OVERRIDES = [
    "data.source.num_train_images=4",
    "data.source.num_test_images=2",
    "data.source.image_size=96",
    "data.num_val_images=1",
    "data.patch_size=64",
    "data.patches_per_image=2",
    "data.batch_size=2",
    "module.inference.tile_size=64",
    "module.inference.overlap=16",
    "module.inference.batch_size=4",
    "module.num_logged_images=1",
    "++widths.unet=4",
    "++widths.resunet=4",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
]

Vertices = Sequence[tuple[float, float]]


# -- images ----------------------------------------------------------------------------------------
def random_rgb(seed: int, height: int = 32, width: int = 32) -> np.ndarray:
    """Uniform noise, uint8 (H, W, 3): for readers and checks, where the content does not matter."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def nuclei_image(height: int, width: int, count: int, seed: int = 0) -> np.ndarray:
    """Pink background with ``count`` dark purple disks of radius 3..9, some touching, some at the border.

    :class:`DarknessNet` finds exactly these disks, so predictions on it can be checked by value.
    """
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = (232, 196, 222)
    rows, cols = np.ogrid[:height, :width]
    for _ in range(count):
        r, c, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(3, 10)
        top, bottom = max(0, r - radius), min(height, r + radius + 1)
        left, right = max(0, c - radius), min(width, c + radius + 1)
        disk = (rows[top:bottom] - r) ** 2 + (cols[:, left:right] - c) ** 2 <= radius**2
        image[top:bottom, left:right][disk] = (92, 58, 140)
    noise = rng.integers(-12, 13, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


class DarknessNet(nn.Module):
    """Logit = 12 * (0.55 - local mean intensity): dark nuclei positive, pink background negative."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(-12.0 / 27.0)
            self.conv.bias.fill_(12.0 * 0.55)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


# -- annotations and MoNuSeg-layout folders ---------------------------------------------------------
def rectangle(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    """The four corners of an axis-aligned rectangle, clockwise from (x0, y0)."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def aperio_xml(regions: Sequence[Vertices | str]) -> str:
    """An Aperio ImageScope XML shaped like a MoNuSeg annotation file.

    Args:
        regions: each a vertex list (x, y in pixels; a ``<Region>`` numbered from 1 in order) or a
            ready ``<Region>...</Region>`` string (for deliberately broken regions).
    """
    body = []
    for number, region in enumerate(regions, start=1):
        if isinstance(region, str):
            body.append(region)
            continue
        points = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in region)
        body.append(f'<Region Id="{number}" Type="0"><Attributes/><Vertices>{points}</Vertices></Region>')
    return (
        '<Annotations MicronsPerPixel="0.252700"><Annotation Id="1"><Attributes/><Regions>'
        '<RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region"/></RegionAttributeHeaders>'
        + "".join(body)
        + "</Regions><Plots/></Annotation></Annotations>"
    )


# Two 8 x 8 px nuclei in a 32 x 32 image.
TWO_NUCLEI_XML = aperio_xml([rectangle(4, 4, 12, 12), rectangle(18, 18, 26, 26)])


def write_annotated_image(split_dir: Path, name: str, seed: int, xml: str = TWO_NUCLEI_XML, size: int = 32) -> Path:
    """``images/<name>.tif`` (``size`` x ``size`` noise) and ``annotations/<name>.xml`` under ``split_dir``."""
    image_path = split_dir / "images" / f"{name}.tif"
    tifffile.imwrite(image_path, random_rgb(seed, size, size), photometric="rgb")
    (split_dir / "annotations" / f"{name}.xml").write_text(xml)
    return image_path


def make_monuseg_root(base: Path, num_train: int = 4, with_test: bool = True) -> Path:
    """A usable MoNuSeg-layout root of 32 x 32 images, each with a two-nucleus XML.

    ``train/`` holds ``good0..good{num_train-1}``, ``test/`` (unless ``with_test`` is false)
    ``testgood``; every split also has an empty ``labels/`` folder.
    """
    for split in ("train", "test") if with_test else ("train",):
        for folder in ("images", "annotations", "labels"):
            (base / split / folder).mkdir(parents=True, exist_ok=True)
    for index in range(num_train):
        write_annotated_image(base / "train", f"good{index}", index)
    if with_test:
        write_annotated_image(base / "test", "testgood", 99)
    return base


# -- whole-slide files ------------------------------------------------------------------------------
def write_subifd_pyramid(path: Path, levels: list[np.ndarray], mpp: float | None = 0.25) -> Path:
    """A tiled pyramidal TIFF, the reduced levels as SubIFDs, the resolution tags from ``mpp``."""
    options = {"tile": (128, 128), "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path) as tif:
        for index, level in enumerate(levels):
            extra: dict = {"subifds": len(levels) - 1} if index == 0 else {"subfiletype": 1}
            if mpp is not None:
                scale = levels[0].shape[1] / level.shape[1]
                extra |= {"resolution": (1e4 / (mpp * scale),) * 2, "resolutionunit": "CENTIMETER"}
            tif.write(level, **options, **extra)
    return path


def write_svs_like(path: Path, levels: list[np.ndarray], mpp: float = 0.25) -> Path:
    """Aperio layout: full level, thumbnail strip, then the reduced levels; mpp in the description."""
    options = {"tile": (128, 128), "photometric": "rgb", "compression": "zlib"}
    header = "Aperio Image Library test\r\n"
    height, width = levels[0].shape[:2]
    with tifffile.TiffWriter(path) as tif:
        tif.write(levels[0], description=f"{header}{width}x{height} (128x128)|AppMag = 40|MPP = {mpp}", **options)
        tif.write(levels[-1][::2, ::2], photometric="rgb", description=f"{header}thumbnail")
        for level in levels[1:]:
            tif.write(level, subfiletype=1, description=header, **options)
    return path


# -- a trained run -----------------------------------------------------------------------------------
def train_tiny_run(root: Path, extra: list[str] | None = None) -> Path:
    """One short epoch of a 4-wide U-Net on synthetic tiles under ``root``; returns the run directory."""
    from hydra import compose, initialize_config_dir

    from nucseg.pipeline import train

    overrides = [
        f"paths.root_dir={root}",
        f"paths.output_dir={root / 'run'}",
        f"paths.cache_dir={root / 'cache'}",
        *TINY_OVERRIDES,
        "++trainer.limit_train_batches=2",
        *(extra or []),
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    train(cfg)
    return root / "run"
