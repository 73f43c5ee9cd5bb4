"""Export a trained network, with its preprocessing, to TorchScript or ONNX.

The exported graph takes (B, 3, H, W) RGB, either uint8 in 0..255 or float in [0, 1] (the
TorchScript model accepts both; an ONNX model takes the dtype chosen at export, uint8 by
default), applies the module's standardisation (ImageNet mean and std) inside, and returns
(B, C, H, W) float32 logits (C = 1: nucleus; probability = sigmoid). H and W are free but must
be multiples of ``tile_multiple``; whole images are meant to be cut into ``tile_size`` tiles and
blended as ``nucseg.inference.sliding_window_predict`` does.

Not inside the graph, and written to the JSON beside the model instead: stain normalisation
(the fitted Macenko reference, ``stain_normalization``: ``HERef`` 3x2 stain vectors in optical
density, ``maxCRef`` the reference's 99th-percentile concentrations, ``Io``, ``alpha``,
``beta`` as in torchstain), tiling, the threshold and the resolution (µm per pixel). Every
export is checked against the Lightning module on a test image: the largest absolute logit
difference is printed, stored in the JSON (``verification``) and must stay below ``tolerance``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from nucseg.checkpoint import TrainedModel

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
DEFAULT_TOLERANCE = 1e-3
ONNX_OPSET = 17


class ExportError(RuntimeError):
    """The network cannot be exported, or the export does not reproduce the module."""


class PreprocessedNetwork(nn.Module):
    """The bare network behind the module's input handling: RGB in, logits out.

    Args:
        net: maps standardised (B, 3, H, W) images to logits.
        mean: per-channel mean of [0, 1] images (3 values).
        std: per-channel standard deviation (3 values).
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().float().reshape(1, 3, 1, 1).clone())
        self.register_buffer("std", std.detach().float().reshape(1, 3, 1, 1).clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (0..255) or float ([0, 1]) RGB (B, 3, H, W) -> float32 logits (B, C, H, W)."""
        if images.dtype == torch.uint8:
            scaled = images.float() / 255.0
        else:
            scaled = images.float()
        return self.net((scaled - self.mean) / self.std)


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and how closely it matches the module."""

    model_path: Path
    metadata_path: Path
    max_abs_difference: float


def preprocessed_network(module: Any) -> PreprocessedNetwork:
    """Wrap ``module.net`` with ``module``'s standardisation (a copy on the CPU, eval mode)."""
    import copy

    net = copy.deepcopy(module.net).float().cpu().eval()
    net = net.to(memory_format=torch.contiguous_format)
    return PreprocessedNetwork(net, module.image_mean.cpu(), module.image_std.cpu()).eval()


def verification_image(
    stain_normalizer: Any | None, size: int, image_path: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """A (size, size, 3) uint8 image as the network would see it (normalised to the run's stains).

    ``image_path``: a crop of this image (top-left corner, shrunk to a multiple of 32 if it is
    smaller); without it, a synthetic H&E tile (``nucseg.data.synthetic``).
    """
    if image_path is not None:
        from nucseg.io.images import read_rgb_image

        image = read_rgb_image(image_path)
        height = min(size, image.shape[0] // 32 * 32) or image.shape[0]
        width = min(size, image.shape[1] // 32 * 32) or image.shape[1]
        image = np.ascontiguousarray(image[:height, :width])
    else:
        from nucseg.data.synthetic import make_synthetic_image

        image = make_synthetic_image(seed=2024, size=size).image
    return stain_normalizer.normalize(image, name="verification") if stain_normalizer is not None else image


def module_logits(module: Any, image: np.ndarray) -> np.ndarray:
    """The Lightning module's own forward pass on one uint8 image: the reference."""
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255.0)
    device = next(module.parameters()).device
    with torch.inference_mode():
        return module(tensor.to(device)).float().cpu().numpy()


def export_torchscript(network: PreprocessedNetwork, example: torch.Tensor, path: Path) -> Any:
    """Trace the network, script the input handling around it (so uint8 and float both work)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(network.net, ((example.float() / 255.0 - network.mean) / network.std,))
        wrapper = PreprocessedNetwork(traced, network.mean, network.std)
        scripted = torch.jit.script(wrapper)
    scripted.save(str(path))
    return torch.jit.load(str(path), map_location="cpu")


def export_onnx(network: PreprocessedNetwork, example: torch.Tensor, path: Path, opset: int = ONNX_OPSET) -> Any:
    """Export through torch's TorchScript-based ONNX exporter (no onnxscript needed); free B, H, W."""
    try:
        import onnx  # noqa: F401 - torch's exporter writes through it
        import onnxruntime
    except ImportError as error:
        raise ExportError("ONNX export needs onnx and onnxruntime: pip install 'nucseg[export]'") from error
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
            opset_version=opset,
            dynamo=False,
        )
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_exported(exported: Any, images: np.ndarray) -> np.ndarray:
    """Logits of a loaded TorchScript module or ONNX Runtime session for (B, 3, H, W) uint8."""
    if hasattr(exported, "get_inputs"):
        name = exported.get_inputs()[0].name
        return np.asarray(exported.run(None, {name: images})[0], dtype=np.float32)
    with torch.inference_mode():
        return exported(torch.from_numpy(images)).float().numpy()


def export_metadata(
    model: TrainedModel, fmt: str, model_file: str, mpp: float | None, output_channels: int
) -> dict[str, Any]:
    """What a user of the exported file needs to feed it as training did."""
    import nucseg
    from nucseg.inference.tiling import DEFAULT_TILE_MULTIPLE

    module, inference = model.module, model.inference
    stain = model.stain_normalizer.state_dict() if model.stain_normalizer is not None else None
    target = (model.run_config.get("module") or {}).get("target", "binary nucleus mask")
    return {
        "format": fmt,
        "model_file": model_file,
        "model_name": module.model_name,
        "input": {
            "layout": "NCHW",
            "channels": "RGB",
            "dtype": "uint8 (0..255) or float32 ([0, 1])" if fmt == "torchscript" else "uint8 (0..255)",
            "standardisation": {
                "inside_model": True,
                "mean": module.image_mean.flatten().tolist(),
                "std": module.image_std.flatten().tolist(),
            },
            "stain_normalization_inside_model": False,
        },
        "output": {
            "name": "logits",
            "channels": output_channels,
            "target": target,
            "activation": "sigmoid",
        },
        "resolution_mpp": mpp,
        "tiling": {
            "tile_size": inference.tile_size,
            "tile_multiple": inference.tile_multiple or DEFAULT_TILE_MULTIPLE,
            "overlap": inference.overlap,
            "blend": inference.blend,
            "tta": inference.tta,
        },
        "threshold": model.threshold,
        "stain_normalization": stain,
        "versions": {"nucseg": nucseg.__version__, "torch": torch.__version__},
    }


def export_network(
    run: str | os.PathLike[str],
    fmt: str,
    output_dir: str | os.PathLike[str] | None = None,
    image_path: str | os.PathLike[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    mpp: float | None = None,
    model: TrainedModel | None = None,
) -> ExportResult:
    """Export the network of ``run`` and check it against the module.

    Args:
        run: a run directory or ``.ckpt`` (loaded with ``nucseg.checkpoint.load_model``).
        fmt: ``torchscript`` or ``onnx``.
        output_dir: where ``model.torchscript.pt`` / ``model.onnx`` and its ``.json`` go
            (default: ``<run>/export``, or ``export`` beside a ``.ckpt``).
        image_path: the verification image (default: a synthetic tile of the model's tile size).
        tolerance: largest accepted absolute logit difference to the module.
        mpp: the training resolution, when the run did not record it.
        model: the run already loaded (skips loading ``run``).

    Returns:
        The written paths and the measured difference.

    Raises:
        ExportError: unknown format, export failure, or a difference above ``tolerance`` (the
            written files are then removed).
        nucseg.checkpoint.CheckpointError: ``run`` has no usable checkpoint.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of {FORMATS}")
    from nucseg.checkpoint import load_model

    run = Path(run)
    if model is None:
        model = load_model(run, map_location="cpu")
    module = model.module
    if output_dir is None:
        output_dir = (run if run.is_dir() else run.parent) / "export"
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = output_dir / FILE_NAMES[fmt]
    metadata_path = model_path.with_suffix(".json") if fmt == "onnx" else output_dir / "model.torchscript.json"

    tile = model.inference.tile_size
    size = int(tile if isinstance(tile, int) else max(tile))
    image = verification_image(model.stain_normalizer, size, image_path)
    batch = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
    network = preprocessed_network(module)
    try:
        exported = (export_torchscript if fmt == "torchscript" else export_onnx)(
            network, torch.from_numpy(batch), model_path
        )
        reference = module_logits(module, image)
        produced = run_exported(exported, batch)
    except ExportError:
        model_path.unlink(missing_ok=True)
        raise
    except Exception as error:  # noqa: BLE001 - one line naming the format and the cause
        model_path.unlink(missing_ok=True)
        raise ExportError(f"{fmt} export failed ({type(error).__name__}: {error})") from error
    if produced.shape != reference.shape:
        model_path.unlink(missing_ok=True)
        raise ExportError(f"{fmt} export gives logits of shape {produced.shape}, the module {reference.shape}")
    difference = float(np.max(np.abs(produced - reference)))
    if not difference <= tolerance:
        model_path.unlink(missing_ok=True)
        raise ExportError(
            f"{fmt} export differs from the module by {difference:.3g} (> tolerance {tolerance:g}); not kept"
        )
    metadata = export_metadata(model, fmt, model_path.name, mpp if mpp is not None else model.mpp, int(reference.shape[1]))
    metadata["verification"] = {
        "image": str(image_path) if image_path is not None else "synthetic H&E tile (seed 2024)",
        "shape": list(batch.shape),
        "max_abs_difference": difference,
        "tolerance": tolerance,
    }
    metadata["source"] = str(run)
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    return ExportResult(model_path, metadata_path, difference)
