"""The ablation grid: one field per variant, the mask kept, clear errors; the experiment's
wiring (train, evaluate, resume, report, figures) on a tiny config."""

import dataclasses
import json

import numpy as np
import pytest

from icalign import ablations as A
from icalign import model as M
from icalign import train as T

QUICK_BASE = M.ModelConfig(n_layers=2, n_heads=3, d_model=24, token_layout="stacked")


@pytest.mark.parametrize("base", [M.BASE, QUICK_BASE], ids=["published", "quick"])
def test_every_variant_differs_from_its_reference_in_exactly_its_field(base):
    variants = A.grid(base)
    assert {v.factor for v in variants} == set(A.FACTORS)
    for v in variants:
        assert v.config.causal, v.name  # every ablation keeps the mask
        changed = A.changed_fields(v.reference, v.config)
        assert changed == ([] if v.is_base else [v.field]), (v.name, changed)
        assert getattr(v.config, v.field) == v.value
        # The reference is the base architecture itself (same shapes and function).
        assert A.canonical(v.reference) == A.canonical(base)


def test_heads_families_separate_heads_from_width():
    by = {(v.factor, v.value): v.config for v in A.grid(M.BASE)}
    for h in A.HEADS:
        fixed_w, fixed_dh = by[("heads_fixed_width", h)], by[("heads_fixed_head_dim", h)]
        assert fixed_w.n_heads * fixed_w.head_size == M.BASE.d_model  # width constant
        assert fixed_dh.head_size == M.BASE.head_size  # head dim constant, width grows
        assert fixed_w.d_model == fixed_dh.d_model == M.BASE.d_model


def test_identical_architectures_train_once():
    variants = A.grid(M.BASE)
    groups = A.unique_configs(variants)
    bases = [v for v in variants if v.is_base]
    assert len(bases) == len(A.FACTORS)  # every factor lists the base value
    assert len({A.canonical(v.config) for v in bases}) == 1
    assert len(groups) == len(variants) - len(bases) + 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(factors=["width"]), "factor"),
    (dict(factors=[]), "at least one"),
    (dict(depths=(0, 2)), "depths"),
    (dict(heads=(5,)), "do not divide d_model=96"),
    (dict(base=dataclasses.replace(M.BASE, causal=False)), "causal"),
])
def test_bad_grids_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        A.grid(**kwargs)


def _tiny_args(tmp_path, **kw):
    import types

    return types.SimpleNamespace(quick=True, out=tmp_path, force=False, seed=0, seeds=2, eval_contexts=8,
                                 run_root=tmp_path / "runs", no_progress=True, **kw)


def test_ablations_experiment_end_to_end_and_resume(tmp_path, monkeypatch):
    from icalign.experiments import ablations as exp

    tiny = M.ModelConfig(n_layers=1, n_heads=2, d_model=8, token_layout="stacked", n=4)
    monkeypatch.setitem(exp.SIZES, "quick", dict(
        base=tiny, depths=(1,), heads=(1, 2),
        train=T.TrainConfig(lr=3e-3, batch=8, steps=4, chunk=2, checkpoint_every=2)))
    args = _tiny_args(tmp_path, factors="ffn")
    assert exp.run(args) == 0
    res = json.loads((tmp_path / "ablations.json").read_text())
    assert [v["name"] for v in res["variants"]] == ["ffn=True", "ffn=False"]
    assert [v["changed_fields"] for v in res["variants"]] == [[], ["ffn"]]
    assert len(res["architectures"]) == 2
    for arch in res["architectures"].values():
        assert arch["status"] == "ok"
        assert len(arch["nmse"]["mean"]) == len(res["ts"]) == tiny.n - 1
        assert np.all(np.array(arch["nmse"]["low"]) <= np.array(arch["nmse"]["mean"]))
    for name in ("ablations.md", "ablations.png", "ablations.pdf", "ablations_bars.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "FFN" in (tmp_path / "ablations.md").read_text()
    with pytest.raises(FileExistsError, match="--force"):
        exp.run(args)

    # A killed run resumes: architectures in the partial file are not retrained.
    args.force, args.out = False, tmp_path / "again"
    partial = args.out / ".ablations.quick.seed0x2.ctx8.partial.json"
    partial.parent.mkdir()
    done = {k: v for k, v in list(res["architectures"].items())[:1]}
    partial.write_text(json.dumps({"architectures": done}))
    trained, original = [], T.train_or_load
    monkeypatch.setattr(exp.T, "train_or_load", lambda cfg, *a, **k: trained.append(cfg) or original(cfg, *a, **k))
    assert exp.run(args) == 0
    assert len(trained) == 1 and not partial.exists()
    again = json.loads((args.out / "ablations.json").read_text())
    first = next(iter(done))
    assert again["architectures"][first]["nmse"] == res["architectures"][first]["nmse"]
