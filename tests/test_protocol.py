"""The training protocol (icalign.training.protocol): plateau stopping in the one loop, the
learning-rate grid chosen on validation contexts, and the CLI's sweep syntax."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icalign import config as C
from icalign import model as M
from icalign import train as T
from icalign.core import keys
from icalign.core.tasks import sample_contexts
from icalign.experiments import tf_vs_gd
from icalign.training import checkpoint as ck
from icalign.training import protocol
from icalign.training.config import plateau_stop

RNG = np.random.default_rng(0)


def test_plateau_stop_needs_every_run_fallen_and_flat():
    steps = np.arange(400)
    flat_after_fall = 1.0 + 2.0 * np.exp(-steps / 20) + 0.01 * RNG.standard_normal(400)
    still_falling = 3.0 - steps / 400 + 0.01 * RNG.standard_normal(400)
    never_fell = 3.0 + 0.01 * RNG.standard_normal(400)  # an initial plateau is flat too: not finished
    assert plateau_stop(flat_after_fall[None]).startswith("plateau at step 400")
    assert plateau_stop(np.stack([flat_after_fall, still_falling])) is None
    assert plateau_stop(np.stack([flat_after_fall, never_fell])) is None
    assert plateau_stop(flat_after_fall[None, :10]) is None  # too short for the test


@dataclasses.dataclass(frozen=True)
class Quadratic(T.Objective):
    """A loss that falls to a noisy floor: (w - 0)^2 + noise drawn from the step's key."""

    def init(self, run):
        return {"w": jnp.full((2,), 3.0)}

    def batch(self, run, step):
        return jax.random.normal(jax.random.fold_in(run.k_data, step), ())

    def loss(self, params, batch):
        return jnp.sum(params["w"] ** 2) + 0.05 * batch


def _runs():
    ks = jnp.stack([keys.stream(s, keys.INIT) for s in (0, 1)])
    return T.runs_from_keys(ks, ks, [0.1])


def test_the_loop_stops_at_the_first_flat_checkpoint_in_memory_and_on_disk(tmp_path):
    runs_R, runs = _runs(), [{"seed": 0}, {"seed": 1}]
    kw = dict(steps=2000, chunk=20, checkpoint_every=100, progress=False, stop=plateau_stop)
    mem = T.fit(Quadratic(), runs_R, runs, **kw)
    assert mem.stopped.startswith("plateau") and mem.losses.shape[1] < 2000 and mem.losses.shape[1] % 100 == 0
    disk = T.fit(Quadratic(), runs_R, runs, run_dir=tmp_path / "r", **kw)
    assert disk.losses.shape == mem.losses.shape and disk.stopped == mem.stopped
    meta = ck.read_meta(tmp_path / "r")
    assert meta["status"] == "finished" and meta["steps_done"] == mem.losses.shape[1] and meta["stopped"]
    # finished at its stopping step: loaded, not retrained; refused without force like any finished run
    again = T.load_finished(Quadratic(), runs_R, runs, steps=2000, run_dir=tmp_path / "r")
    assert again is not None and again.stopped == mem.stopped
    np.testing.assert_array_equal(np.asarray(again.state.params["w"]), np.asarray(mem.state.params["w"]))
    with pytest.raises(T.RunExistsError):
        T.fit(Quadratic(), runs_R, runs, run_dir=tmp_path / "r", **kw)
    # without the rule the same loop runs the whole budget
    assert T.fit(Quadratic(), runs_R, runs, **{**kw, "stop": None, "steps": 300}).losses.shape[1] == 300


def test_choose_takes_the_lowest_mean_per_level_and_skips_non_finite():
    runs = [{"seed": s, "lr": lr, "noise": nz} for nz in (0.0, 0.5) for lr in (1e-3, 3e-3) for s in (0, 1)]
    scores = np.array([2.0, 2.2, 1.9, 2.5,    # noise 0: lr 1e-3 mean 2.1 < 2.2
                       3.0, 3.0, 1.0, np.nan])  # noise 0.5: 3e-3 has a NaN seed, so 1e-3
    assert protocol.choose(runs, scores) == {0.0: 1e-3, 0.5: 1e-3}
    assert protocol.choose(runs, np.where(np.arange(8) < 4, np.nan, 1.0))[0.0] is None


TINY = M.ModelConfig(n_layers=1, n_heads=1, d_model=8, token_layout="stacked", n=5)


def test_the_grid_keeps_the_rate_best_on_validation_contexts():
    tc = T.TrainConfig(batch=8, steps=30, chunk=10, checkpoint_every=10, lr_grid=(1e-4, 3e-2), valid_contexts=16)
    got = protocol.train_or_load(TINY, tc, seeds=(0, 1), run_root=None, progress=False)
    sel = got.selection
    assert sel["protocol"] == "fair" and len(sel["runs"]) == 4 and [r["seed"] for r in got.runs] == [0, 1]
    # recompute the criterion independently: the published loss on each seed's VALID contexts, clean rewards
    full = T.train(TINY, dataclasses.replace(tc, lr_grid=()), seeds=[0, 1, 0, 1], lrs=[1e-4, 1e-4, 3e-2, 3e-2],
                   checkpoint=False, progress=False)
    score = []
    for i, s in enumerate([0, 1, 0, 1]):
        ctx = sample_contexts(jax.random.fold_in(jax.random.PRNGKey(s), 4), 16, TINY.d, TINY.n)
        score.append(float(T.loss_fn(full.params_of(i), ctx.replace(rewards=ctx.r_true), TINY)))
    best = 1e-4 if np.mean(score[:2]) < np.mean(score[2:]) else 3e-2
    assert sel["chosen"] == {"0": best} and all(r["lr"] == best for r in got.runs)
    np.testing.assert_allclose(sel["validation"]["0"]["0.0001"] + sel["validation"]["0"]["0.03"], score, rtol=1e-5)
    assert sel["kept"] == [f"seed {s}, lr {best:g}" for s in (0, 1)]


def test_a_diverging_grid_rate_is_dropped_not_fatal(tmp_path):
    """A grid's too-large rate diverges: it is marked diverged (warning, meta), never chosen, and
    the other runs' numbers are those of training them alone; every run diverging still stops."""
    tc = T.TrainConfig(batch=8, steps=20, chunk=10, checkpoint_every=10, lr_grid=(1e-3, 1e38), valid_contexts=16)
    with pytest.warns(UserWarning, match="marked diverged"):
        got = protocol.train_or_load(TINY, tc, seeds=(0,), run_root=tmp_path, progress=False)
    assert got.selection["chosen"] == {"0": 1e-3} and np.all(np.isfinite(got.losses))
    assert not np.isfinite(got.selection["validation"]["0"]["1e+38"][0])
    meta = json.loads(next(tmp_path.glob("run-*/meta.json")).read_text())
    assert meta["status"] == "finished" and len(meta["diverged"]) == 1 and "run 1" in meta["diverged"][0]
    alone = T.train(TINY, dataclasses.replace(tc, lr_grid=()), seeds=(0,), lrs=(1e-3,), checkpoint=False,
                    progress=False)
    np.testing.assert_allclose(got.losses, alone.losses, rtol=1e-5)
    with pytest.raises(T.NonFiniteLossError):
        protocol.train_or_load(TINY, dataclasses.replace(tc, lr_grid=(1e37, 1e38)), seeds=(0,), run_root=None,
                               progress=False)


def test_a_list_given_to_train_lr_is_the_grid():
    cfg = C.override(tf_vs_gd.QUICK, ["train.lr=1e-3,3e-3,1e-2"])
    assert cfg.train.lr_grid == (1e-3, 3e-3, 1e-2) and cfg.train.protocol == "fair"
    assert C.override(tf_vs_gd.QUICK, ["train.lr=1e-3"]).train.lr_grid == ()
    # one learning rate given to a config with a grid means that rate (the grid is dropped, not kept silently)
    fair = C.override(tf_vs_gd.QUICK, ["train.lr=1e-3,3e-3"])
    assert C.override(fair, ["train.lr=3e-4"]).train.lr_grid == () and C.override(fair, ["train.lr=3e-4"]).train.lr == 3e-4
    # a saved config (TOML) holds both keys: the grid as written, the rate kept
    assert C.override(tf_vs_gd.QUICK, ["train.lr=1e-3", "train.lr_grid=1e-3,1e-2"]).train.lr_grid == (1e-3, 1e-2)
    with pytest.raises(C.ConfigError, match="both set the grid"):
        C.override(tf_vs_gd.QUICK, ["train.lr=1e-3,3e-3", "train.lr_grid=1e-3,1e-2"])
    with pytest.raises(C.ConfigError, match="lr_grid must hold finite numbers"):
        C.override(tf_vs_gd.QUICK, ["train.lr=1e-3,-1"])
    with pytest.raises(C.ConfigError, match="at least two distinct"):
        C.override(tf_vs_gd.QUICK, ["train.lr_grid=1e-3,1e-3"])
    with pytest.raises(C.ConfigError, match="train.stop"):
        C.override(tf_vs_gd.QUICK, ["train.stop=never"])
