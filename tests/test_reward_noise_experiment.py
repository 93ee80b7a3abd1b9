"""The reward-noise experiment's wiring on a tiny config: every corruption model and level,
both training families, GD on the same contexts, report and figures."""

import json
import types

import numpy as np

from icalign import model as M
from icalign import train as T
from icalign.tasks import CORRUPTIONS, DEFAULT_LEVELS


def test_reward_noise_end_to_end(tmp_path, monkeypatch):
    from icalign.experiments import reward_noise as exp

    tiny = M.ModelConfig(n_layers=1, n_heads=2, d_model=8, token_layout="stacked", n=4)
    monkeypatch.setitem(exp.SIZES, "quick", dict(
        model=tiny, train=T.TrainConfig(lr=3e-3, batch=8, steps=4, chunk=2, checkpoint_every=2)))
    args = types.SimpleNamespace(quick=True, out=tmp_path, force=False, seed=0, seeds=2, eval_contexts=8,
                                 run_root=tmp_path / "runs", no_progress=True)
    assert exp.run(args) == 0
    res = json.loads((tmp_path / "reward_noise.json").read_text())
    assert set(res["corruptions"]) == set(CORRUPTIONS)
    assert res["train_levels"] == list(DEFAULT_LEVELS["replace"])
    assert set(res["transformer"]) == {str(lv) for lv in DEFAULT_LEVELS["replace"]}
    for fam in res["transformer"].values():
        for kind in CORRUPTIONS:
            assert set(fam[kind]) == {str(lv) for lv in DEFAULT_LEVELS[kind]}
            s = fam[kind]["0.0"]["nmse"]
            assert s["n"] == 2 and len(s["mean"]) == tiny.n - 1
    # Level 0 of every corruption model is the same clean evaluation.
    clean = res["transformer"]["0.0"]
    for kind in CORRUPTIONS:
        assert clean[kind]["0.0"] == clean["replace"]["0.0"]
        assert res["gd"]["adam"][kind]["0.0"] == res["gd"]["adam"]["replace"]["0.0"]
    assert np.shape(res["train_loss_last50"]) == (2 * len(DEFAULT_LEVELS["replace"]),)
    assert res["claims"] and all("verdict" in c for c in res["claims"])
    for name in ("reward_noise.md", "reward_noise.png", "reward_noise_summary.png", "reward_noise_summary.pdf"):
        assert (tmp_path / name).stat().st_size > 0
