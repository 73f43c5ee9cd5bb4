"""Does moving predicted probabilities by a sub-pixel offset change validation Dice?

The organisers' ground truth (MATLAB ``poly2mask`` on 1-based vertices) sits about half a pixel
up-left of the nuclei's intensity edges. Flip and rotation augmentation turn any fixed offset
between image and label into its mirror images, so a network trained with them cannot learn it
and predicts masks centred on the nuclei. This script measures, on a run's VALIDATION images
only, the pooled Dice of the probabilities shifted by each (dy, dx) of a small grid (bilinear,
``scipy.ndimage.shift``) before thresholding; a shift is worth keeping only if validation says so.

    python benchmarks/subpixel_alignment.py logs/runs/<run> [--shifts -1 -0.5 0 0.5 1]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import ndimage

from nucseg.checkpoint import load_model


def validation_probabilities(run: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Foreground probabilities and binary masks of the run's validation images."""
    model = load_model(run)
    module = model.module
    datamodule = instantiate(OmegaConf.create(model.run_config).data)
    datamodule.stain_normalizer = model.stain_normalizer or datamodule.stain_normalizer
    datamodule.setup("fit")
    probabilities, masks = [], []
    with torch.no_grad():
        for image in datamodule.val_images:
            pixels = torch.from_numpy(np.ascontiguousarray(image.image.transpose(2, 0, 1)))[None].float() / 255.0
            foreground = module.foreground_probability(module.probabilities(module.predict_logits(pixels)))
            probabilities.append(foreground[0, 0].numpy())
            masks.append(image.mask.astype(bool))
    return probabilities, masks


def pooled_dice(probabilities: list[np.ndarray], masks: list[np.ndarray], shift: tuple[float, float]) -> float:
    """Pooled Dice of ``probability > 0.5`` after moving each map by ``shift`` = (dy, dx) pixels."""
    tp = fp = fn = 0
    for probability, mask in zip(probabilities, masks, strict=True):
        moved = ndimage.shift(probability, shift, order=1, mode="nearest") if any(shift) else probability
        predicted = moved > 0.5
        tp += int((predicted & mask).sum())
        fp += int((predicted & ~mask).sum())
        fn += int((~predicted & mask).sum())
    return 2 * tp / (2 * tp + fp + fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory (its validation images are used, never the test)")
    parser.add_argument("--shifts", type=float, nargs="+", default=[-1.0, -0.5, 0.0, 0.5, 1.0])
    args = parser.parse_args()
    probabilities, masks = validation_probabilities(args.run)
    base = pooled_dice(probabilities, masks, (0.0, 0.0))
    print(f"validation images: {len(masks)}; pooled Dice without shift {base:.4f}")
    print("dy\\dx " + " ".join(f"{dx:>8}" for dx in args.shifts))
    for dy in args.shifts:
        row = [pooled_dice(probabilities, masks, (dy, dx)) for dx in args.shifts]
        print(f"{dy:>5} " + " ".join(f"{value:8.4f}" for value in row))
    best = max(itertools.product(args.shifts, args.shifts), key=lambda s: pooled_dice(probabilities, masks, s))
    print(f"best shift (dy, dx) = {best}: {pooled_dice(probabilities, masks, best):.4f} (vs {base:.4f} unshifted)")


if __name__ == "__main__":
    main()
