"""Sliding-window prediction: stitching is exact, sizes are preserved, settings are validated."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nucseg.inference import TileGrid, sliding_window_predict, tile_starts


def small_fcn(out_channels: int = 1, seed: int = 0) -> nn.Module:
    """A stride-1 fully convolutional net with receptive-field radius 1 + 2 + 1 + 1 = 5 pixels."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(8, out_channels, 3, padding=1),
    ).eval()


@pytest.fixture(scope="module")
def image_1000() -> torch.Tensor:
    return torch.rand(1, 3, 1000, 1000, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("blend", ["gaussian", "flat"])
def test_stitched_equals_untiled_1000(image_1000: torch.Tensor, blend: str) -> None:
    # receptive-field radius 5 <= overlap // 4 = 16: every blended pixel is uncorrupted
    net = small_fcn()
    with torch.inference_mode():
        untiled = net(image_1000)
    stitched = sliding_window_predict(image_1000, net, tile_size=256, overlap=64, batch_size=8, blend=blend)
    assert stitched.shape == untiled.shape
    assert stitched.dtype == torch.float32
    assert (stitched - untiled).abs().max().item() < 1e-4


def test_border_pad_equals_untiled_prediction_of_reflected_image(image_1000: torch.Tensor) -> None:
    net = small_fcn()
    with torch.inference_mode():
        reference = net(F.pad(image_1000, (32, 32, 32, 32), mode="reflect"))[:, :, 32:-32, 32:-32]
    stitched = sliding_window_predict(image_1000, net, tile_size=256, overlap=64, border_pad=32)
    assert (stitched - reference).abs().max().item() < 1e-4


def test_without_trim_a_seam_would_show() -> None:
    # sanity check of the test above: tile edges do corrupt predictions of this net
    net = small_fcn()
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        whole = net(image)
        left = net(image[:, :, :, :64])
    assert (whole[..., :64] - left).abs()[..., 60:].max().item() > 1e-3


def test_batch_channels_rectangular_tiles_and_fractional_overlap() -> None:
    net = small_fcn(out_channels=3)
    images = torch.rand(3, 3, 300, 451, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        untiled = net(images)
    stitched = sliding_window_predict(images, net, tile_size=(96, 128), overlap=0.5, batch_size=5)
    assert stitched.shape == (3, 3, 300, 451)
    assert (stitched - untiled).abs().max().item() < 1e-4


def test_unbatched_input_gives_unbatched_output() -> None:
    out = sliding_window_predict(torch.rand(3, 70, 90), small_fcn(), tile_size=64, overlap=16)
    assert out.shape == (1, 70, 90)


@pytest.mark.parametrize("size", [(10, 12), (40, 300), (64, 64), (65, 64)])
def test_images_smaller_than_a_tile_are_padded_and_cropped_back(size: tuple[int, int]) -> None:
    calls: list[tuple[int, ...]] = []

    def predict(tiles: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(tiles.shape))
        return tiles.mean(dim=1, keepdim=True)  # pointwise: padding never leaks into the result

    image = torch.rand(1, 3, *size)
    out = sliding_window_predict(image, predict, tile_size=64, overlap=16)
    assert out.shape == (1, 1, *size)
    assert all(call[-2:] == (64, 64) for call in calls)
    assert torch.allclose(out, image.mean(dim=1, keepdim=True), atol=1e-6)


def test_tile_starts_cover_evenly_with_minimum_overlap() -> None:
    assert tile_starts(1000, 256, 64) == [0, 186, 372, 558, 744]
    assert tile_starts(256, 256, 64) == [0]
    assert tile_starts(100, 256, 64) == [0]
    for length in range(257, 1500, 37):
        starts = tile_starts(length, 256, 64)
        assert starts[0] == 0 and starts[-1] == length - 256
        assert all(0 < b - a <= 256 - 64 for a, b in zip(starts[:-1], starts[1:], strict=True))


def test_weights_are_positive_everywhere_and_zero_on_inner_tile_edges() -> None:
    grid = TileGrid((700, 530), (256, 256), (64, 64), "gaussian", torch.device("cpu"))
    assert grid.weight_sum().min().item() > 0
    inner = grid.weight(grid.starts[0][1], grid.starts[1][1])
    assert inner[:16].abs().max().item() == 0 and inner[:, -16:].abs().max().item() == 0
    corner = grid.weight(0, 0)
    assert corner[0, 0].item() == 1.0  # image-border sides keep full weight


def test_tiles_go_to_the_module_device_and_back() -> None:
    seen: list[torch.device] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, tiles: torch.Tensor) -> torch.Tensor:
            seen.append(tiles.device)
            return tiles[:, :1] * self.scale

    out = sliding_window_predict(torch.rand(2, 3, 100, 100), Recorder(), tile_size=64, overlap=16)
    assert out.device.type == "cpu" and set(seen) == {torch.device("cpu")}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile_size": 100}, "multiple of 32"),
        ({"overlap": 64, "tile_size": 64}, "smaller than the tile"),
        ({"overlap": 1.5}, "fractional overlap"),
        ({"blend": "cosine"}, "unknown blend"),
        ({"tta": "all"}, "unknown tta"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_settings_raise_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sliding_window_predict(torch.rand(1, 3, 64, 64), small_fcn(), **kwargs)


def test_wrong_output_shape_is_reported() -> None:
    with pytest.raises(ValueError, match="predict_fn returned"):
        sliding_window_predict(torch.rand(1, 3, 64, 64), lambda t: t[:, :, ::2, ::2], tile_size=64, overlap=0)


def test_integer_images_are_rejected() -> None:
    with pytest.raises(ValueError, match="float images"):
        sliding_window_predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), small_fcn(), tile_size=64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_close_to_float32() -> None:
    """amp is opt-in; when asked for, fp16 stays close to the float32 default."""
    net = small_fcn().cuda()
    image = torch.rand(1, 3, 300, 300)
    full = sliding_window_predict(image, net, tile_size=128, overlap=32, amp=False)
    mixed = sliding_window_predict(image, net, tile_size=128, overlap=32, amp=True)
    assert mixed.device.type == "cpu"
    assert (full - mixed).abs().max().item() < 1e-2


def test_default_precision_is_float32_and_amp_is_opt_in() -> None:
    """One precision rule for validation, test, evaluate and predict: float32 unless amp=True."""
    seen: list[torch.dtype] = []

    def net(tiles: torch.Tensor) -> torch.Tensor:
        weight = torch.ones(1, 3, 1, 1)
        out = torch.nn.functional.conv2d(tiles, weight)
        seen.append(out.dtype)
        return out

    image = torch.rand(1, 3, 64, 64)
    sliding_window_predict(image, net, tile_size=64, overlap=0)
    assert seen == [torch.float32]
    sliding_window_predict(image, net, tile_size=64, overlap=0, amp=True)
    assert seen[-1] == torch.bfloat16
