"""Training throughput of each model, side by side in one process: patches per second.

    python benchmarks/train_throughput.py --patch 256 --batch 8 --steps 6
    python benchmarks/train_throughput.py --models unet:32 resunet:32 linknet34

One step = forward + BCE/Focal/Dice loss + backward + AdamW update on random 256² crops
(data loading excluded: crops come from memory and cost nothing next to the network).
The first step of each model is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import time

import torch

from nucseg.losses import CompositeLoss
from nucseg.models import build_model


def model_from_spec(spec: str) -> tuple[str, torch.nn.Module]:
    """``name`` or ``name:width`` → (label, network)."""
    name, _, width = spec.partition(":")
    kwargs = {"width": int(width)} if width else {}
    return spec, build_model(name, **kwargs)


def patches_per_second(net: torch.nn.Module, patch: int, batch: int, steps: int) -> float:
    loss = CompositeLoss({"bce": {}, "focal": {}, "dice": {}})
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    images = torch.rand(batch, 3, patch, patch)
    masks = (torch.rand(batch, 1, patch, patch) > 0.7).float()
    net.train()
    elapsed = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss(net(images), masks).total.backward()
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
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"patch {args.patch}², batch {args.batch}, {args.steps} timed steps, {args.threads} threads")
    results = {}
    for spec in args.models:
        label, net = model_from_spec(spec)
        params = sum(p.numel() for p in net.parameters())
        results[label] = patches_per_second(net, args.patch, args.batch, args.steps)
        print(f"{label:<14}{params / 1e6:>8.2f} M params {results[label]:>8.2f} patches/s", flush=True)
    fastest = max(results.values())
    print("relative to the fastest:", ", ".join(f"{k} {v / fastest:.2f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
