"""TorchScript and ONNX export of a tiny trained run: same logits as the module, metadata, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_api import train_tiny_run  # tests/ is on sys.path (pytest rootdir-relative import)

from nucseg.checkpoint import TrainedModel, load_model
from nucseg.export.__main__ import main as export_main
from nucseg.export.network import ExportError, export_network, module_logits, preprocessed_network
from nucseg.losses import CompositeLoss
from nucseg.models import build_model
from nucseg.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("export"))


def _other_size_image(seed: int = 3) -> np.ndarray:
    """A 96 x 160 uint8 image: not the traced size, to check that H and W stay free."""
    return np.random.default_rng(seed).integers(0, 256, (96, 160, 3), dtype=np.uint8)


def test_preprocessing_wrapper_equals_the_module_for_uint8_and_float():
    from helpers import DarknessNet

    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = DarknessNet()
            self.register_buffer("image_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("image_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net((images - self.image_mean) / self.image_std)

    holder = Holder().eval()
    network = preprocessed_network(holder)
    image = _other_size_image()
    expected = module_logits(holder, image)
    as_uint8 = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        np.testing.assert_allclose(network(as_uint8).numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(network(as_uint8.float() / 255).numpy(), expected, atol=1e-5)


@pytest.mark.slow
def test_torchscript_export_reproduces_the_module(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert export_main([str(tiny_run), "--format", "torchscript", "--output", str(tmp_path), "--mpp", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "max |logit difference| to the module" in printed
    metadata = json.loads((tmp_path / "model.torchscript.json").read_text())
    difference = metadata["verification"]["max_abs_difference"]
    print(f"torchscript max abs logit difference: {difference:.3g}")
    assert difference < 1e-4
    assert metadata["resolution_mpp"] == 0.5 and metadata["threshold"] == 0.5
    assert metadata["tiling"] == {"tile_size": 64, "tile_multiple": 32, "overlap": 16, "blend": "gaussian", "tta": "none"}
    assert metadata["output"]["channels"] == 1 and metadata["model_name"] == "unet"
    stain = metadata["stain_normalization"]
    assert stain["method"] == "macenko" and np.asarray(stain["HERef"]).shape == (3, 2) and len(stain["maxCRef"]) == 2

    module = load_model(tiny_run).module
    exported = torch.jit.load(str(tmp_path / "model.torchscript.pt"))
    image = _other_size_image()
    expected = module_logits(module, image)
    with torch.no_grad():
        as_uint8 = exported(torch.from_numpy(image).permute(2, 0, 1)[None]).numpy()
        as_float = exported(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255).numpy()
    np.testing.assert_allclose(as_uint8, expected, atol=1e-4)
    np.testing.assert_allclose(as_float, expected, atol=1e-4)


@pytest.mark.slow
def test_onnx_export_reproduces_the_module(tiny_run: Path, tmp_path: Path):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    result = export_network(tiny_run, "onnx", tmp_path)
    metadata = json.loads(result.metadata_path.read_text())
    print(f"onnx max abs logit difference: {result.max_abs_difference:.3g}")
    assert result.model_path == tmp_path / "model.onnx" and result.max_abs_difference < 1e-4
    assert metadata["verification"]["max_abs_difference"] == result.max_abs_difference
    assert metadata["resolution_mpp"] == 0.25  # the run's data.mpp (synthetic images are drawn at 40x)

    session = onnxruntime.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    image = _other_size_image(5)
    batch = np.stack([image, image[::-1].copy()]).transpose(0, 3, 1, 2).copy()
    logits = session.run(None, {"image": batch})[0]
    module = load_model(tiny_run).module
    for index in range(2):
        expected = module_logits(module, batch[index].transpose(1, 2, 0).copy())
        np.testing.assert_allclose(logits[index : index + 1], expected, atol=1e-4)


def _untrained_model() -> TrainedModel:
    """A 4-wide U-Net module built directly (no training): enough to check the export mechanics."""
    net = build_model("unet", width=4, depth=3)
    module = SegmentationModule(net=net, loss=CompositeLoss({"bce": {}}), inference={"tile_size": 64, "overlap": 16})
    return TrainedModel(module.eval(), inference=module.inference_settings, mpp=0.5)


@pytest.mark.slow
def test_torchscript_export_of_a_module_built_directly(tmp_path: Path):
    result = export_network(tmp_path / "unused", "torchscript", tmp_path, model=_untrained_model())
    metadata = json.loads(result.metadata_path.read_text())
    assert result.max_abs_difference < 1e-5 and metadata["resolution_mpp"] == 0.5
    assert metadata["stain_normalization"] is None and metadata["verification"]["shape"] == [1, 3, 64, 64]


def test_onnx_without_its_extra_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match=r"pip install 'nucseg\[export\]'"):
        export_network(tmp_path / "unused", "onnx", tmp_path, model=_untrained_model())
    assert not (tmp_path / "model.onnx").exists()


def test_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert export_main([str(tmp_path), "--format", "onnx"]) == 2
    assert "no checkpoints/best.ckpt" in capsys.readouterr().err
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_network(tmp_path, "tflite")


@pytest.mark.slow
def test_module_entry_point_runs(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "nucseg.export", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "--format {torchscript,onnx}" in result.stdout
