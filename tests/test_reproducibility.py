"""One config and seed on the CPU give the same numbers twice; each run records what it was made of."""

from __future__ import annotations

import json
import shutil

import pytest

from nucseg.pipeline import train
from nucseg.utils.provenance import git_state, package_versions


@pytest.mark.slow
def test_the_same_tiny_training_twice_gives_identical_metrics(compose_train, tmp_path):
    cfg = compose_train(["trainer.max_epochs=2"])
    assert cfg.trainer.deterministic, "recipes train with deterministic algorithms by default"
    first = train(cfg)
    shutil.move(tmp_path / "run", tmp_path / "first")
    second = train(compose_train(["trainer.max_epochs=2"]))
    assert second["test"] == first["test"]
    assert second["params"] == first["params"] and second["train_patches"] == first["train_patches"]
    provenance = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert provenance["config"]["seed"] == 42 and provenance["config"]["trainer"]["deterministic"] == cfg.trainer.deterministic
    assert provenance["data_files_sha256"] == {}  # synthetic data: no files read


def test_provenance_names_versions_and_commit():
    versions = package_versions(("torch", "lightning", "not-a-package-at-all"))
    assert versions["python"] and versions["torch"] and versions["lightning"]
    assert versions["not-a-package-at-all"] is None
    state = git_state()
    assert state["commit"] is None or (len(state["commit"]) == 40 and isinstance(state["dirty"], bool))
