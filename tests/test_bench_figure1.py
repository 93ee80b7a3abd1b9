"""`icalign bench figure1`: the published grid's models, grouped into programs by shape, and
the benchmark's JSON on a tiny grid (it times what it says)."""

import json
import types

from icalign import model as M
from icalign.benchmarks import figure1 as F


def test_the_published_grid_and_its_groups():
    rows = F.grid_rows(M.BASE, seeds=5)
    archs = {a for a, _ in rows}
    # depth 6 + heads 5 + 5 + attention 3 (softmax, linear, linear_mean) + FFN 2 + LN 2 = 23
    # variants, the base counted once per factor: 18 architectures x 5 seeds, and the base at
    # 4 noisy levels x 5 seeds
    assert len(archs) == 18 and len(rows) == 18 * 5 + 4 * 5
    groups = F._programs(rows, batch=8, grouped=True)
    per_head_size = {}
    for sup, members in groups:
        per_head_size.setdefault(sup.head_size, set()).update(a for a, _ in members)
    # heads at fixed width change the head size (96/h): their own programs; everything else
    # (depths, heads at head size 32, linear attention, no FFN, no LN, noise levels) shares one
    assert sorted(per_head_size) == [16, 24, 32, 48, 96] and len(per_head_size[32]) == 14
    assert sum(len(m) for _, m in groups) == len(rows)


def test_benchmark_json_on_a_tiny_grid(monkeypatch, capsys):
    tiny = M.ModelConfig(n_layers=2, n_heads=2, d_model=8, token_layout="stacked", n=4)
    monkeypatch.setitem(F.SIZES, "cpu", dict(base=tiny, batch=2))
    full_grid = F.grid_rows
    monkeypatch.setattr(F, "grid_rows", lambda base, seeds: full_grid(base, seeds, depths=(1, 2), heads=(2,)))
    args = types.SimpleNamespace(size="cpu", seeds=1, steps=10, timed_steps=1, steps_per_call=1, ungrouped=False)
    assert F.run(args) == 0
    text = capsys.readouterr().out
    out = json.loads(text[text.index("{\n"):])
    assert out["models"] == len(F.grid_rows(tiny, 1)) and out["benchmark"] == "figure1"
    for plan in ("grouped",):
        p = out[plan]
        assert abs(p["estimated_wall_seconds"] - sum(q["estimated_seconds"] for q in p["per_program"])) < 1e-9
        assert all(abs(q["estimated_seconds"] - q["compile_seconds"] - 10 * q["seconds_per_step"]) < 1e-9
                   for q in p["per_program"])
        assert sum(q["models"] for q in p["per_program"]) == out["models"]
    rows = F.grid_rows(tiny, 1)
    assert out["grouped"]["programs"] == len(F._programs(rows, 2, grouped=True)) < len(F._programs(rows, 2, False))
    assert "peak_memory" in out and 0 < out["grouped"]["fraction_of_matmul_peak"] < 1
