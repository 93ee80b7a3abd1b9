"""Every experiment as a Python function of its config, in memory, writing nothing; and the
ablation sweep's resume after a kill (it reuses the programs the in-memory run compiled).

Tiny configs (tests/tiny_configs.py) keep each experiment to a few compiled calls; the claims
here are about the wiring, not the numbers (those are in each library module's tests). The
command line (configs, overrides, output folders, refusal to overwrite) is in tests/test_cli.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tiny_configs import MODULES, TINY_CONFIGS

from icalign import cli
from icalign import config as C
from icalign import train as T
from icalign.experiments import ablations
from icalign.tasks import CORRUPTIONS, DEFAULT_LEVELS


def test_every_experiment_is_listed_and_has_the_api():
    assert set(cli.experiments()) == set(MODULES)
    for name, mod in MODULES.items():
        assert mod.NAME == name and mod.DESCRIPTION
        assert dataclasses.is_dataclass(mod.QUICK) and type(mod.QUICK) is type(mod.FULL) is mod.Config


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_experiment_runs_in_memory_and_writes_nothing(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written relative to the working folder would land here
    res = MODULES[name].run(TINY_CONFIGS[name], progress=False, keep_params=True)
    assert res["experiment"] == name
    # keep_params: the trained transformers come back in memory, with params and no run folder
    n_trained = {"tf-vs-gd": 1, "reward-noise": 1, "self-correction": 1, "mechanism": 4, "precision": 2,
                 "ablations": len([a for a in res.get("architectures", {}).values() if a["status"] == "ok"])}
    kept = res.pop("trained")
    assert len(kept) == n_trained.get(name, 0) and all(t.run_dir is None and t.params_of(0) for t in kept)
    assert C.from_dict(MODULES[name].Config, res["config"]) == TINY_CONFIGS[name]  # enough to rerun it
    assert list(tmp_path.iterdir()) == []
    # every model trained through experiment.train_or_load is recorded with its protocol
    records = res["protocol"] if kept else []  # gd-baseline and necessity store a "protocol" of their own
    assert len(records) == len(kept)
    assert all(r["protocol"] == "published" and r["stopped"] == "budget" for r in records)
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
        # every seed on every context is stored (seeds x contexts x t), the GD learners per context
        assert res["seeds"] == [0, 1] and len(kept[0].runs) == 2
        tf = res["nmse"]["transformer"]
        assert (tf["unit"], tf["n"]) == ("seeds", 2) and np.shape(tf["per_seed"]) == (2, 3)
        assert all((res["nmse"][k]["unit"], len(res["nmse"][k]["last"])) == ("contexts", 8) for k in ("adam", "gd"))
        # the first seed's comparison is the first row of the stored per-seed errors
        np.testing.assert_allclose(tf["per_seed"][0], res["comparison"]["nmse"]["transformer"]["mean"], atol=1e-5)
        assert [c["claim"] for c in res["claims"]] == ["the transformer beats GD (adam)", "the transformer beats plain GD"]
        assert all(c["verdict"] == "not trained" for c in res["claims"])  # 4 steps: no evidence
        assert res["health"]["status"] in ("not trained", "failed") and res["health"]["reason"]  # old, new gate
        assert set(res["reference"]) == {"mean of candidates", "best shown candidate"}
        assert all(len(v["replace"]["0.0"]) == 3 for v in res["reference"].values())
    if name == "mechanism":
        assert res["shared"]["t"] == [1, 2, 3, 4] and res["triplet"]["weights"] and res["claims"]
        # base (depth 2), depth 1, the noisy-trained models, per-triplet; two seeds each, on the same contexts
        assert [len(t.runs) for t in kept] == [2, 2, 2, 2] and res["noisy"]["0.5"]["seeds"] == [0, 1]
        assert set(res["battery"]["clean-trained"]["checks"]) == {"attention", "selectivity", "newton"}
        for study in ("shared", "triplet"):  # the halves, the fitting half's choices, each model's health
            assert res[study]["halves"]["fit"] == [0, 4] and res[study]["selection"]["closest"]["2"]["chosen_on"] == "fit"
            assert len(res[study]["per_seed"]) == 2 and res[study]["seeds"] == [0, 1]
            assert len(res[study]["cells"]["distance"]["exact"][0]) == 4 and res[study]["health"]["status"]
            assert [len(v) for v in res[study]["trivial_nmse"].values()] == [4, 4]  # both trivial predictors, per t
        assert all(c["verdict"] == "not trained" and "test-half contexts" in c["sample"] for c in res["claims"])
        # the battery, on the clean- and the noisy-trained models; 4 training steps: no verdict counts
        assert list(res["battery"]) == ["clean-trained", "random-init (null)", "noisy-trained (p = 0.5)"]
        clean = res["battery"]["clean-trained"]["verdicts"]
        assert "depth sweep" in clean and "depth sweep" not in res["battery"]["noisy-trained (p = 0.5)"]["verdicts"]
        for name, fam in res["battery"].items():  # the null models were never trained: no gate withholds theirs
            assert all((v["verdict"] == "not trained") == (name != "random-init (null)") and v["seeds"] == 2
                       and set(v["predictions"]) == {"GD", "minimiser", "neither"} for v in fam["verdicts"].values())
        checks = res["battery"]["clean-trained"]["checks"]
        assert checks["attention"]["claim"]["verdict"] == "not trained" and len(checks["selectivity"]) == 7
        assert set(res["figures"]) == {"battery", "distances", "layers", "probes", "invariance", "triplets"}
    if name == "precision":  # 4 steps: the agreement claims must not count the untrained models
        # failed by the gate, or unknown where the study gives the gate no model (health.variant_gate)
        assert all(res[p]["health"]["status"] in ("failed", "unknown") for p in ("float32", "bfloat16"))
        assert [c["verdict"] for c in res["claims"]] == ["not trained"] * 2
        cfg = TINY_CONFIGS[name]  # the margins are the config's, fixed before the data
        assert [c["margin"] for c in res["claims"]] == [cfg.loss_margin, cfg.nmse_margin]
        assert res["float32"]["final_nmse"] != res["bfloat16"]["final_nmse"]  # the precision changed the model
    if name != "verify":
        assert res.get("figures"), "figures are returned in memory"


def test_a_necessity_run_whose_seeds_all_diverge_finishes_and_decides_nothing():
    """Diverged seeds are NaN, stored in the saved progress as "nan": the run must still finish,
    and a reduced architecture against a diverged full one is "not trained", never "needed"."""
    cfg = dataclasses.replace(TINY_CONFIGS["necessity"], lr=1e4)
    res = MODULES["necessity"].run(cfg, progress=False)
    assert all(v["diverged_seeds"] == cfg.seeds for v in res["results"]["3"]["variants"].values())
    assert [c["verdict"] for c in res["claims"]] == ["not trained"]


def test_ablations_resume_after_a_kill(tmp_path, monkeypatch):
    # here, not in test_cli.py: it reuses the programs the in-memory ablation run compiled
    cfg = TINY_CONFIGS["ablations"]
    from icalign.training import protocol

    trained, original = [], protocol._train_or_load  # every experiment's models train through the protocol
    monkeypatch.setattr(protocol, "_train_or_load", lambda arch, *a, **k: trained.append(arch) or original(arch, *a, **k))
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


def test_precision_margins_are_fixed_in_the_config_and_validated():
    """The agreement claims' margins are config fields fixed before the data (with their reason
    in the source), not the seed spread of the run they judge; a margin must be a number > 0."""
    from icalign.experiments import precision

    assert (precision.QUICK.loss_margin, precision.QUICK.nmse_margin) == (0.05, 0.02)
    for field in ("loss_margin", "nmse_margin"):
        for bad in (0.0, -0.1, float("nan")):
            with pytest.raises(ValueError, match=f"{field} must be a finite number > 0"):
                dataclasses.replace(precision.QUICK, **{field: bad})
