"""Speed settings that fit the machine: ``trainer.precision: auto`` and ``module.channels_last: auto``.

bf16 autocast is 2.3–3.4× faster than float32 on a CPU whose oneDNN has native bf16 kernels
(AVX512-BF16 or AMX) and ~8× slower where it emulates them (AVX2), so a recipe cannot fix it
once for every machine (docs/measurements.md). The choice is made from what the hardware runs
natively, honouring the variables with which oneDNN and ATen are told to use less of the CPU
(``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``): that is also how an older CPU is reproduced.
A precision or layout given explicitly is always used as given.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

AUTO = "auto"
# oneDNN ISA names (ONEDNN_MAX_CPU_ISA, older DNNL_MAX_CPU_ISA) whose kernels compute bf16
# natively: AVX512-BF16 and later, AMX included. Anything lower emulates bf16 with float32.
ONEDNN_NATIVE_BF16_ISAS = frozenset(
    {
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX10_1_512",
        "AVX512_CORE_AMX",
        "AVX10_1_512_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512_AMX_FP16",
        "AVX10_2_512",
        "AVX10_2_512_AMX_2",
        "ALL",
        "DEFAULT",
    }
)
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class HardwareChoice:
    """A setting resolved for this machine, with the reason in words (logged and recorded).

    Attributes:
        requested: what the config asked for (``auto`` or an explicit value).
        used: what the run uses.
        reason: why, in one sentence.
    """

    requested: str | bool
    used: str | bool
    reason: str

    def as_dict(self) -> dict[str, str | bool]:
        return asdict(self)


def _cpu_flags_from_proc() -> set[str]:
    """CPU flags from ``/proc/cpuinfo`` (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_bf16_instructions() -> bool:
    """Whether the CPU itself has AVX512-BF16 or AMX (whatever the environment allows)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(probe) for probe in probes):
        return any(probe() for probe in probes)
    return any(flag in _cpu_flags_from_proc() for flag in _CPU_BF16_FLAGS)


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether bf16 autocast runs natively on this CPU as the environment configures it.

    Returns:
        ``(native, reason)``: native needs the instructions (AVX512-BF16 or AMX), a oneDNN
        allowed to use them (``ONEDNN_MAX_CPU_ISA`` unset or at least ``AVX512_CORE_BF16``) and
        ATen's AVX-512 kernels (``torch.backends.cpu.get_cpu_capability()``, which
        ``ATEN_CPU_CAPABILITY`` lowers).
    """
    if not cpu_has_bf16_instructions():
        return False, "this CPU has neither AVX512-BF16 nor AMX: bf16 would be emulated (several times slower)"
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        limit = os.environ.get(variable, "").strip().upper()
        if limit and limit not in ONEDNN_NATIVE_BF16_ISAS:
            return False, f"{variable}={limit} keeps oneDNN from its bf16 instructions: bf16 would be emulated"
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.upper().startswith("AVX512"):
        return False, f"ATen runs its {capability} kernels (ATEN_CPU_CAPABILITY), without bf16 instructions"
    return True, f"this CPU runs bf16 natively (AVX512-BF16/AMX, ATen {capability})"


def resolve_accelerator(accelerator: str | None) -> str:
    """``cpu`` / ``cuda`` / ``mps`` for Lightning's accelerator setting (``auto``: what Lightning picks)."""
    name = (accelerator or AUTO).lower()
    if name in {"gpu", "cuda"}:
        return "cuda"
    if name == AUTO:
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return name


def resolve_precision(requested: str | int | None, accelerator: str | None = AUTO) -> HardwareChoice:
    """The Lightning precision to train with.

    Args:
        requested: ``trainer.precision``; ``auto`` (or ``None``) is resolved, anything else is kept.
        accelerator: ``trainer.accelerator`` (``auto``, ``cpu``, ``gpu``, ``cuda``, ``mps``).

    Returns:
        ``bf16-mixed`` where the device computes bf16 natively (CUDA with bf16 support; a CPU as in
        :func:`cpu_native_bf16`), ``16-mixed`` (with a gradient scaler) on older CUDA GPUs,
        ``32-true`` otherwise.
    """
    if requested is not None and str(requested).lower() != AUTO:
        return HardwareChoice(str(requested), str(requested), "set explicitly")
    device = resolve_accelerator(accelerator)
    if device == "cuda" and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return HardwareChoice(AUTO, "bf16-mixed", f"{torch.cuda.get_device_name()} computes bf16 natively")
        return HardwareChoice(AUTO, "16-mixed", f"{torch.cuda.get_device_name()} has no bf16: float16 with a gradient scaler")
    if device == "cpu":
        native, why = cpu_native_bf16()
        return HardwareChoice(AUTO, "bf16-mixed" if native else "32-true", why)
    return HardwareChoice(AUTO, "32-true", f"no mixed precision chosen automatically on {device}")


def channels_last_crash(net: nn.Module) -> str | None:
    """Why channels-last would crash ``net``'s backward pass on CPU, or ``None`` when it would not.

    Measured with torch 2.14.1 (oneDNN): a 1×1 convolution of stride 2 with 2, 4, 6 or 8 input
    channels segfaults (or corrupts memory) in its backward pass when the input is channels-last;
    1, 3, 12 and 16 or more channels, and every other kernel and stride tried, train correctly.
    The whole range 2–8 counts (5 and 7 were not tried). Tiny test widths hit it; the recipe
    widths (32 and up, ResNet encoders) do not.
    """
    for name, layer in net.named_modules():
        if (
            isinstance(layer, nn.Conv2d)
            and layer.kernel_size == (1, 1)
            and max(layer.stride) > 1
            and 2 <= layer.in_channels <= 8
        ):
            return (
                f"channels_last training on CPU crashes oneDNN at layer {name!r} (1×1 stride-2 convolution of "
                f"{layer.in_channels} channels)"
            )
    return None


def check_channels_last_on_cpu(net: nn.Module) -> None:
    """Refuse a network whose channels-last backward crashes the process on CPU (:func:`channels_last_crash`).

    Raises:
        ValueError: naming the layer and the fix.
    """
    crash = channels_last_crash(net)
    if crash is not None:
        raise ValueError(f"{crash}; set module.channels_last=false or use a width of 16 or more")


def resolve_channels_last(requested: bool | str | None, net: nn.Module, device_type: str) -> HardwareChoice:
    """Whether to keep weights and inputs channels-last (NHWC).

    Measured faster wherever it runs: on CPU through oneDNN in float32 (1.2–1.4×, AVX-512 and
    AVX2 alike) and under bf16 (2.3–3.4× with native bf16), on GPUs through cuDNN's tensor-core
    kernels. ``auto`` turns it on except where it would crash: CPU networks with the 1×1 stride-2
    convolutions of 2–8 channels that oneDNN's backward pass cannot take.

    Args:
        requested: ``module.channels_last``: ``auto`` (or ``None``) is resolved, a bool is kept.
        net: the network that would be converted.
        device_type: ``cpu``, ``cuda`` or ``mps`` (``LightningModule.device.type``).
    """
    if requested is not None and not (isinstance(requested, str) and requested.lower() == AUTO):
        if isinstance(requested, str):
            raise ValueError(f"module.channels_last must be true, false or auto, got {requested!r}")
        return HardwareChoice(bool(requested), bool(requested), "set explicitly")
    if device_type == "cpu":
        crash = channels_last_crash(net)
        if crash is not None:
            return HardwareChoice(AUTO, False, crash)
        return HardwareChoice(AUTO, True, "oneDNN's channels-last convolutions are faster on CPU")
    if device_type == "cuda":
        return HardwareChoice(AUTO, True, "cuDNN's channels-last kernels are faster on GPU")
    return HardwareChoice(AUTO, False, f"channels-last not measured on {device_type}")


def log_choice(name: str, choice: HardwareChoice) -> None:
    """One log line per resolved setting."""
    log.info("%s: %s (requested %s): %s", name, choice.used, choice.requested, choice.reason)
