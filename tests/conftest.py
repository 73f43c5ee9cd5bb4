"""Shared fixtures: tiny configs composed with Hydra's compose API, nothing read from ../shared.

Shared builders (images, folders, a tiny run) are in ``helpers.py``; tests import them from there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import CONFIG_DIR, TINY_OVERRIDES
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig


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
