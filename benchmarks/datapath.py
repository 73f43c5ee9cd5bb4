"""The data path of training, per model: time waiting for data, augmentation cost, patches/s.

    python benchmarks/datapath.py                       # the monuseg_cpu models, 6 timed steps each
    python benchmarks/datapath.py --device cuda --precision bf16 --steps 20

Images are random uint8 tiles of MoNuSeg's size (26 × 1000², the training split after 4 are held
out) with a random nucleus mask: the data path's cost does not depend on what the pixels show, so
no data set is needed. Each timed step is what a Lightning training step does with
``data.num_workers`` loader workers: next batch from the loader (**waiting for data**), copy to the
device, uint8 → float, Kornia augmentation there (``on_after_batch_transfer``), forward, loss,
backward, AdamW. Two data paths are timed: the DataLoader over ``RandomPatchDataset`` (the default)
and ``DeviceResidentCrops`` (``data.device_resident=true``). Separately, the Kornia augmentation
of one batch on the device is compared with the equivalent augmentation done per sample on the CPU,
as it would run in loader workers (NumPy flips and quarter turns, SciPy rotation with reflection).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Iterator

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from nucseg.data.augment import SegmentationAugmentation
from nucseg.data.datasets import RandomPatchDataset
from nucseg.data.device_dataset import DeviceResidentCrops
from nucseg.data.types import AnnotatedImage
from nucseg.losses import CompositeLoss
from nucseg.models import build_model
from nucseg.module import SegmentationModule

# conf/experiment/monuseg_cpu.yaml: widths, 256² crops, batch 8, bf16 + channels-last.
MODELS = ["unet:32", "resunet:32", "linknet34"]


def monuseg_sized_images(count: int, size: int, seed: int = 0) -> list[AnnotatedImage]:
    """Random tiles with a ~20 % nucleus mask (blocks of 8 px, so that it is not pixel noise)."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        coarse = rng.random((size // 8 + 1, size // 8 + 1)) < 0.2
        labels = np.kron(coarse, np.ones((8, 8), dtype=np.int32))[:size, :size].astype(np.int32)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        images.append(AnnotatedImage(name=f"tile{index}", image=pixels, instance_labels=labels))
    return images


def cpu_augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One sample, as a worker would augment it: the default config's steps with their probabilities."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    if rng.random() < 0.5:
        turns = int(rng.integers(0, 4))
        image, mask = np.rot90(image, turns), np.rot90(mask, turns)
    if rng.random() < 0.5:
        angle = rng.uniform(-180.0, 180.0)
        image = ndimage.rotate(image, angle, axes=(0, 1), reshape=False, order=1, mode="reflect")
        mask = ndimage.rotate(mask, angle, axes=(0, 1), reshape=False, order=0, mode="reflect")
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def augmentation_seconds(batch: int, patch: int, device: torch.device, rounds: int) -> tuple[float, float]:
    """(Kornia on the device, per-sample CPU) seconds per batch, medians over ``rounds``."""
    augmentation = SegmentationAugmentation().to(device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, patch, patch, 3), dtype=np.uint8)
    masks = (rng.random((batch, patch, patch)) < 0.2).astype(np.uint8)
    image_t = torch.from_numpy(images).permute(0, 3, 1, 2).to(device).float().div(255)
    mask_t = torch.from_numpy(masks)[:, None].to(device).float()
    device_times, cpu_times = [], []
    for round_ in range(rounds + 1):
        _sync(device)
        started = time.perf_counter()
        augmentation(image_t, mask_t)
        _sync(device)
        middle = time.perf_counter()
        for image, mask in zip(images, masks, strict=True):
            cpu_augment(image, mask, rng)
        if round_ > 0:  # the first round warms up
            device_times.append(middle - started)
            cpu_times.append(time.perf_counter() - middle)
    return float(np.median(device_times)), float(np.median(cpu_times))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(
    spec: str, batches: Iterator[dict], device: torch.device, steps: int, bf16: bool, batch: int
) -> dict[str, float]:
    """Seconds waiting for data, augmenting and in total over ``steps`` timed steps (after one warm-up)."""
    name, _, width = spec.partition(":")
    torch.manual_seed(0)
    net = build_model(name, **({"width": int(width)} if width else {}))
    module = SegmentationModule(net=net, loss=CompositeLoss({"bce": {}, "focal": {}, "dice": {}}), channels_last=True)
    module.to(device).train()
    augmentation = SegmentationAugmentation().to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    totals = {"wait_s": 0.0, "augment_s": 0.0, "step_s": 0.0}
    for step in range(steps + 1):
        _sync(device)
        started = time.perf_counter()
        item = next(batches)
        waited = time.perf_counter()
        image = item["image"].to(device, non_blocking=True).float().div_(255.0)
        mask = item["mask"].to(device, non_blocking=True).float()
        image, mask = augmentation(image, mask)
        _sync(device)
        augmented = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = module(image)
        module.loss(logits.float(), mask).total.backward()
        optimizer.step()
        _sync(device)
        if step > 0:
            totals["wait_s"] += waited - started
            totals["augment_s"] += augmented - waited
            totals["step_s"] += time.perf_counter() - started
    totals["patches_per_s"] = steps * batch / totals["step_s"]
    return totals


def forever(iterable) -> Iterator[dict]:
    while True:
        yield from iterable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--images", type=int, default=26)
    parser.add_argument("--image-size", type=int, default=1000)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (the recipes use 0)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--aug-rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), {os.cpu_count()} CPUs, {args.threads} threads, load {load:.2f}; torch {torch.__version__}")
    print(f"{args.images} images of {args.image_size}², patch {args.patch}², batch {args.batch}, "
          f"{args.steps} timed steps, {args.precision}, channels-last, loader workers {args.workers}")

    kornia_s, cpu_s = augmentation_seconds(args.batch, args.patch, device, args.aug_rounds)
    print(f"augmentation per batch: Kornia on {device.type} {kornia_s * 1e3:.1f} ms, per-sample CPU (as in workers) "
          f"{cpu_s * 1e3:.1f} ms, ratio Kornia/CPU {kornia_s / cpu_s:.2f}")

    images = monuseg_sized_images(args.images, args.image_size)
    dataset = RandomPatchDataset(images, args.patch, patches_per_image=1000)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0, pin_memory=device.type == "cuda")
    resident = DeviceResidentCrops(images, args.patch, patches_per_image=1000, batch_size=args.batch, device=device)
    print(f"{'model':<12}{'data path':<16}{'wait %':>8}{'augment %':>11}{'patches/s':>11}")
    for spec in args.models:
        for label, source in (("DataLoader", loader), ("device-resident", resident)):
            torch.manual_seed(0)
            result = time_training(spec, forever(source), device, args.steps, args.precision == "bf16", args.batch)
            print(f"{spec:<12}{label:<16}{100 * result['wait_s'] / result['step_s']:>8.2f}"
                  f"{100 * result['augment_s'] / result['step_s']:>11.2f}{result['patches_per_s']:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
