"""Every experiment as a Python function of its config (in memory, nothing written) and
through the CLI (configs, overrides, output folders, refusal to overwrite, resume).

Tiny configs keep each experiment to a few compiled calls; the claims here are about the
wiring, not the numbers (those are in each library module's tests)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

from icalign import cli
from icalign import config as C
from icalign import model as M
from icalign import train as T
from icalign.experiment import EvalConfig
from icalign.experiments import (ablations, gd_baseline, mechanism, necessity, precision, reward_noise,
                                 self_correction, tf_vs_gd, verify)
from icalign.tasks import CORRUPTIONS, DEFAULT_LEVELS

TINY = M.ModelConfig(n_layers=1, n_heads=2, d_model=8, token_layout="stacked", n=4)
TINY_TRAIN = T.TrainConfig(lr=3e-3, batch=8, steps=4, chunk=2, checkpoint_every=2)
TINY_CONFIGS = {
    "gd-baseline": gd_baseline.Config(eval=EvalConfig(contexts=8), t_max=4),
    "tf-vs-gd": tf_vs_gd.Config(model=TINY, train=TINY_TRAIN, eval=EvalConfig(contexts=8, sensitivity_contexts=2)),
    "reward-noise": reward_noise.Config(model=TINY, train=TINY_TRAIN, eval=EvalConfig(contexts=8), seeds=2,
                                        train_levels=(0.0, 0.5)),
    "ablations": ablations.Config(model=TINY, train=TINY_TRAIN, eval=EvalConfig(contexts=8), factors=("ffn",),
                                  depths=(1,), heads=(1, 2), seeds=2),
    "necessity": necessity.Config(ns=(3,), variants=("full", "no FFN"), d=2, seeds=2, steps=4, batch=8,
                                  construction_contexts=8),
    "self-correction": self_correction.Config(
        contexts=4, draws=2, rounds=2, n0=3, gd_steps=5, injections=(1,), seeds=2,
        model=dataclasses.replace(TINY, d=5, n=6), train=TINY_TRAIN,
        concept=self_correction.ConceptConfig(n=6, rounds=2, n_layers=1, d_model=8, steps=4, batch=4,
                                              probe_contexts=8, loop_contexts=4)),
    "mechanism": mechanism.Config(
        model=dataclasses.replace(TINY, n_layers=2, n=5), train=TINY_TRAIN, eval=EvalConfig(contexts=8),
        triplet_train=dataclasses.replace(TINY_TRAIN, queries="per_triplet", query_corr=0.7), etas=(0.01, 0.1),
        k_max=2, minimiser_steps=4, intervention_contexts=2, implicit_queries=6),
    "precision": precision.Config(model=TINY, train=TINY_TRAIN, eval=EvalConfig(contexts=8), seeds=2),
}
MODULES = {"gd-baseline": gd_baseline, "tf-vs-gd": tf_vs_gd, "reward-noise": reward_noise, "ablations": ablations,
           "necessity": necessity, "self-correction": self_correction, "verify": verify, "mechanism": mechanism,
           "precision": precision}


def test_every_experiment_is_listed_and_has_the_api():
    assert set(cli.experiments()) == set(MODULES)
    for name, mod in MODULES.items():
        assert mod.NAME == name and mod.DESCRIPTION
        assert dataclasses.is_dataclass(mod.QUICK) and type(mod.QUICK) is type(mod.FULL) is mod.Config


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_experiment_runs_in_memory_and_writes_nothing(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written relative to the working folder would land here
    res = MODULES[name].run(TINY_CONFIGS[name], progress=False)
    assert res["experiment"] == name
    assert C.from_dict(MODULES[name].Config, res["config"]) == TINY_CONFIGS[name]  # enough to rerun it
    assert list(tmp_path.iterdir()) == []
    if name == "reward-noise":
        assert set(res["corruptions"]) == set(CORRUPTIONS)
        for kind in CORRUPTIONS:  # level 0 of every corruption model is the same clean evaluation
            assert res["transformer"]["0.0"][kind]["0.0"] == res["transformer"]["0.0"]["replace"]["0.0"]
            assert set(res["transformer"]["0.5"][kind]) == {str(lv) for lv in DEFAULT_LEVELS[kind]}
        assert res["claims"] and all("verdict" in c for c in res["claims"])
    if name in ("reward-noise", "ablations"):  # 4 training steps: no trained model may count as evidence
        gd_only = [c for c in res["claims"] if "TF" not in c["worse"] + c["better"] and name == "reward-noise"]
        assert all(c["verdict"] == "not trained" for c in res["claims"] if c not in gd_only)
        assert all(c["verdict"] != "not trained" for c in gd_only) and (gd_only or name == "ablations")
    if name == "tf-vs-gd":
        assert res["comparison"]["t"] == [1, 2, 3] and "sensitivity" in res["comparison"]
    if name == "mechanism":
        assert res["shared"]["t"] == [1, 2, 3, 4] and res["triplet"]["weights"] and res["claims"]
        assert set(res["figures"]) == {"distances", "layers", "probes", "invariance", "triplets"}
    if name == "precision":  # 4 steps: the agreement claims must not count the untrained models
        assert {p: res[p]["health"]["status"] for p in ("float32", "bfloat16")} == {"float32": "not trained",
                                                                                    "bfloat16": "not trained"}
        assert [c["verdict"] for c in res["claims"]] == ["not trained"] * 2
        assert res["float32"]["final_nmse"] != res["bfloat16"]["final_nmse"]  # the precision changed the model
    if name != "verify":
        assert res.get("figures"), "figures are returned in memory"


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
    assert proc.returncode == 1
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


def test_ablations_resume_after_a_kill(tmp_path, monkeypatch):
    cfg = TINY_CONFIGS["ablations"]
    trained, original = [], T.train_or_load
    monkeypatch.setattr(ablations.T, "train_or_load", lambda arch, *a, **k: trained.append(arch) or original(arch, *a, **k))
    calls = {"n": 0}
    real_put = ablations.Progress.put

    def put_then_die(self, key, entry):
        real_put(self, key, entry)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # killed after the first architecture was saved

    monkeypatch.setattr(ablations.Progress, "put", put_then_die)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        ablations.run(cfg, out, progress=False, run_root=tmp_path / "runs")
    assert len(trained) == 1 and len(list(out.glob(".ablations.*.partial.json"))) == 1
    res = ablations.run(cfg, out, progress=False, run_root=tmp_path / "runs")
    assert len(trained) == 2  # the second architecture only
    assert [v["changed_fields"] for v in res["variants"]] == [[], ["ffn"]]
    assert all(a["status"] == "ok" for a in res["architectures"].values())
    assert not list(out.glob(".ablations.*.partial.json"))
    for name in ("ablations.md", "ablations.png", "ablations.pdf", "ablations_bars.png"):
        assert (out / name).stat().st_size > 0
