"""Synthetic H&E tiles with nucleus instance labels, for tests, smoke runs and ablations.

Images follow the Beer-Lambert model of brightfield absorption: every pixel holds a
hematoxylin and an eosin concentration, its optical density is
``OD = c_H * v_H + c_E * v_E (+ noise)`` and its colour ``RGB = I0 * exp(-OD)``. The stain
vectors start from Ruifrok & Johnston's H&E vectors and every image perturbs them and the
concentration scales (a per-image stain shift), so stain normalisation has real work to do.

A tile is made of:

- stroma: eosin with smooth large-scale variation and wavy collagen fibres, a little hematoxylin;
- near-white background / lumen blobs (no nuclei there);
- elliptical nuclei of three kinds (small round dark lymphocyte-like, large pale vesicular
  epithelial-like, elongated fibroblast-like along the fibres), hematoxylin-dense with a
  chromatin texture, placed partly in clusters so that they touch and overlap.

Instance labels: a pixel whose centre lies inside several ellipses belongs to the nucleus in
whose ellipse it lies deepest (smallest normalised elliptical radius, ties to the nucleus drawn
first). Touching nuclei are thus split along a curve between their centres, as annotators split
them, and a nucleus always keeps its own centre region. Nuclei are only started where no nucleus
is yet, so overlaps stay partial. Where a thin nucleus cuts another in two, the smaller piece joins
the neighbour it borders most, so every instance is one 4-connected region. Nuclei left without
a pixel are dropped; ids are consecutive.

Everything is drawn from a ``numpy.random.Generator`` seeded by the caller: one seed, one image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nucseg.data.annotations import relabel_consecutive
from nucseg.data.types import AnnotatedImage

# Ruifrok & Johnston (2001) optical density vectors over (R, G, B), normalised per image.
HEMATOXYLIN_OD = np.array([0.65, 0.70, 0.29])
EOSIN_OD = np.array([0.07, 0.99, 0.11])

DEFAULT_NUCLEI_PER_100PX2 = 18.0
"""Nuclei per 100 x 100 px of tissue; with the size ranges below about 20 % of pixels are nuclear."""

_PLACEMENT_TRIES = 4
"""Attempts to find a free centre for a nucleus before leaving it out."""


@dataclass(frozen=True)
class _Stain:
    """The per-image stain: unit OD vectors, concentration scales and illumination."""

    hematoxylin: np.ndarray
    eosin: np.ndarray
    scale_h: float
    scale_e: float
    intensity: float


@dataclass(frozen=True)
class _Nucleus:
    """One nucleus shape: semi-axes along and across ``angle`` (radians), and its appearance.

    ``density`` is the hematoxylin concentration, ``rim`` how much darker the membrane is and
    ``pale_core`` how much paler the centre is (vesicular chromatin).
    """

    major: float
    minor: float
    angle: float
    density: float
    rim: float
    pale_core: float


def make_synthetic_image(
    seed: int,
    size: int | tuple[int, int] = 256,
    nuclei_per_100px2: float = DEFAULT_NUCLEI_PER_100PX2,
    name: str | None = None,
) -> AnnotatedImage:
    """Draw one synthetic H&E tile with its nucleus instance labels.

    Args:
        seed: non-negative seed; the same seed (and arguments) gives the identical image.
        size: side length, or (height, width), in pixels.
        nuclei_per_100px2: target number of nuclei per 100 x 100 px of tissue (lumen excluded);
            overlaps and the border make the labelled count slightly lower.
        name: the image name; default ``synthetic_<seed>``.

    Returns:
        An ``AnnotatedImage`` with an (H, W, 3) uint8 image and (H, W) int32 labels.

    Raises:
        ValueError: negative seed, non-positive size, or negative density.
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    height, width = _parse_size(size)
    if not nuclei_per_100px2 >= 0:
        raise ValueError(f"nuclei_per_100px2 must be >= 0, got {nuclei_per_100px2}")
    rng = np.random.default_rng(int(seed))
    shape = (height, width)

    stain = _sample_stain(rng)
    lumen = _lumen(rng, shape)
    fibre_angle = rng.uniform(0.0, math.pi)
    stroma_e, stroma_h = _stroma(rng, shape, fibre_angle)

    tissue_fraction = float(1.0 - lumen.mean())
    expected = nuclei_per_100px2 * height * width / 1e4 * tissue_fraction
    count = int(rng.poisson(expected)) if expected > 0 else 0
    nuclei = _sample_nuclei(rng, count, fibre_angle)
    labels, nuclear_h, nuclear_weight = _draw_nuclei(rng, nuclei, lumen, shape)

    chromatin = 1.0 + 0.22 * _noise(rng, shape, 0.8) + 0.12 * _noise(rng, shape, 2.0)
    nuclear_h *= np.clip(chromatin, 0.4, 1.8)

    tissue = 1.0 - lumen
    conc_h = stain.scale_h * (stroma_h * tissue + nuclear_h)
    conc_e = stain.scale_e * stroma_e * tissue * (1.0 - 0.75 * nuclear_weight)
    optical_density = (
        conc_h[..., None] * stain.hematoxylin
        + conc_e[..., None] * stain.eosin
        + 0.03  # slide glass and mounting medium
    )
    optical_density += 0.012 * rng.standard_normal(optical_density.shape)
    optical_density = ndimage.gaussian_filter(optical_density, sigma=(0.6, 0.6, 0.0))  # optics blur
    rgb = stain.intensity * np.exp(-np.clip(optical_density, 0.0, None))
    image = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return AnnotatedImage(name=name or f"synthetic_{int(seed)}", image=image, instance_labels=labels)


def make_synthetic_set(
    num_images: int,
    seed: int,
    size: int | tuple[int, int] = 256,
    prefix: str = "synthetic",
    nuclei_per_100px2: float = DEFAULT_NUCLEI_PER_100PX2,
) -> list[AnnotatedImage]:
    """Draw ``num_images`` tiles named ``<prefix>_0000``, ``<prefix>_0001``, ...

    Image ``i`` uses a seed derived from ``(seed, i)`` only, so sets of different lengths with the
    same seed share their first images, and sets with different seeds share none.

    Args:
        num_images: how many tiles (>= 0).
        seed: non-negative set seed.
        size: side length, or (height, width), in pixels.
        prefix: name prefix.
        nuclei_per_100px2: see ``make_synthetic_image``.

    Returns:
        The tiles, in index order.

    Raises:
        ValueError: negative ``num_images`` or ``seed``.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return [
        make_synthetic_image(
            derive_seed(seed, index),
            size=size,
            nuclei_per_100px2=nuclei_per_100px2,
            name=f"{prefix}_{index:04d}",
        )
        for index in range(num_images)
    ]


def derive_seed(seed: int, index: int) -> int:
    """Mix a set seed and an image index into an independent image seed (stable across runs)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def _parse_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """Return (height, width) from an int or a pair; both must be positive."""
    if isinstance(size, (int, np.integer)):
        height = width = int(size)
    else:
        height, width = (int(value) for value in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return height, width


def _sample_stain(rng: np.random.Generator) -> _Stain:
    """Perturb the reference stain vectors and scales: the per-image stain shift."""

    def perturbed(vector: np.ndarray, spread: float) -> np.ndarray:
        moved = np.abs(vector / np.linalg.norm(vector) + rng.normal(0.0, spread, 3))
        return moved / np.linalg.norm(moved)

    return _Stain(
        hematoxylin=perturbed(HEMATOXYLIN_OD, 0.07),
        eosin=perturbed(EOSIN_OD, 0.07),
        scale_h=float(rng.uniform(0.75, 1.3)),
        scale_e=float(rng.uniform(0.65, 1.35)),
        intensity=float(rng.uniform(232.0, 255.0)),
    )


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """White noise smoothed at scale ``sigma`` and standardised to mean 0, std 1 (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def _coarse_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth noise with features about ``scale`` pixels wide, made cheaply on a coarse grid."""
    height, width = shape
    step = max(scale / 2.0, 1.0)
    grid = rng.standard_normal((int(height / step) + 4, int(width / step) + 4)).astype(np.float32)
    grid = ndimage.gaussian_filter(grid, 1.0)
    field = ndimage.zoom(grid, step, order=1)[:height, :width]
    if field.shape != shape:  # rounding in zoom: pad by edge values
        field = np.pad(field, [(0, height - field.shape[0]), (0, width - field.shape[1])], mode="edge")
    return (field - field.mean()) / (field.std() + 1e-8)


def _lumen(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Soft (0..1) mask of near-white background / lumen blobs covering 0-15 % of the tile."""
    fraction = rng.uniform(0.0, 0.15)
    if fraction < 0.01:
        return np.zeros(shape, dtype=np.float32)
    field = _coarse_noise(rng, shape, scale=max(shape) / 4.0)
    threshold = np.quantile(field, 1.0 - fraction)
    return np.clip((field - threshold) / 0.15 + 0.5, 0.0, 1.0).astype(np.float32)


def _stroma(rng: np.random.Generator, shape: tuple[int, int], angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Eosin and light hematoxylin concentrations of stroma with smooth texture and fibres."""
    height, width = shape
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    across = rows * math.cos(angle) - cols * math.sin(angle)
    wavelength = rng.uniform(6.0, 12.0)
    warp = 3.0 * _coarse_noise(rng, shape, scale=30.0)
    fibres = 0.5 + 0.5 * np.sin(2.0 * math.pi * across / wavelength + warp)
    fibres *= np.clip(0.5 + 0.6 * _coarse_noise(rng, shape, scale=50.0), 0.0, 1.0)  # fibres in patches
    large = _coarse_noise(rng, shape, scale=60.0)
    eosin = rng.uniform(0.45, 0.7) * (1.0 + 0.25 * large) * (0.85 + 0.3 * fibres)
    eosin += 0.05 * _noise(rng, shape, 1.0)
    hematoxylin = rng.uniform(0.06, 0.16) * (1.0 + 0.3 * _coarse_noise(rng, shape, scale=30.0))
    return np.clip(eosin, 0.05, None), np.clip(hematoxylin, 0.0, None)


def _sample_nuclei(rng: np.random.Generator, count: int, fibre_angle: float) -> list[_Nucleus]:
    """Draw nucleus shapes and appearances of three kinds; positions are chosen when drawing."""
    kinds = rng.choice(3, size=count, p=[0.3, 0.55, 0.15])
    nuclei = []
    for kind in kinds:
        if kind == 0:  # lymphocyte-like: small, round, dense
            major = rng.uniform(4.5, 6.5)
            minor = major * rng.uniform(0.85, 1.0)
            angle, density, rim, pale_core = rng.uniform(0, math.pi), rng.uniform(1.3, 1.8), 0.1, 0.1
        elif kind == 1:  # epithelial-like: large, oval, paler, vesicular with a darker rim
            major = rng.uniform(7.0, 12.0)
            minor = major * rng.uniform(0.55, 0.9)
            angle, density, rim, pale_core = rng.uniform(0, math.pi), rng.uniform(0.8, 1.25), 0.45, 0.25
        else:  # fibroblast-like: elongated along the stroma fibres
            major, minor = rng.uniform(8.0, 12.0), rng.uniform(3.0, 4.5)
            angle = fibre_angle + rng.normal(0.0, 0.25)
            density, rim, pale_core = rng.uniform(1.1, 1.5), 0.15, 0.1
        nucleus = _Nucleus(
            major=float(major),
            minor=float(minor),
            angle=float(angle),
            density=float(density),
            rim=rim,
            pale_core=pale_core,
        )
        nuclei.append(nucleus)
    return nuclei


def _draw_nuclei(
    rng: np.random.Generator, nuclei: list[_Nucleus], lumen: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place and rasterise the nuclei.

    About half of the nuclei gather around cluster centres (so that they touch and overlap), the
    rest are spread uniformly. A centre must be inside the image, out of lumen and on a pixel
    no nucleus owns yet (overlaps stay partial); a few placements are tried, then the nucleus is
    left out.

    Returns:
        labels (H, W) int32 by the deepest-ellipse rule, hematoxylin density (H, W) float32 and
        the soft nuclear weight (H, W) float32 in [0, 1] (anti-aliased nucleus coverage).
    """
    height, width = shape
    num_clusters = 1 + int(rng.poisson(height * width / 1e4 * 0.5))
    clusters = np.column_stack(  # row, column, spread
        [
            rng.uniform(0, height, num_clusters),
            rng.uniform(0, width, num_clusters),
            rng.uniform(6, 16, num_clusters),
        ]
    )
    labels = np.zeros(shape, dtype=np.int32)
    depth = np.full(shape, np.inf, dtype=np.float32)  # smallest normalised radius so far
    density = np.zeros(shape, dtype=np.float32)
    weight = np.zeros(shape, dtype=np.float32)
    next_id = 0
    for nucleus in nuclei:
        clustered = rng.random() < 0.55
        cluster = clusters[rng.integers(num_clusters)]
        centre = None
        for _ in range(_PLACEMENT_TRIES):
            if clustered:
                row, col = cluster[0] + rng.normal(0, cluster[2]), cluster[1] + rng.normal(0, cluster[2])
            else:
                row, col = rng.uniform(0, height), rng.uniform(0, width)
            pixel_r, pixel_c = int(math.floor(row)), int(math.floor(col))
            if not (0 <= pixel_r < height and 0 <= pixel_c < width):
                continue
            if lumen[pixel_r, pixel_c] <= 0.2 and labels[pixel_r, pixel_c] == 0:
                centre = (row, col)
                break
        if centre is None:
            continue
        next_id += 1
        _draw_one(nucleus, centre, next_id, labels, depth, density, weight)
    _merge_stray_pieces(labels)
    return relabel_consecutive(labels), density, weight


def _merge_stray_pieces(labels: np.ndarray) -> None:
    """Make every instance one 4-connected region, in place.

    The deepest-ellipse rule can cut a nucleus in two where a thinner one crosses it (about 1 %
    of nuclei). Its largest piece keeps the id; each other piece joins the neighbouring nucleus
    it shares most border pixels with, so the nuclear mask is unchanged.
    """
    for label, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        # The instance box grown by one pixel, to see the neighbours; a view: edits go to ``labels``.
        rows = slice(max(found[0].start - 1, 0), found[0].stop + 1)
        cols = slice(max(found[1].start - 1, 0), found[1].stop + 1)
        window = labels[rows, cols]
        pieces, count = ndimage.label(window == label)
        if count <= 1:
            continue
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        keep = int(np.argmax(sizes))
        for piece in range(1, count + 1):
            if piece == keep:
                continue
            mask = pieces == piece
            ring = ndimage.binary_dilation(mask) & ~mask
            neighbours = window[ring]
            neighbours = neighbours[(neighbours != 0) & (neighbours != label)]
            if neighbours.size:
                window[mask] = np.bincount(neighbours).argmax()


def _draw_one(
    nucleus: _Nucleus,
    centre: tuple[float, float],
    label: int,
    labels: np.ndarray,
    depth: np.ndarray,
    density: np.ndarray,
    weight: np.ndarray,
) -> None:
    """Draw one ellipse into the label, depth, density and weight maps (in place, in its box)."""
    height, width = labels.shape
    row, col = centre
    reach = nucleus.major + 2.0
    r0, r1 = max(0, int(row - reach)), min(height, int(row + reach) + 2)
    c0, c1 = max(0, int(col - reach)), min(width, int(col + reach) + 2)
    d_row = np.arange(r0, r1, dtype=np.float32)[:, None] - np.float32(row)
    d_col = np.arange(c0, c1, dtype=np.float32)[None, :] - np.float32(col)
    cos, sin = np.float32(math.cos(nucleus.angle)), np.float32(math.sin(nucleus.angle))
    along = d_col * cos + d_row * sin
    across = d_row * cos - d_col * sin
    radius = np.sqrt((along / np.float32(nucleus.major)) ** 2 + (across / np.float32(nucleus.minor)) ** 2)

    box = (slice(r0, r1), slice(c0, c1))
    wins = (radius <= 1.0) & (radius < depth[box])
    depth[box][wins] = radius[wins]
    labels[box][wins] = label

    # Anti-aliased edge about one pixel wide (across the minor axis), centred on radius 1.
    edge = 1.0 / nucleus.minor
    soft = np.clip((1.0 + 0.5 * edge - radius) / edge, 0.0, 1.0)
    shading = 1.0 + nucleus.rim * radius**4 - nucleus.pale_core * np.clip(1.0 - radius / 0.7, 0.0, 1.0)
    np.maximum(density[box], nucleus.density * shading * soft, out=density[box])
    np.maximum(weight[box], soft, out=weight[box])
