"""Training throughput of each model, side by side in one process: patches per second.

    python benchmarks/train_throughput.py --patch 256 --batch 8 --steps 6
    python benchmarks/train_throughput.py --models unet:32 resunet:32 linknet34 --modes fp32 fp32-cl bf16-cl
    python benchmarks/train_throughput.py --models linknet34 --modes fp32 bf16 auto --isa native avx2

One step = standardise + forward + BCE/Focal/Dice loss + backward + AdamW update on random 256² crops
(data loading excluded: crops come from memory and cost nothing next to the network).
The first step of each model is a warm-up and is not timed. Modes: ``fp32`` (NCHW, float32),
``fp32-cl`` (channels-last), ``bf16`` (NCHW under bf16 autocast), ``bf16-cl`` (channels-last
under bf16 autocast, as ``trainer.precision=bf16-mixed module.channels_last=true``) and ``auto``
(what ``trainer.precision=auto`` and :func:`nucseg.hardware.resolve_channels_last` choose on the
CPU as torch sees it); each mode's speed-up over the first is printed for each model.

``--isa native avx2`` measures this CPU as it is and again as a CPU without AVX-512 looks to
torch (a subprocess with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``: bf16 emulated), and
prints both side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from nucseg.hardware import resolve_channels_last, resolve_precision
from nucseg.losses import CompositeLoss
from nucseg.models import build_model, count_parameters
from nucseg.module import SegmentationModule

MODES = {"fp32": (False, False), "fp32-cl": (False, True), "bf16": (True, False), "bf16-cl": (True, True), "auto": (None, None)}
ISA_ENV = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}


def model_from_spec(spec: str) -> tuple[str, torch.nn.Module]:
    """``name`` or ``name:width`` → (label, network)."""
    name, _, width = spec.partition(":")
    kwargs = {"width": int(width)} if width else {}
    return spec, build_model(name, **kwargs)


def resolve_mode(mode: str, net: torch.nn.Module) -> tuple[bool, bool, str]:
    """(bf16, channels_last, label) of a mode; ``auto`` as the training pipeline would choose on CPU."""
    bf16, channels_last = MODES[mode]
    if bf16 is None:
        bf16 = resolve_precision("auto", "cpu").used == "bf16-mixed"
        channels_last = bool(resolve_channels_last("auto", net, "cpu").used)
        return bf16, channels_last, f"auto={'bf16' if bf16 else 'fp32'}{'-cl' if channels_last else ''}"
    return bf16, channels_last, mode


def patches_per_second(net: torch.nn.Module, patch: int, batch: int, steps: int, mode: str = "fp32") -> float:
    """Training steps of ``net`` inside a :class:`SegmentationModule`, so that the channels-last
    path measured is the one training uses (weights converted once, inputs every step)."""
    bf16, channels_last, _ = resolve_mode(mode, net)
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


def measure(args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Patches/s of every model in every mode, printed as they come: ``{model: {mode: speed}}``,
    and what ``auto`` chose for each model."""
    torch.set_num_threads(args.threads)
    results: dict[str, dict[str, float]] = {}
    auto_choices: dict[str, str] = {}
    for spec in args.models:
        speeds: dict[str, float] = {}
        for mode in args.modes:
            torch.manual_seed(0)
            label, net = model_from_spec(spec)
            params = count_parameters(net)
            shown = resolve_mode(mode, net)[2]
            auto_choices[spec] = shown.removeprefix("auto=") if mode == "auto" else auto_choices.get(spec, "")
            speeds[mode] = patches_per_second(net, args.patch, args.batch, args.steps, mode)
            print(f"{label:<14}{shown:<16}{params / 1e6:>8.2f} M params {speeds[mode]:>8.2f} patches/s", file=sys.stderr, flush=True)
        results[spec] = speeds
    return results, auto_choices


def run_isa(isa: str, argv: list[str]) -> dict:
    """Measure in a subprocess whose torch sees the CPU as ``isa`` (variables read at start-up)."""
    env = {**os.environ, **ISA_ENV[isa]}
    command = [sys.executable, __file__, *argv, "--isa", "self", "--json"]
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(result.stdout)


def speedups_line(spec: str, speeds: dict[str, float], modes: list[str]) -> str:
    base = modes[0]
    return f"{spec:<14}vs {base}: " + ", ".join(f"{m} {speeds[m] / speeds[base]:.2f}×" for m in modes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet:64", "unet:32", "resunet:64", "resunet:32", "linknet34"])
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--modes", nargs="+", default=["fp32"], choices=list(MODES))
    parser.add_argument(
        "--isa", nargs="+", default=["self"], choices=["self", *ISA_ENV],
        help="self: this process as it is; native / avx2: subprocesses as the CPU is / without AVX-512",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout (used between processes)")
    args = parser.parse_args()
    forwarded = ["--models", *args.models, "--patch", str(args.patch), "--batch", str(args.batch),
                 "--steps", str(args.steps), "--threads", str(args.threads), "--modes", *args.modes]
    auto = resolve_precision("auto", "cpu")
    if args.isa == ["self"]:
        print(f"patch {args.patch}², batch {args.batch}, {args.steps} timed steps, {args.threads} threads; "
              f"auto: {auto.used} ({auto.reason})", file=sys.stderr)
        results, auto_choices = measure(args)
        if args.json:
            print(json.dumps({"results": results, "auto_choices": auto_choices, "auto": f"{auto.used}: {auto.reason}"}))
            return
        for spec, speeds in results.items():
            if len(args.modes) > 1:
                print(speedups_line(spec, speeds, args.modes))
        first = {spec: speeds[args.modes[0]] for spec, speeds in results.items()}
        fastest = max(first.values())
        print(f"relative to the fastest ({args.modes[0]}):", ", ".join(f"{k} {v / fastest:.2f}" for k, v in first.items()))
        return

    print(f"patch {args.patch}², batch {args.batch}, {args.steps} timed steps, {args.threads} threads")
    by_isa: dict[str, dict] = {}
    for isa in args.isa:
        if isa == "self":
            parser.error("--isa self cannot be combined with native/avx2")
        print(f"-- {isa} {ISA_ENV[isa] or ''}", flush=True)
        by_isa[isa] = run_isa(isa, forwarded)
        print(f"   auto precision: {by_isa[isa]['auto']}", flush=True)
    header = "| model | mode | " + " | ".join(f"{isa} (patches/s)" for isa in by_isa) + " |"
    print("\n" + header + "\n|---|---|" + "---:|" * len(by_isa))
    for spec in args.models:
        for mode in args.modes:
            cells = []
            for payload in by_isa.values():
                value, base = payload["results"][spec][mode], payload["results"][spec][args.modes[0]]
                notes = [f"{value / base:.2f}×"] if mode != args.modes[0] else []
                notes += [payload["auto_choices"][spec]] if mode == "auto" else []
                cells.append(f"{value:.2f}" + (f" ({', '.join(notes)})" if notes else ""))
            print(f"| {spec} | {mode} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
