"""Experiments through the command line: configs, overrides, output folders, refusal to
overwrite, verify's two entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from icalign import cli
from icalign import config as C
from icalign.experiments import ablations, gd_baseline, verify


def test_set_round_trip_changes_the_model(tmp_path):
    out = tmp_path / "results"
    base = ["run", "tf-vs-gd", "--out", str(out), "--no-progress", "--set", "model.n_layers=1",
            "--set", "model.d_model=8", "--set", "model.n=4", "--set", "train.steps=2", "--set", "train.batch=4",
            "--set", "train.chunk=2", "--set", "train.checkpoint_every=2", "--set", "eval.contexts=4",
            "--set", "eval.sensitivity_contexts=0", "--run-root", str(tmp_path / "runs")]
    assert cli.main(base + ["--set", "model.attention=linear"]) == 0
    assert cli.main(base + ["--set", "model.attention=softmax", "--set", "train.lr=3e-4"]) == 0
    folders = sorted((out / "tf-vs-gd").iterdir())
    assert len(folders) == 2 and all(f.name.startswith("variant-") for f in folders)
    res = [json.loads((f / "tf_vs_gd.json").read_text()) for f in folders]
    by_attn = {r["config"]["model"]["attention"]: r for r in res}
    assert set(by_attn) == {"linear", "softmax"}
    assert by_attn["softmax"]["config"]["train"]["lr"] == 3e-4 and by_attn["linear"]["config"]["train"]["lr"] == 1e-3
    # the override changed the model that ran, not only the record
    assert by_attn["linear"]["model_config"]["attention"] == "linear"
    assert by_attn["linear"]["comparison"]["nmse"] != by_attn["softmax"]["comparison"]["nmse"]
    with pytest.raises(FileExistsError, match="--force"):  # a finished result is never overwritten
        cli.main(base + ["--set", "model.attention=linear"])


def test_quick_full_and_named_runs_go_to_different_folders(tmp_path):
    def resolve(*flags):
        args = cli._run_parser("gd-baseline", gd_baseline).parse_args(["--out", str(tmp_path), *flags])
        return cli.resolve("gd-baseline", gd_baseline, args)[1]

    quick, full = resolve("--quick"), resolve("--full")
    assert quick == tmp_path / "gd-baseline" / "quick" and full == tmp_path / "gd-baseline" / "full"
    assert resolve("--set", "eval.contexts=16").name.startswith("variant-")
    assert resolve("--name", "mine") == tmp_path / "gd-baseline" / "mine"
    with pytest.raises(ValueError, match="reserved"):
        resolve("--name", "full", "--set", "eval.contexts=16")


def test_show_config_round_trips_through_a_toml_file(tmp_path, capsys):
    assert cli.main(["run", "ablations", "--set", "model.n_layers=3", "--set", "factors=depth,ffn",
                     "--show-config"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "v.toml"
    path.write_text(text)
    cfg = C.load_toml(ablations.QUICK, path)
    assert cfg.model.n_layers == 3 and cfg.factors == ("depth", "ffn") and cfg.model.head_dim is None
    assert cfg == C.override(ablations.QUICK, ["model.n_layers=3", "factors=depth,ffn"])


@pytest.mark.parametrize("flag, match", [
    ("model.n_layerz=4", r"unknown config key 'model.n_layerz'; valid keys under 'model': n_layers"),
    ("nope=1", "valid keys at the top level: model, train, eval, seed"),
    ("model.n_layers=0", r"'model.n_layers' = '0' is not allowed: ModelConfig.n_layers must be >= 1"),
    ("train.steps=0", r"'train.steps' = '0' is not allowed: TrainConfig.steps must be >= 1"),
    ("train.lr=abc", r"'train.lr': cannot use 'abc'; expected a number"),
    ("model.attention=sigmoid", r"must be one of \['softmax', 'linear', 'relu', 'linear_mean'\]"),
    ("eval.contexts=0", "EvalConfig.contexts must be >= 2"),
    ("model.ffn=maybe", "expected true or false"),
    ("seed=-1", "seed must be >= 0"),
])
def test_bad_overrides_are_one_line_errors_naming_the_key(flag, match):
    with pytest.raises(ValueError, match=match):
        cli.main(["run", "tf-vs-gd", "--set", flag])


def test_help_of_readme_and_redraw_only_prints(tmp_path, monkeypatch, capsys):
    """`icalign readme --help` used to rewrite README.md (the top parser kept the flag)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["readme", "--help"])
    assert e.value.code == 0 and "usage: icalign readme" in capsys.readouterr().out
    assert cli.main(["redraw", "--help"]) == 0 and "usage: icalign redraw" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_bad_override_fails_before_any_compilation(tmp_path):
    """In a fresh process: the error comes within the import time of icalign plus a second,
    and as one line on stderr (no traceback). Each timing is the best of two, so that a busy
    machine (another test worker) does not decide the comparison."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def timed(cmd):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
        return time.perf_counter() - t0, proc

    import_s = min(timed([sys.executable, "-c", "import icalign.cli"])[0] for _ in range(2))
    runs = [timed([sys.executable, "-m", "icalign.cli", "run", "reward-noise", "--set", "seeds=1"]) for _ in range(2)]
    elapsed, proc = min(runs, key=lambda r: r[0])
    assert proc.returncode == 2  # input refused before any work
    assert proc.stderr.strip().splitlines() == [
        "icalign: error: config key 'seeds' = '1' is not allowed: seeds must be >= 2 "
        "(a 95% interval over seeds needs two), got 1"]
    assert elapsed < import_s + 1.0, (elapsed, import_s)
    assert list(tmp_path.iterdir()) == []


def test_verify_runs_in_memory_and_through_both_entry_points(tmp_path, monkeypatch):
    res = verify.run(verify.Config(contexts=2), progress=False)
    assert res["all_pass"] and C.from_dict(verify.Config, res["config"]) == verify.Config(contexts=2)
    # the entry points are wiring (CLI -> run -> JSON): they get the checks just computed, not a
    # second and third run of them
    computed = {k: v for k, v in res.items() if k not in ("experiment", "config", "config_hash", "hardware",
                                                         "identity")}
    calls = []
    monkeypatch.setattr(verify.V, "verify", lambda seed, contexts, **kw: calls.append((seed, contexts)) or computed)
    for argv in (["verify"], ["run", "verify"]):  # through the console entry point, as `icalign ...`
        out = tmp_path / "_".join(argv)
        monkeypatch.setattr("sys.argv", ["icalign", *argv, "--set", "contexts=2", "--out", str(out)])
        assert cli.entry() == 0
        written = list((out / "verify").iterdir())
        assert len(written) == 1
        res = json.loads((written[0] / "verify.json").read_text())
        assert res["all_pass"] and len(res["claims"]) > 10
    assert calls == [(0, 2), (0, 2)]  # the flags reached the library call
