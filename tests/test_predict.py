"""The predict command: inputs of every kind, all outputs, corrupt files skipped, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import DarknessNet, nuclei_image  # tests/ is on sys.path (pytest rootdir-relative import)
from PIL import Image

import nucseg.predict.cli as predict_cli
from nucseg.checkpoint import TrainedModel
from nucseg.inference.settings import InferenceSettings
from nucseg.inference.tiling import BLEND_MODES
from nucseg.inference.tta import TTA_MODES
from nucseg.predict.grid import OutputPaths
from nucseg.predict.runner import predict_file

REPO = Path(__file__).resolve().parents[1]


class CountingNormalizer:
    """Stands in for the training stain reference: records what it was asked to normalise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, tuple[int, ...]]] = []

    def normalize(self, image: np.ndarray, name: str | None = None) -> np.ndarray:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.calls.append((name, image.shape))
        return image


class FakeModule(DarknessNet):
    """A net standing in for a trained run (``fake_model`` loads it with these settings and stains)."""

    def __init__(self) -> None:
        super().__init__()
        self.inference = InferenceSettings(tile_size=128, overlap=32, batch_size=4)
        self.stain_normalizer = CountingNormalizer()


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> FakeModule:
    module = FakeModule().eval()
    loaded: list[str] = []

    def load(checkpoint: str, device: str) -> TrainedModel:
        loaded.append(checkpoint)
        return TrainedModel(module, inference=module.inference, stain_normalizer=module.stain_normalizer)

    monkeypatch.setattr(predict_cli, "_load", load)
    return module


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """One image of every supported kind, plus a corrupt one and a non-image file."""
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = nuclei_image(300, 340, 40, seed=5)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=95)
    tifffile.imwrite(folder / "grey16.tif", rgb.mean(axis=2).astype(np.uint16) * 257)
    tifffile.imwrite(folder / "tiled.tiff", rgb, tile=(128, 128), compression="zlib", photometric="rgb")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    (folder / "notes.txt").write_text("not an image")
    return folder


def outputs_of(directory: Path, stem: str) -> list[Path]:
    return OutputPaths.for_image(directory, stem).all()


def test_folder_with_a_corrupt_file_writes_the_others_and_fails(
    fake_model: FakeModule, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = predict_cli.main(
        [str(image_folder), "-c", "run", "-o", str(out), "--no-progress", "--min-size", "5"]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "corrupt.png" in captured.err and captured.err.count("error:") == 1
    for stem in ("rgb", "rgba", "photo", "grey16", "tiled"):
        for path in outputs_of(out, stem):
            assert path.is_file() and path.stat().st_size > 0, path
    assert not any(path.exists() for path in outputs_of(out, "corrupt"))
    assert "5 of 6 images written" in captured.out
    # the training stain reference was applied to every readable image, once each
    assert sorted(Path(name).name for name, _ in fake_model.stain_normalizer.calls) == sorted(
        ["rgb.png", "rgba.png", "photo.jpg", "grey16.tif", "tiled.tiff"]
    )


def test_outputs_have_the_documented_formats(
    fake_model: FakeModule, image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code = predict_cli.main(
        [str(image_folder / "rgb.png"), "-c", "run", "-o", str(out), "--no-progress", "--probability"]
    )
    assert code == 0
    paths = OutputPaths.for_image(out, "rgb", probability=True)
    mask = np.asarray(Image.open(paths.mask))
    labels = tifffile.imread(paths.labels)
    overlay = np.asarray(Image.open(paths.overlay))
    probability = tifffile.imread(paths.probability)
    assert mask.shape == labels.shape == probability.shape == (300, 340)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert labels.dtype == np.int32 and np.array_equal(mask > 0, labels > 0)
    assert overlay.shape == (300, 340, 3) and (overlay == (0, 255, 0)).all(axis=-1).any()
    document = json.loads(paths.geojson.read_text())
    assert document["type"] == "FeatureCollection" and len(document["features"]) == labels.max() > 10
    assert {f["properties"]["objectType"] for f in document["features"]} == {"detection"}


def test_rgba_and_grey_inputs_give_the_same_prediction_as_their_rgb(
    fake_model: FakeModule, tmp_path: Path
) -> None:
    rgb = nuclei_image(200, 200, 30, seed=6)
    grey = rgb.mean(axis=2).round().astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(np.dstack([rgb, np.zeros_like(grey)])).save(tmp_path / "b.png")  # alpha 0: ignored
    tifffile.imwrite(tmp_path / "c.tif", np.repeat(grey[..., None], 3, axis=2))
    tifffile.imwrite(tmp_path / "d.tif", grey.astype(np.uint16) * 257)  # 16 bit grey
    code = predict_cli.main(
        [str(tmp_path / "*.*"), "-c", "run", "-o", str(tmp_path / "out"), "--no-progress"]
    )
    assert code == 0
    labels = {stem: tifffile.imread(tmp_path / "out" / f"{stem}_labels.tif") for stem in "abcd"}
    assert np.array_equal(labels["a"], labels["b"])
    assert np.array_equal(labels["c"], labels["d"])


def test_streaming_path_gives_the_same_outputs(
    fake_model: FakeModule, image_folder: Path, tmp_path: Path
) -> None:
    image = image_folder / "tiled.tiff"
    module = fake_model
    tiling = module.inference
    memory = predict_file(image, module, OutputPaths.for_image(tmp_path / "m", "x"), None, tiling)
    streamed = predict_file(
        image, module, OutputPaths.for_image(tmp_path / "s", "x"), None, tiling, stream_above=1000
    )
    assert not memory.streamed and streamed.streamed and memory.nuclei == streamed.nuclei
    assert np.array_equal(
        tifffile.imread(tmp_path / "m" / "x_labels.tif"), tifffile.imread(tmp_path / "s" / "x_labels.tif")
    )


def test_command_line_overrides_the_model_settings(
    fake_model: FakeModule, image_folder: Path, tmp_path: Path
) -> None:
    seen: list[tuple[int, ...]] = []
    original = fake_model.forward

    def recording_forward(images):  # noqa: ANN001, ANN202
        seen.append(tuple(images.shape))
        return original(images)

    fake_model.forward = recording_forward  # type: ignore[method-assign]
    args = [str(image_folder / "rgb.png"), "-c", "run", "-o", str(tmp_path / "o"), "--no-progress"]
    assert (
        predict_cli.main(
            args + ["--tile-size", "64", "--overlap", "0.25", "--batch-size", "3", "--tta", "flips"]
        )
        == 0
    )
    assert {shape[-2:] for shape in seen} == {(64, 64)} and max(shape[0] for shape in seen) == 3


def test_command_line_offers_the_settings_of_the_engine() -> None:
    """Every sliding-window option is an ``InferenceSettings`` field; unset, the run's value stays."""
    parser = predict_cli.build_parser()
    args = parser.parse_args(["x.png", "-c", "run", "-o", "out"])
    options = {action.dest: action for action in parser._actions}
    assert set(predict_cli.INFERENCE_OPTIONS) <= {field for field in InferenceSettings.__dataclass_fields__}
    assert all(options[key].default is None for key in predict_cli.INFERENCE_OPTIONS)  # the run's
    assert tuple(options["blend"].choices) == BLEND_MODES and tuple(options["tta"].choices) == TTA_MODES
    defaults = InferenceSettings()
    assert defaults.blend in BLEND_MODES and defaults.tta in TTA_MODES
    assert predict_cli.inference_from(args, defaults) == defaults
    run = InferenceSettings(tile_size=128, tta="d4", amp=True)
    assert predict_cli.inference_from(args, run) == run
    given = parser.parse_args(["x.png", "-c", "r", "-o", "o", "--overlap", "0.25", "--tile-size", "64", "--no-amp"])
    assert predict_cli.inference_from(given, run) == InferenceSettings(tile_size=64, overlap=0.25, tta="d4", amp=False)
    assert isinstance(predict_cli.inference_from(parser.parse_args(["x", "-c", "r", "-o", "o", "--overlap", "48"]), run).overlap, int)


def test_no_inputs_and_bad_model_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict_cli.main([str(tmp_path / "missing.png"), "-c", "run", "-o", str(tmp_path)]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err
    Image.fromarray(nuclei_image(64, 64, 3)).save(tmp_path / "x.png")
    assert (
        predict_cli.main([str(tmp_path / "x.png"), "-c", str(tmp_path / "no-run"), "-o", str(tmp_path)]) == 2
    )
    assert "cannot load model" in capsys.readouterr().err


def test_duplicate_stems_get_distinct_outputs() -> None:
    files = [Path("a/x.png"), Path("b/x.tif"), Path("c/y.png")]
    assert predict_cli.unique_stems(files) == ["x", "x-2", "y"]


def test_module_entry_point_runs() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "nucseg.predict", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0 and "--checkpoint" in completed.stdout


def test_mpp_option_resamples_and_png_can_be_switched_off(
    fake_model: FakeModule, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = [str(image_folder / "rgb.png"), "-c", "run", "-o", str(out), "--no-progress"]
    assert predict_cli.main(args + ["--mpp", "0.5", "--no-png"]) == 0
    assert "0.5 µm/px, resampled to 0.25" in capsys.readouterr().out
    assert not (out / "rgb_mask.png").exists() and not (out / "rgb_overlay.png").exists()
    labels = tifffile.imread(out / "rgb_labels.tif")
    assert labels.shape == (300, 340) and labels.max() > 5  # the input's grid
    header = (out / "rgb_nuclei.csv").read_text(encoding="utf-8").splitlines()[0]
    assert "Area µm^2" in header
    document = json.loads((out / "rgb.geojson").read_text(encoding="utf-8"))
    assert document["nucseg"]["pixel_size_um"] == 0.5 and len(document["features"]) > 5
    assert predict_cli.main(args + ["--mpp", "300"]) == 2
    assert "--mpp 300" in capsys.readouterr().err


def test_unknown_pixel_size_is_said_once_per_file_and_units_are_pixels(
    fake_model: FakeModule, image_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        code = predict_cli.main([str(image_folder / "rgb.png"), "-c", "run", "-o", str(out), "--no-progress"])
    assert code == 0
    unknown = [r.getMessage() for r in caplog.records if "pixel size unknown" in r.getMessage()]
    assert len(unknown) == 1 and "rgb.png" in unknown[0]
    assert "Area px^2" in (out / "rgb_nuclei.csv").read_text(encoding="utf-8").splitlines()[0]
    assert (out / "rgb_mask.png").is_file()  # small images get PNGs by default
