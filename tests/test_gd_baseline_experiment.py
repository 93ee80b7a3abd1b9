"""The gd-baseline experiment end to end through the CLI, at a reduced number of contexts."""

import json

import pytest

from icalign import cli


def test_gd_baseline_writes_results_and_refuses_overwrite(tmp_path):
    args = ["run", "gd-baseline", "--out", str(tmp_path), "--contexts", "16"]
    assert cli.main(args) == 0
    res = json.loads((tmp_path / "gd_baseline.json").read_text())
    assert (tmp_path / "gd_baseline.png").stat().st_size > 10_000
    assert (tmp_path / "gd_baseline.pdf").exists()
    assert res["ts"] == list(range(2, 16))
    for name in ("adam", "gd"):
        curves = res["learners"][name]["levels"]
        assert set(curves) == {"0", "0.25", "0.5", "0.75", "1"}
        # Clean rewards beat fully random ones at the largest t (16 contexts: a loose check).
        assert curves["0"]["mean"][-1] < curves["1"]["mean"][-1] - 0.3
    with pytest.raises(FileExistsError, match="--force"):
        cli.main(args)
    assert cli.main(args + ["--force"]) == 0


def test_unknown_experiment_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown name 'nope'"):
        cli.main(["run", "nope"])


def test_help_after_a_name_lists_that_modules_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "gd-baseline", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "icalign run gd-baseline" in out and "--contexts" in out and "--force" in out
    assert cli.main(["--help"]) == 0
    assert "{run,bench,list,verify}" in capsys.readouterr().out
