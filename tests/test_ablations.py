"""The ablation grid: one field per variant, the mask kept, clear errors (the experiment's
wiring and resume are in test_experiments.py)."""

import dataclasses
import pytest

from icalign.analysis import ablations as A
from icalign import model as M

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


def test_probe_learning_rates_train_the_attention_factor_again_under_their_own_keys():
    variants = A.grid(QUICK_BASE, ("attention", "ffn"))
    jobs = A.jobs(variants, probe_lrs=(1e-3,))
    plain = [j for j in jobs if j["lr"] is None]
    probe = [j for j in jobs if j["lr"] == 1e-3]
    assert len(plain) == len(A.unique_configs(variants)) and len(probe) == 3  # softmax, linear, linear_mean
    assert {v["value"] for j in probe for v in j["variants"]} == {"softmax", "linear", "linear_mean"}
    keys = [j["key"] for j in jobs]
    assert len(set(keys)) == len(keys)  # the same architecture at another lr is another result
    names = [v["name"] for j in jobs for v in j["variants"]]
    assert len(set(names)) == len(names) and "attention=linear (lr 0.001)" in names
    with pytest.raises(ValueError, match="probe_lrs"):
        A.jobs(variants, probe_lrs=(0.0,))
    assert all(j["lr"] is None for j in A.jobs(A.grid(QUICK_BASE, ("ffn",)), probe_lrs=(1e-3,)))


def test_the_bars_draw_each_trained_variants_paired_effect_from_a_committed_result():
    """The committed full-size grid has trained variants beside trained bases: the right panel
    draws one paired effect (an error bar) for each such variant."""
    from pathlib import Path

    from icalign.analysis.sweep_claims import ablation_health
    from icalign.io import read_json
    from icalign.viz import ablations as figs

    res = read_json(Path(__file__).resolve().parents[1] / "figures/ablations/full/ablations.json")
    health = ablation_health(res)
    ok = lambda v: res["architectures"].get(v["arch"], {}).get("status") == "ok" and health[v["arch"]]["status"] != "failed"
    bases = {v["factor"]: v for v in res["variants"] if v["is_base"]}
    expected = sum(1 for v in res["variants"] if not v["is_base"] and ok(v) and ok(bases[v["factor"]]))
    fig = figs.ablation_bars(res)
    right = fig.axes[1]
    assert expected > 0 and len(right.containers) == expected
