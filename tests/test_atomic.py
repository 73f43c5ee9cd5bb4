"""Atomic writes: complete or absent, never half written; readable like ordinary files."""

from __future__ import annotations

import json
import os

import pytest

from nucseg.utils.atomic import atomic_path, atomic_write_json


def test_json_is_written_whole_with_ordinary_permissions(tmp_path):
    target = atomic_write_json(tmp_path / "sub" / "metrics.json", {"dice": 0.8})
    assert json.loads(target.read_text()) == {"dice": 0.8}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"], "no temporary file is left"


def test_a_failed_write_leaves_the_previous_file_untouched(tmp_path):
    target = atomic_write_json(tmp_path / "metrics.json", {"dice": 0.8})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{half")
        raise RuntimeError("crash while writing")
    assert json.loads(target.read_text()) == {"dice": 0.8}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_nan_is_refused_rather_than_written_as_invalid_json(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "metrics.json", {"dice": float("nan")})
    assert not (tmp_path / "metrics.json").exists()
