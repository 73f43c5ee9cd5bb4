"""Training throughput of each model, side by side in one process: patches per second.

    python benchmarks/train_throughput.py --patch 256 --batch 8 --steps 6
    python benchmarks/train_throughput.py --models unet:32 resunet:32 linknet34 --modes fp32 fp32-cl bf16-cl

One step = standardise + forward + BCE/Focal/Dice loss + backward + AdamW update on random 256² crops
(data loading excluded: crops come from memory and cost nothing next to the network).
The first step of each model is a warm-up and is not timed. Modes: ``fp32`` (NCHW, float32),
``fp32-cl`` (channels-last), ``bf16-cl`` (channels-last under bf16 autocast, as
``trainer.precision=bf16-mixed module.channels_last=true``); each mode's speed-up over
``fp32`` is printed for each model.
"""

from __future__ import annotations

import argparse
import time

import torch

from nucseg.losses import CompositeLoss
from nucseg.models import build_model, count_parameters
from nucseg.module import SegmentationModule


def model_from_spec(spec: str) -> tuple[str, torch.nn.Module]:
    """``name`` or ``name:width`` → (label, network)."""
    name, _, width = spec.partition(":")
    kwargs = {"width": int(width)} if width else {}
    return spec, build_model(name, **kwargs)


MODES = {"fp32": (False, False), "fp32-cl": (False, True), "bf16-cl": (True, True)}


def patches_per_second(net: torch.nn.Module, patch: int, batch: int, steps: int, mode: str = "fp32") -> float:
    """Training steps of ``net`` inside a :class:`SegmentationModule`, so that the channels-last
    path measured is the one training uses (weights converted once, inputs every step)."""
    bf16, channels_last = MODES[mode]
    module = SegmentationModule(net=net, loss=CompositeLoss({"bce": {}, "focal": {}, "dice": {}}), channels_last=channels_last)
    images = torch.rand(batch, 3, patch, patch)
    masks = (torch.rand(batch, 1, patch, patch) > 0.7).float()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module.train()
    elapsed = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = module(images)
        module.loss(logits, masks).total.backward()
        optimizer.step()
        if step > 0:
            elapsed += time.perf_counter() - started
    return steps * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet:64", "unet:32", "resunet:64", "resunet:32", "linknet34"])
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--modes", nargs="+", default=["fp32"], choices=list(MODES))
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"patch {args.patch}², batch {args.batch}, {args.steps} timed steps, {args.threads} threads")
    results = {}
    for spec in args.models:
        speeds = {}
        for mode in args.modes:
            torch.manual_seed(0)
            label, net = model_from_spec(spec)
            params = count_parameters(net)
            speeds[mode] = patches_per_second(net, args.patch, args.batch, args.steps, mode)
            print(f"{label:<14}{mode:<9}{params / 1e6:>8.2f} M params {speeds[mode]:>8.2f} patches/s", flush=True)
        results[spec] = speeds[args.modes[0]]
        if len(args.modes) > 1:
            base = args.modes[0]
            print(f"{spec:<14}vs {base}: " + ", ".join(f"{m} {v / speeds[base]:.2f}×" for m, v in speeds.items()))
    fastest = max(results.values())
    print(f"relative to the fastest ({args.modes[0]}):", ", ".join(f"{k} {v / fastest:.2f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
