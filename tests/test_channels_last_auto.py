"""``module.channels_last: auto`` reaches the module: on where it is safe, off where oneDNN crashes."""

from __future__ import annotations

import torch

from nucseg.losses import CompositeLoss
from nucseg.models import build_model
from nucseg.module import SegmentationModule

LOSS = {"bce": {}, "dice": {}}


def _module(width: int) -> SegmentationModule:
    return SegmentationModule(net=build_model("resunet", width=width), loss=CompositeLoss(LOSS), channels_last="auto")


def test_auto_turns_channels_last_on_for_a_safe_network_on_cpu() -> None:
    module = _module(16)
    assert module.channels_last is True
    assert module.channels_last_choice.requested == "auto"
    assert next(module.net.parameters()).is_contiguous(memory_format=torch.channels_last)
    module.on_fit_start()  # the guard agrees: no error


def test_auto_keeps_nchw_for_a_network_that_would_crash_onednn() -> None:
    module = _module(4)  # 1×1 stride-2 shortcuts of 4 and 8 channels
    assert module.channels_last is False
    assert "1×1 stride-2" in module.channels_last_choice.reason
    module.on_fit_start()  # NCHW: trains


def test_the_default_config_and_the_recipes_ask_for_auto(compose_train) -> None:
    for overrides in ([], ["experiment=monuseg_cpu"], ["experiment=demo"]):
        assert compose_train(overrides, tiny=False).module.channels_last == "auto"
