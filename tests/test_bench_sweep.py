"""`icalign bench sweep` on a tiny grid: it trains what it says and reports consistent figures."""

import json
import types

from icalign import model as M
from icalign import train as T


def test_bench_sweep_json(monkeypatch, capsys):
    from icalign.benchmarks import sweep
    from icalign.experiments import ablations as exp

    tiny = M.ModelConfig(n_layers=1, n_heads=2, d_model=8, token_layout="stacked", n=4)
    monkeypatch.setattr(exp, "QUICK", exp.Config(model=tiny, depths=(1, 2), heads=(1, 2), seeds=2,
                                                 train=T.TrainConfig(lr=3e-3, batch=8, steps=4, chunk=2,
                                                                     checkpoint_every=2)))
    args = types.SimpleNamespace(seeds=2, factors="depth", speedup_steps=4)
    assert sweep.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["architectures"] == 2 and out["models_trained"] == 4
    assert len(out["per_architecture"]) == 2
    assert out["wall_seconds"] >= sum(a["seconds"] for a in out["per_architecture"]) * 0.99
    assert abs(out["models_per_minute"] - 4 / (out["wall_seconds"] / 60)) < 1e-6
    sp = out["vmapped_vs_sequential"]
    assert [s["n_layers"] for s in sp] == [1, 2]  # the base and the deepest architecture
    for s in sp:
        assert s["vmapped_seconds"] > 0 and s["sequential_seconds"] > 0
        assert abs(s["speedup"] - s["sequential_seconds"] / s["vmapped_seconds"]) < 1e-9
