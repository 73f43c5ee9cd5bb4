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
