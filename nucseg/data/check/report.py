"""What a data check found: the problems that stop a run and the changes it must list.

:class:`DataCheckReport` is what :func:`nucseg.data.check.check_monuseg_root` returns; training
logs it and stores :meth:`DataCheckReport.to_dict` in ``metrics.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nucseg.data.monuseg import MonusegError

logger = logging.getLogger(__name__)

# Change kinds besides the image conversions named in nucseg.io.images.
DEGENERATE_REGIONS_SKIPPED = "degenerate_regions_skipped"
VERTICES_CLIPPED = "vertices_clipped"
XML_PREFERRED_OVER_LABEL_MAP = "xml_preferred_over_label_map"
ORPHAN_ANNOTATIONS_IGNORED = "orphan_annotations_ignored"
FILES_IGNORED = "files_ignored"


@dataclass(frozen=True)
class DataProblem:
    """One file that makes the data root unusable, with what to do about it."""

    path: Path
    reason: str
    fix: str

    def line(self) -> str:
        return f"{self.path}: {self.reason} (fix: {self.fix})"



@dataclass
class DataCheckReport:
    """Outcome of :func:`check_monuseg_root`.

    Attributes:
        root: the data root checked.
        images: number of usable images per split checked.
        problems: files that must be fixed before training.
        changes: change kind -> files it applies to (with a detail each).
        checksums: path relative to ``root`` -> SHA-256 of every data file read.
        seconds: wall time of the check.
    """

    root: Path
    images: dict[str, int] = field(default_factory=dict)
    problems: list[DataProblem] = field(default_factory=list)
    changes: dict[str, list[str]] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add_problem(self, path: Path, reason: str, fix: str) -> None:
        self.problems.append(DataProblem(path, reason, fix))

    def add_change(self, kind: str, path: Path, detail: str | None = None) -> None:
        self.changes.setdefault(kind, []).append(f"{path} ({detail})" if detail else str(path))

    def summary(self) -> str:
        splits = ", ".join(f"{split} {count} images" for split, count in self.images.items())
        changed = sum(len(files) for files in self.changes.values())
        if self.problems:
            files = len({problem.path for problem in self.problems})
            return (
                f"data check of {self.root}: {len(self.problems)} problem(s) in {files} file(s) ({splits}); "
                f"nothing was trained: fix them and run `python -m nucseg.data.check {self.root}` again"
            )
        return f"data check of {self.root}: ok ({splits}; {changed} change(s) listed, {self.seconds:.1f} s)"

    def change_lines(self) -> list[str]:
        """One line per change kind with its count and files."""
        return [f"{kind} ({len(files)}): {', '.join(files)}" for kind, files in sorted(self.changes.items())]

    def message(self) -> str:
        """The problems, one line each, then the summary: what a user sees when the check fails."""
        return "\n".join([problem.line() for problem in self.problems] + [self.summary()])

    def log(self, log: logging.Logger = logger) -> None:
        """Log the changes once (warnings: they alter what the model sees) and, when ok, the summary."""
        for line in self.change_lines():
            log.warning("data check: %s", line)
        if self.ok:
            log.info(self.summary())

    def to_dict(self) -> dict[str, Any]:
        """The record stored as ``metrics.json["data_check"]`` (checksums go to the run's provenance)."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "images": dict(self.images),
            "problems": [problem.line() for problem in self.problems],
            "changes": {kind: {"count": len(files), "files": files} for kind, files in sorted(self.changes.items())},
            "files_read": len(self.checksums),
            "seconds": round(self.seconds, 2),
        }

    def raise_if_failed(self) -> None:
        """Raises:
        DataCheckError: when any problem was found."""
        if self.problems:
            raise DataCheckError(self)


class DataCheckError(MonusegError):
    """The data root has problems; the message lists every one, then a summary line."""

    def __init__(self, report: DataCheckReport) -> None:
        self.report = report
        super().__init__(report.message())

