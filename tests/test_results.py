"""Result files: atomic writes with normal permissions; finished results are not overwritten."""

import os
import stat

import numpy as np
import pytest

from icalign import io as results


def test_write_json_roundtrip_and_permissions(tmp_path):
    path = results.write_json(tmp_path / "r.json", {"a": np.arange(3), "b": np.float32(0.5)})
    assert results.read_json(path) == {"a": [0, 1, 2], "b": 0.5}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left


def test_failed_write_leaves_old_file_intact(tmp_path):
    path = results.write_json(tmp_path / "r.json", {"ok": 1})
    with pytest.raises(TypeError):
        results.write_json(path, {"bad": object()})
    assert results.read_json(path) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_claim_output_refuses_finished_result(tmp_path):
    path = results.write_json(tmp_path / "r.json", {"ok": 1})
    with pytest.raises(FileExistsError, match="--force"):
        results.claim_output(path, force=False)
    assert results.claim_output(path, force=True) == path
    assert results.claim_output(tmp_path / "new" / "x.json", force=False).parent.is_dir()
