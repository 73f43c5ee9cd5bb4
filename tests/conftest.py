"""Shared fixtures: tiny configs composed with Hydra's compose API, nothing read from ../shared."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"

# Tiny but complete: 4 synthetic training images of 64 px, one held out, one test image.
TINY_OVERRIDES = [
    "data.source.num_train_images=4",
    "data.source.num_test_images=2",
    "data.source.image_size=96",
    "data.num_val_images=1",
    "data.patch_size=64",
    "data.patches_per_image=2",
    "data.batch_size=2",
    "module.inference.tile_size=64",
    "module.inference.overlap=16",
    "module.inference.batch_size=4",
    "module.num_logged_images=1",
    "++widths.unet=4",
    "++widths.resunet=4",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    """Two cores are shared by everything on CI machines: keep torch from oversubscribing."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def compose_train(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/train.yaml`` with run paths inside ``tmp_path`` (no Hydra run needed)."""

    def _compose(overrides: list[str] | None = None, tiny: bool = True) -> DictConfig:
        paths = [
            f"paths.root_dir={tmp_path}",
            f"paths.output_dir={tmp_path / 'run'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=paths + (TINY_OVERRIDES if tiny else []) + list(overrides or []))

    return _compose
