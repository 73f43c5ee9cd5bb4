"""The speed switches (channels-last memory, bf16 autocast) change speed, not results."""

from __future__ import annotations

import math

import pytest
import torch

from nucseg.losses import CompositeLoss
from nucseg.models import build_model
from nucseg.module import SegmentationModule, check_channels_last_on_cpu
from nucseg.pipeline import train

LOSS = {"bce": {}, "focal": {}, "dice": {}}


@pytest.mark.parametrize("name", ["unet", "resunet"])
def test_channels_last_gives_the_same_logits_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    reference = build_model(name, width=16)
    same = build_model(name, width=16)
    same.load_state_dict(reference.state_dict())
    modules = [SegmentationModule(net=net, loss=CompositeLoss(LOSS), channels_last=cl) for net, cl in ((reference, False), (same, True))]
    images = torch.rand(2, 3, 64, 64)
    masks = (torch.rand(2, 1, 64, 64) > 0.7).float()
    outputs = []
    for module in modules:
        logits = module(images)
        module.loss(logits, masks).total.backward()
        outputs.append((logits.detach(), next(module.net.parameters()).grad))
    assert next(modules[1].net.parameters()).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs[1][1], outputs[0][1], rtol=1e-3, atol=1e-4)


def test_channels_last_refuses_the_layer_that_crashes_onednn() -> None:
    """Width 4 gives ResUNet 1×1 stride-2 shortcuts of 4 and 8 channels: a segfault, so an error first."""
    module = SegmentationModule(net=build_model("resunet", width=4), loss=CompositeLoss(LOSS), channels_last=True)
    with pytest.raises(ValueError, match=r"1×1 stride-2 convolution of 4 channels.*module.channels_last=false"):
        module.on_fit_start()
    check_channels_last_on_cpu(build_model("resunet", width=16))  # 16 and more: no error
    SegmentationModule(net=build_model("resunet", width=4), loss=CompositeLoss(LOSS)).on_fit_start()  # NCHW: fine


def test_loss_is_float32_under_autocast() -> None:
    """bf16 logits are scored in float32: the same value as the float32 loss of the same logits."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 64, 64, generator=generator).to(torch.bfloat16)
    target = (torch.rand(4, 1, 64, 64, generator=generator) > 0.7).float()
    loss = CompositeLoss(LOSS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(logits, target).total
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(loss(logits.float(), target).total.item(), rel=1e-6)


@pytest.mark.slow
def test_a_bf16_channels_last_run_trains_and_tests(compose_train) -> None:
    cfg = compose_train(["model=linknet34", "debug=fast", "trainer.precision=bf16-mixed", "module.channels_last=true"])
    metrics = train(cfg)
    assert cfg.trainer.precision == "bf16-mixed"
    assert math.isfinite(metrics["test"]["loss"]) and 0.0 <= metrics["test"]["dice"] <= 1.0
    assert metrics["test"]["num_images"] == 1


def test_the_test_step_runs_outside_the_trainers_autocast() -> None:
    """Under bf16-mixed, validation may run in bf16, but the test scores what evaluate.py scores."""

    class AutocastProbe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 1)
            self.autocast_seen: list[bool] = []

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
            return self.conv(images)

    net = AutocastProbe()
    module = SegmentationModule(net=net, loss=CompositeLoss(LOSS), inference={"tile_size": 32, "overlap": 0})
    batch = {"image": torch.rand(1, 3, 32, 32), "mask": torch.zeros(1, 1, 32, 32)}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what Lightning's precision plugin does
        module.validation_step(batch, 0)
        module.test_step(batch, 0)
    assert net.autocast_seen == [True, False]


# -- precision: auto and channels_last: auto ------------------------------------------------------


def test_auto_precision_is_float32_on_a_cpu_restricted_to_avx2() -> None:
    """What an AVX2-only CPU looks like to torch; run in a fresh process, where torch reads the variables."""
    import os
    import subprocess
    import sys

    code = "from nucseg.hardware import resolve_precision; c = resolve_precision('auto', 'cpu'); print(c.used, '|', c.reason)"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    used, reason = result.stdout.strip().split(" | ")
    assert used == "32-true"
    assert "emulated" in reason or "AVX512" not in reason


@pytest.mark.parametrize(
    ("has_instructions", "onednn_isa", "aten", "expected"),
    [
        (True, None, "AVX512", "bf16-mixed"),
        (True, "AVX512_CORE_AMX", "AVX512", "bf16-mixed"),
        (True, "AVX512_CORE", "AVX512", "32-true"),  # AVX-512 without its bf16 instructions: emulated
        (True, "AVX2", "AVX512", "32-true"),
        (True, None, "AVX2", "32-true"),
        (False, None, "AVX512", "32-true"),
    ],
)
def test_auto_precision_on_cpu_follows_the_instructions_torch_may_use(monkeypatch, has_instructions, onednn_isa, aten, expected):
    import nucseg.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_has_bf16_instructions", lambda: has_instructions)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: aten)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if onednn_isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_isa)
    choice = hardware.resolve_precision("auto", "cpu")
    assert (choice.requested, choice.used) == ("auto", expected) and choice.reason


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_precision_on_cuda(monkeypatch, bf16, expected):
    from nucseg.hardware import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "a GPU")
    assert resolve_precision("auto", "gpu").used == expected


def test_an_explicit_precision_is_used_as_given():
    from nucseg.hardware import resolve_precision

    assert resolve_precision("bf16-mixed", "cpu").as_dict() == {"requested": "bf16-mixed", "used": "bf16-mixed", "reason": "set explicitly"}
    assert resolve_precision(None, "cpu").requested == "auto"


def test_auto_channels_last_is_on_where_it_is_faster_and_off_where_it_crashes():
    from nucseg.hardware import resolve_channels_last

    crashing, fine = build_model("resunet", width=4), build_model("resunet", width=16)
    off = resolve_channels_last("auto", crashing, "cpu")
    assert off.used is False and "crash" in off.reason
    assert resolve_channels_last("auto", fine, "cpu").used is True
    assert resolve_channels_last("auto", crashing, "cuda").used is True
    assert resolve_channels_last(False, fine, "cpu").used is False
    assert resolve_channels_last(True, crashing, "cpu").used is True  # forced: the module's guard then speaks
    with pytest.raises(ValueError, match="true, false or auto"):
        resolve_channels_last("yes", fine, "cpu")
