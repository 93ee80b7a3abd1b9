"""Experiments through the command line: configs, overrides, output folders, refusal to
overwrite, verify's two entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import icalign.experiment
from icalign import cli
from icalign import config as C
from icalign import train as T
from icalign.experiments import ablations, gd_baseline, tf_vs_gd, verify


def test_set_round_trip_changes_the_model(tmp_path, capsys, monkeypatch):
    out = tmp_path / "results"
    # the sizes of tiny_configs' tf-vs-gd (batch, contexts, seeds; the step count and learning rate
    # are not compiled): the softmax run's programs are those test_experiments.py compiles, shared
    # through the persistent compilation cache (tests/conftest.py)
    base = ["run", "tf-vs-gd", "--out", str(out), "--no-progress", "--set", "model.n_layers=1",
            "--set", "model.d_model=8", "--set", "model.n=4", "--set", "train.steps=2", "--set", "train.batch=8",
            "--set", "train.chunk=2", "--set", "train.checkpoint_every=2", "--set", "eval.contexts=8",
            "--set", "eval.sensitivity_contexts=0", "--set", "seeds=2", "--run-root", str(tmp_path / "runs")]
    checks = []  # the memory preflight runs once per command: in resolve, not again in the runner
    for mod in (cli, icalign.experiment):
        monkeypatch.setattr(mod, "preflight", lambda cfg, real=mod.preflight: checks.append(cfg) or real(cfg))
    assert cli.main(base + ["--set", "model.attention=linear"]) == 0
    assert len(checks) == 1
    # with --no-progress too, the run ends naming its trained model and the line that loads it
    printed = capsys.readouterr().out.strip().splitlines()
    # the health verdict and both trivial predictors' errors are printed beside the learners'
    health = [line for line in printed if line.startswith("[tf-vs-gd] training health: ")]
    assert len(health) == 1 and "(" in health[0]  # 2 steps: not trained, with the reason
    assert any("mean of candidates (reference)=" in x and "best shown candidate (reference)=" in x for x in printed)
    last = printed[-1]
    assert last.startswith("[tf-vs-gd] trained model: ") and "icalign.train.load_run(" in last
    folder = last.split("icalign.train.load_run(")[1].rstrip(")").strip("'")
    assert T.load_run(folder).model_config.attention == "linear"
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
    # commented: each key's type and allowed values above it
    assert "# a string; one of softmax, linear, relu, linear_mean. how a query weighs the tokens\n" \
           "attention = \"softmax\"" in text
    path = tmp_path / "v.toml"
    path.write_text(text)
    cfg = C.load_toml(ablations.QUICK, path)
    assert cfg.model.n_layers == 3 and cfg.factors == ("depth", "ffn") and cfg.model.head_dim is None
    assert cfg == C.override(ablations.QUICK, ["model.n_layers=3", "factors=depth,ffn"])
    # --set takes a list as --show-config prints it, bracketed, or comma-separated: the same config
    printed = next(line for line in text.splitlines() if line.startswith("factors = "))
    assert printed == 'factors = ["depth", "ffn"]'
    for value in (printed.split(" = ")[1], "[depth, ffn]", "[depth,ffn]", "depth,ffn"):
        assert C.override(ablations.QUICK, [f"factors={value}"]).factors == ("depth", "ffn"), value


def test_help_describes_every_command_and_every_key(capsys):
    assert cli.main(["--help"]) == 0
    top = capsys.readouterr().out
    for command in ("run", "verify", "list", "bench", "redraw", "readme", "reproduce"):
        assert f"e.g. icalign {command}" in top, command
    assert "``" not in top and "no logic" not in top
    with pytest.raises(SystemExit):
        cli.main(["run", "tf-vs-gd", "--help"])
    text = capsys.readouterr().out
    keys = [line.strip() for line in text.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    for key in C.keys(tf_vs_gd.QUICK):  # every key, with its type and the preset's value
        assert key in keys, key
        about = text.split(f"\n  {key}\n", 1)[1].splitlines()[0]
        assert "default " in about and any(t in about for t in ("integer", "number", "string", "true or false", "a list of")), key
    assert "a string; default softmax; one of softmax, linear, relu, linear_mean" in text
    assert "train.min_seen\n      an integer; default 2. the loss averages" in text


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
    ("seeds=0", "seeds must be >= 1"),
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


# Run in a fresh process (a warm cache would hide a compilation): jax reports every trace,
# lowering and backend compile to its monitoring listeners; count them around the CLI call, then
# compile one small function to show the listener counts.
_COUNT_COMPILATIONS = """
import json, sys
import jax.monitoring
events = []
jax.monitoring.register_event_duration_secs_listener(lambda name, *a, **k: events.append(name))
from icalign import cli
sys.argv = ["icalign", "run", "reward-noise", "--set", "seeds=1"]
rc = cli.entry()
before = [e for e in events if e.startswith("/jax/core/compile/")]
import jax, jax.numpy as jnp
jax.jit(lambda x: x * 2)(jnp.ones(2))
probe = [e for e in events if e.startswith("/jax/core/compile/")]
print(json.dumps({"rc": rc, "before": before, "probe": len(probe)}))
"""


def test_bad_override_fails_before_any_compilation(tmp_path):
    """In a fresh process: the error comes before jax traces or compiles anything, as one line
    on stderr (no traceback), and nothing is written."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _COUNT_COMPILATIONS], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rc"] == 2  # input refused before any work
    assert proc.stderr.strip().splitlines() == [
        "icalign: error: config key 'seeds' = '1' is not allowed: seeds must be >= 2 "
        "(a 95% interval over seeds needs two), got 1"]
    assert out["before"] == [] and out["probe"] >= 3, out  # none before the error; the probe was seen
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
