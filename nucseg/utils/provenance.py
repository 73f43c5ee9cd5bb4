"""What a run was made of: resolved config, package versions, git commit, data file checksums.

Written to ``<run>/provenance.json`` before training starts, so a result can be traced back to the
code and the exact files it came from even when the run never finished.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from nucseg.utils.atomic import atomic_write_json

PACKAGES = (
    "torch",
    "lightning",
    "numpy",
    "hydra-core",
    "omegaconf",
    "segmentation-models-pytorch",
    "kornia",
    "torchmetrics",
    "scikit-image",
    "tifffile",
    "imagecodecs",
    "pillow",
)


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions (None for a package that is not installed), with Python's own."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(directory: Path | None = None) -> dict[str, Any]:
    """Commit of the checkout holding the code, and whether tracked files differ from it.

    Returns ``{"commit": None}`` outside a git checkout or without git.
    """
    directory = directory or Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None}
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(changes)}


def write_provenance(
    run_dir: Path, run_config: dict[str, Any], data_checksums: dict[str, str] | None = None
) -> Path:
    """Write ``provenance.json`` into the run directory (atomically) and return its path.

    Args:
        run_dir: the run directory.
        run_config: the resolved config.
        data_checksums: SHA-256 of each data file read, by path relative to the data root.
    """
    record = {
        "created": datetime.now(timezone.utc).isoformat(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "git": git_state(),
        "versions": package_versions(),
        "data_files_sha256": dict(sorted((data_checksums or {}).items())),
        "config": run_config,
    }
    return atomic_write_json(Path(run_dir) / "provenance.json", record)
