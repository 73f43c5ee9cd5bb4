"""``nucseg.load(run).predict(...)`` on a tiny trained run: stains, tiling, instances, the nuclei table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DarknessNet, train_tiny_run
from PIL import Image

import nucseg
from nucseg.api import NucleusModel, Prediction
from nucseg.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_checkpoint_dict,
    load_model,
    run_resolution_mpp,
)
from nucseg.data.stain import stain_normalizer_from_state_dict
from nucseg.data.synthetic import make_synthetic_image
from nucseg.inference import sliding_window_predict
from nucseg.inference.instances import postprocess_settings
from nucseg.inference.settings import InferenceSettings


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def model(tiny_run: Path) -> NucleusModel:
    return nucseg.load(tiny_run, device="cpu", mpp=0.5)


@pytest.mark.slow
def test_load_carries_stain_reference_resolution_tiling_and_postprocessing(model: NucleusModel, tiny_run: Path):
    assert model.stain_normalizer is not None and model.stain_normalizer.is_fitted
    assert model.mpp == 0.5
    assert model.inference.tile_size == 64 and model.inference.overlap == 16
    assert model.postprocess == load_model(tiny_run).postprocess  # what predict and the test use
    assert model.threshold == 0.5 and model.min_size == 10  # the run's, as predict and the test use them
    assert "NucleusModel(unet" in repr(model) and model.device.type == "cpu"


@pytest.mark.slow
def test_predict_applies_the_stain_reference_and_matches_the_hand_chained_steps(model: NucleusModel, tmp_path: Path):
    image = make_synthetic_image(seed=11, size=(90, 110)).image
    Image.fromarray(image).save(tmp_path / "tile.png")
    result = model.predict(tmp_path / "tile.png")
    assert isinstance(result, Prediction)
    assert result.probability.shape == result.labels.shape == (90, 110)
    assert result.probability.dtype == np.float32 and result.labels.dtype == np.int32
    np.testing.assert_array_equal(result.image, image)

    # The six steps a user would otherwise chain by hand.
    normalized = model.stain_normalizer.normalize(image, name="by hand")
    tensor = torch.from_numpy(normalized).permute(2, 0, 1).float() / 255
    logits = sliding_window_predict(tensor, model.module, **model.module.inference_settings.kwargs())
    expected = torch.sigmoid(logits[0]).numpy()
    np.testing.assert_allclose(result.probability, expected, atol=1e-6)
    unnormalized = model.predict(image, normalize_stain=False).probability
    assert np.abs(unnormalized - result.probability).max() > 1e-4, "the stain step must change the input"


@pytest.mark.slow
def test_load_model_bundles_the_fitted_stain_reference_and_the_run_settings(tiny_run: Path):
    model = load_model(tiny_run)
    assert model.checkpoint == find_checkpoint(tiny_run) and not model.module.training
    stored = load_checkpoint_dict(tiny_run)
    state = next(value["stain_normalizer"] for value in stored.values() if isinstance(value, dict) and "stain_normalizer" in value)
    assert model.stain_normalizer.is_fitted
    assert model.stain_normalizer.fingerprint() == stain_normalizer_from_state_dict(state).fingerprint()
    assert model.run_config == stored["nucseg"]["run_config"]
    assert model.inference == InferenceSettings.from_run_config(model.run_config) == model.module.inference_settings
    assert (model.inference.tile_size, model.inference.overlap) == (64, 16)
    assert model.postprocess == postprocess_settings(model.module.target, model.module.postprocess_params)
    assert model.threshold == 0.5 and model.mpp == 0.25  # the synthetic data.mpp
    assert not hasattr(model.module, "stain_normalizer") and not hasattr(model.module, "run_config")
    overridden = load_model(tiny_run, config_overrides=["module.inference.tta=d4"])
    assert overridden.inference.tta == "d4" and overridden.run_config["module"]["inference"]["tta"] == "d4"


def test_inference_settings_defaults_and_unknown_keys():
    assert InferenceSettings.from_run_config(None) == InferenceSettings() == InferenceSettings.from_mapping({})
    assert InferenceSettings.from_mapping({"tile_size": [64, 96]}).tile_size == (64, 96)
    assert InferenceSettings().updated({"tta": "d4"}).kwargs()["tta"] == "d4"
    with pytest.raises(ValueError, match=r"unknown inference settings \['tile'\]"):
        InferenceSettings.from_mapping({"tile": 64})


def test_nuclei_table_has_one_row_per_instance():
    model = NucleusModel(DarknessNet().eval(), mpp=0.5)  # no stain reference, default tiling
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:8] = 1  # 4 x 5 = 20 px, centroid (3.5, 5)
    labels[10:13, 20:30] = 2  # 3 x 10 = 30 px, centroid (11, 24.5)
    table = model.measure(labels)
    assert list(table.columns) == ["id", "centroid_y", "centroid_x", "area_px", "area_um2"]
    assert table["id"].tolist() == [1, 2] and table["area_px"].tolist() == [20, 30]
    assert table[["centroid_y", "centroid_x"]].to_numpy().tolist() == [[3.5, 5.0], [11.0, 24.5]]
    assert table["area_um2"].tolist() == pytest.approx([5.0, 7.5])

    probability = np.zeros((20, 30), np.float32)
    probability[labels > 0] = 0.9
    probability[15:17, 0:2] = 0.9  # 4 px: below min_size
    np.testing.assert_array_equal(model.instances(probability), labels)
    dark_disks = np.full((40, 40, 3), 230, np.uint8)
    dark_disks[5:15, 5:15] = dark_disks[25:35, 20:32] = 40
    result = model.predict(dark_disks)
    # two squares of 100 and 120 px; DarknessNet's 3x3 mean loses each square's 4 corner pixels
    assert result.labels.max() == 2 and result.nuclei["area_px"].tolist() == [96, 116]


class ContourStub(torch.nn.Module):
    """Logits of background / interior / boundary read off the red / green / blue channels."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 20.0 * (images - 0.5)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)

    def foreground_probability(self, probabilities: torch.Tensor) -> torch.Tensor:
        return 1.0 - probabilities[:, :1]


def test_predict_uses_the_runs_post_processing_so_a_contour_run_splits_touching_nuclei():
    image = np.zeros((30, 40, 3), np.uint8)
    image[..., 0] = 255  # background
    image[5:15, 5:14] = image[5:15, 16:25] = (0, 255, 0)  # two interiors
    image[5:15, 14:16] = (0, 0, 255)  # the boundary between them
    contour = NucleusModel(ContourStub().eval(), postprocess=postprocess_settings("contour", {"min_size": 0}))
    result = contour.predict(image)
    assert result.labels.max() == 2, "the boundary channel must split the touching pair"
    assert np.all(result.probability[5:15, 5:25] > 0.99) and np.all(result.probability[20:] < 0.01)
    binary = NucleusModel(ContourStub().eval(), postprocess=postprocess_settings("binary"))
    assert binary.instances(result.probability).max() == 1  # one connected foreground
    stricter = postprocess_settings("binary", {"threshold": 0.6, "min_size": 30})
    assert NucleusModel(DarknessNet().eval(), postprocess=stricter).min_size == 30


def test_resolution_comes_from_the_run_config():
    assert run_resolution_mpp({"data": {"mpp": 0.3}}) == 0.3
    assert run_resolution_mpp({"data": {"_target_": "nucseg.data.datamodule.MonusegDataModule"}}) == 0.25
    assert run_resolution_mpp({"data": {"source": {"_target_": "nucseg.data.sources.SyntheticSource"}}}) is None
    assert run_resolution_mpp(None) is None


def test_load_names_a_missing_run(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no checkpoints/best.ckpt"):
        nucseg.load(tmp_path)
