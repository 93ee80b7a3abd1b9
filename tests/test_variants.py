"""Comparing variants (icalign.compare, `icalign compare`, saved results): verdicts with their
populations and health, the engine's direction and ties, refusals before any training."""

from __future__ import annotations

import ast
import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import icalign
from icalign import cli, comparison
from icalign import config as C
from icalign import training as T
from icalign.analysis import variants as V
from icalign.analysis.evaluate import transformer_curves
from icalign.core import keys
from icalign.core.tasks import sample_contexts
from icalign.experiments import tf_vs_gd
from icalign.io import ResultExistsError

# tiny: one compiled training program for every variant (train.noise is not part of it)
SETS = ["model.n_layers=1", "model.n_heads=1", "model.d_model=8", "model.n=4", "model.token_layout=stacked",
        "train.batch=8", "train.steps=20", "train.chunk=10", "train.checkpoint_every=20", "eval.contexts=8",
        "eval.sensitivity_contexts=0", "seeds=2", "train.lr=3e-3", "train.stop=budget"]  # the published protocol (the
A = C.override(tf_vs_gd.QUICK, SETS)  # quick preset's grid would train three; tests/test_protocol.py tests grids)
NOISY = C.override(A, ["train.noise=1.0"])  # trained on rewards that say nothing: it cannot learn to use them
HEALTHY = {"status": "converged", "reason": ""}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def compared(runs):
    return icalign.compare({"a": A, "same": A, "noisy": NOISY}, "tf-vs-gd", run_root=runs)


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("trained although the input should have been refused first")

    monkeypatch.setattr(comparison, "train_or_load", refuse)


def _variant(name, cells, health=HEALTHY):
    return {"name": name, "nmse": None if cells is None else {"cells": cells}, "health": health}


def test_the_engine_judges_each_variant_against_the_reference():
    """Direction (V better than REF: supported), ties, withheld verdicts: planted values."""
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.2, 1.0, (3, 12))
    noise = 0.01 * rng.standard_normal(ref.shape)
    failed = {"status": "failed", "reason": "run 0: it does not use the rewards"}
    out = V.judge([_variant("ref", ref), _variant("same", ref.copy()), _variant("better", ref - 0.2 + noise),
                   _variant("worse", ref + 0.2 + noise), _variant("sick", ref - 0.2, failed),
                   _variant("lost", None, {"status": "failed", "reason": "training diverged (step 3)"})], "ref", t=3)
    got = {c["claim"].split()[0]: c for c in out}
    assert [c["claim"] for c in out][0] == "same has lower error than ref"
    assert {k: c["verdict"] for k, c in got.items()} == {
        "same": "not resolved", "better": "supported", "worse": "contradicted", "sick": "not trained",
        "lost": "not trained"}
    assert got["better"]["effect"] == pytest.approx(0.2 - noise.mean(), abs=0.01)  # REF minus V
    assert got["worse"]["population"] == "seeds x contexts" and got["worse"]["n"] == 3
    assert "does not use the rewards" in got["sick"]["reason"] and "diverged" in got["lost"]["reason"]


def test_variants_must_share_contexts_and_seeds(no_training):
    for change, field in (("eval.contexts=16", "eval.contexts"), ("seeds=3", "seeds"), ("seed=1", "seed"),
                          ("model.n=5", "model.n"), ("model.d=4", "model.d")):
        with pytest.raises(ValueError, match=rf"differ in {field}: \S+ vs \S+"):
            icalign.compare([A, C.override(A, [change])])
    with pytest.raises(ValueError, match="eval.gd_steps, which a comparison does not use"):
        icalign.compare({"a": A, "b": C.override(A, ["eval.gd_steps=5"])})
    with pytest.raises(ValueError, match=r"cannot be compared; choose one of \['ablations', 'mechanism', 'reward-noise', 'tf-vs-gd'\]"):
        icalign.compare([A, A], "verify")
    with pytest.raises(ValueError, match="not a reward-noise config .*; pass experiment='tf-vs-gd'"):
        icalign.compare([A, A], "reward-noise")
    with pytest.raises(ValueError, match="at least two variants"):
        icalign.compare([A])
    with pytest.raises(ValueError, match="reference 'c' is not one of"):
        icalign.compare({"a": A, "b": A}, reference="c")


def test_compare_trains_evaluates_and_judges(compared, runs):
    res = compared
    assert res["reference"] == "a" and res["contexts"]["eval.contexts"] == 8 and res["t"] == 3
    by = {v["name"]: v for v in res["variants"]}
    assert by["noisy"]["overrides"] == {"train.noise": 1.0} and by["same"]["overrides"] == {}
    cells = {k: np.asarray(v["nmse"]["cells"]) for k, v in by.items()}
    assert cells["a"].shape == (2, 8) and np.array_equal(cells["a"], cells["same"])
    assert not np.allclose(cells["a"], cells["noisy"])  # each variant is its own trained model
    assert by["a"]["selection"]["protocol"] == "published" and by["a"]["selection"]["lr"] == 3e-3
    # the values are tf-vs-gd's: the trained runs on the seed's evaluation contexts, clean rewards
    trained = T.load_run(runs / by["a"]["run_folder"])
    ctx = sample_contexts(keys.eval_keys(A.seed, 2)[0], 8, A.model.d, A.model.n)
    ours = transformer_curves(trained.params, A.model, ctx, ctx.r_true[:, None, :]).nmse[:, 0, :, -1]
    np.testing.assert_allclose(cells["a"], ours, rtol=1e-6)
    claims = {c["claim"]: c for c in res["claims"]}
    assert set(claims) == {"same has lower error than a", "noisy has lower error than a"}
    for name, c in (("same", claims["same has lower error than a"]), ("noisy", claims["noisy has lower error than a"])):
        assert c["population"] == "seeds x contexts" and (c["n"], c["n_contexts"]) == (2, 8)
        sick = "failed" in (by["a"]["health"]["status"], by[name]["health"]["status"])
        assert (c["verdict"] == "not trained") == sick  # a failed model's verdict is withheld, and only then
    tie = claims["same has lower error than a"]
    assert tie["effect"] == 0 and tie["verdict"] != "supported"


def _entry(monkeypatch, capsys, *argv) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["icalign", "compare", *argv])
    rc = cli.entry()
    return rc, capsys.readouterr().err


def test_bad_flags_exit_2_before_training(monkeypatch, capsys, no_training, tmp_path):
    sets = [x for s in SETS for x in ("--set", s)]
    for argv, message in (
            (["tf-vs-gd", "--variant", "a"], "--variant: give at least two variants"),
            (["tf-vs-gd", "--variant", "a", "--variant", "b:model.n_layers"], "'model.n_layers' is not KEY=VALUE"),
            (["tf-vs-gd", "--variant", "a", "--variant", "a:model.n_layers=1"], "the name 'a' is used twice"),
            (["tf-vs-gd", "--variant", "a", "--variant", "b:model.nope=1"], "--variant b: unknown config key"),
            (["tf-vs-gd", "--variant", ":x=1", "--variant", "b"], "--variant ':x=1': write NAME"),
            (["nope", "--variant", "a", "--variant", "b"], "EXPERIMENT must be one of ['ablations', 'mechanism', 'reward-noise'"),
            (["tf-vs-gd", "--variant", "a", "--variant", "b:eval.contexts=16", *sets], "differ in eval.contexts"),
            (["--results", str(tmp_path / "missing.json"), str(tmp_path / "x.json")], "missing.json")):
        rc, err = _entry(monkeypatch, capsys, *argv)
        assert rc == 2 and message in err, (argv, err)
    assert list(tmp_path.iterdir()) == []


def test_cli_and_saved_results(compared, runs, tmp_path, capsys):
    a_json, b_json = tmp_path / "a.json", tmp_path / "b.json"
    icalign.io.write_json(a_json, compared)
    sets = [x for s in SETS for x in ("--set", s)]
    argv = ["compare", "tf-vs-gd", "--variant", "a", "--variant", "noisy:train.noise=1.0", *sets,
            "--run-root", str(runs), "--out", str(b_json), "--no-progress"]
    assert cli.main(argv) == 0  # the fixture's runs are loaded, not trained again
    out = capsys.readouterr().out
    assert "| noisy has lower error than a |" in out and "  noisy: " in out and "  a: " in out
    with pytest.raises(ResultExistsError):
        cli.main(argv)
    b = json.loads(b_json.read_text())
    assert b["claims"][0]["effect"] == compared["claims"][1]["effect"]  # same runs, same contexts
    # two compare outputs on the same contexts: every variant against the first file's first
    res = V.compare_results([a_json, b_json])
    assert [c["claim"] for c in res["claims"]][-1] == "b/noisy has lower error than a/a"
    assert res["claims"][0]["effect"] == 0  # a/same is a/a
    assert cli.main(["compare", "--results", str(a_json), str(b_json), "--reference", "b/a"]) == 0
    assert "| a/a has lower error than b/a | +0.000" in capsys.readouterr().out
    # a tf-vs-gd result holds one variant's cells too
    tf = copy.deepcopy({"experiment": "tf-vs-gd", "config": C.to_dict(A), "health": compared["variants"][2]["health"],
                        "nmse": {"transformer": compared["variants"][2]["nmse"]}})  # edited below
    icalign.io.write_json(tmp_path / "tf.json", tf)
    assert V.compare_results([a_json, tmp_path / "tf.json"])["claims"][-1]["claim"] == "tf has lower error than a/a"
    # refused: other evaluation contexts, or no per-context values
    other = json.loads(b_json.read_text())
    for c in [other["config"]] + [v["config"] for v in other["variants"]]:
        c["eval"]["contexts"] = 16
    icalign.io.write_json(tmp_path / "other.json", other)
    with pytest.raises(ValueError, match=r"not evaluated on the same contexts and seeds: eval.contexts is 16 vs 8"):
        V.compare_results([a_json, tmp_path / "other.json"])
    with pytest.raises(ValueError, match="is given twice"):
        V.compare_results([a_json, tmp_path / "." / "a.json"])
    del tf["nmse"]["transformer"]["cells"]
    icalign.io.write_json(tmp_path / "old.json", tf)
    with pytest.raises(ValueError, match="stores no per-context values"):
        V.compare_results([a_json, tmp_path / "old.json"])


def test_importing_icalign_stays_light():
    """icalign.compare is a lazy wrapper: the package's own imports load no experiment (checked
    on its source: a fresh interpreter to watch sys.modules costs seconds of jax import)."""
    tree = ast.parse(Path(icalign.__file__).read_text())
    top = [n.module if isinstance(n, ast.ImportFrom) else a.name for n in tree.body
           if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]
    assert top and not [m for m in top if m.startswith(("icalign.comparison", "icalign.experiments",
                                                         "icalign.analysis"))]
    assert callable(icalign.compare) and "compare" in icalign.__all__


def test_help(capsys):
    assert cli.main(["--help"]) == 0 and "e.g. icalign compare tf-vs-gd --variant" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["compare", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "usage: icalign compare" in text and "--results FILE.json" in text
    assert "one of ['ablations', 'mechanism', 'reward-noise', 'tf-vs-gd']" in " ".join(text.split())


def test_saved_results_refuse_what_they_cannot_pair(compared, tmp_path):
    a_json = tmp_path / "a.json"
    icalign.io.write_json(a_json, compared)
    rn = {**compared, "kind": None, "experiment": "reward-noise"}  # its own identity: compared with itself
    icalign.io.write_json(tmp_path / "rn0.json", rn)
    for name, res, message in (
            ("rn", rn, "neither an `icalign compare` output"),
            ("cut", {**compared, "variants": [{"name": "x", "nmse": None}]}, "a variant lacks a field"),
            ("list", [1, 2], "not a result file")):
        icalign.io.write_json(tmp_path / f"{name}.json", res)
        with pytest.raises(ValueError, match=message):
            V.compare_results([tmp_path / "rn0.json" if name == "rn" else a_json, tmp_path / f"{name}.json"])
    with pytest.raises(ValueError, match="give two or more"):
        V.compare_results([a_json])
    # a comparison of saved results is itself a saved comparison
    b_json = tmp_path / "b.json"
    b_json.write_text(a_json.read_text())
    icalign.io.write_json(tmp_path / "ab.json", V.compare_results([a_json, b_json]))
    again = V.compare_results([a_json, tmp_path / "ab.json"])
    assert [c["claim"] for c in again["claims"]][2] == "ab/a/a has lower error than a/a"
    assert [c["effect"] for c in again["claims"]][:2] == [c["effect"] for c in compared["claims"]]
