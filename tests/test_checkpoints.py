"""Checkpoints that survive damage: two generations, checksums, fallback with a warning that
names the file, a clear error when none is valid, stale temporaries removed, the status
finalised after a kill past the last checkpoint, and no resume under another identity.

One small model and run (shared with test_train.py's shapes, so its chunk compiles once)."""

from __future__ import annotations

import dataclasses
import json

import chex
import jax
import numpy as np
import pytest

from icalign import model as M
from icalign import train as T
from icalign.training import checkpoint as ck

MODEL = M.ModelConfig(n_layers=2, n_heads=2, d_model=32, d=3, n=10, token_layout="stacked")
TRAIN = T.TrainConfig(lr=1e-3, batch=32, steps=100, chunk=25, checkpoint_every=25)


class _Killed(Exception):
    pass


def _kill_at(step):
    def cb(s, _):
        if s == step:
            raise _Killed
    return cb


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return T.train(MODEL, TRAIN, seeds=(0,), run_root=tmp_path_factory.mktemp("ref"), progress=False)


def _interrupted(tmp_path, at=75):
    with pytest.raises(_Killed):
        T.train(MODEL, TRAIN, seeds=(0,), run_root=tmp_path, progress=False, callback=_kill_at(at))
    return T.run_dir_for(MODEL, TRAIN, [{"seed": 0, "lr": TRAIN.lr, "noise": 0.0}], tmp_path)


def _data_file(run_dir, step):
    """The largest file of a step: where the arrays live."""
    files = [p for p in (run_dir / "checkpoints" / str(step)).rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["bit flip", "truncate", "delete manifest"])
def test_damaged_newest_checkpoint_falls_back_with_a_warning(reference, tmp_path, damage):
    run_dir = _interrupted(tmp_path)  # checkpoints at 50 and 75 (two generations)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["50", "75"]
    target = _data_file(run_dir, 75)
    if damage == "bit flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        named = target.name
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        named = target.name
    else:
        (run_dir / "manifests" / "75.json").unlink()
        named = "75.json"
    with pytest.warns(UserWarning, match=named):
        resumed = T.train(MODEL, TRAIN, seeds=(0,), run_root=tmp_path, progress=False)
    chex.assert_trees_all_equal(jax.device_get(resumed.params), jax.device_get(reference.params))
    np.testing.assert_array_equal(resumed.losses, reference.losses)


def test_no_valid_checkpoint_is_a_clear_error_naming_the_files(tmp_path):
    run_dir = _interrupted(tmp_path)
    for step in (50, 75):
        _data_file(run_dir, step).write_bytes(b"garbage")
    with pytest.raises(ck.CheckpointError, match=r"no valid checkpoint .*checkpoints/75/.*checkpoints/50/"):
        T.train(MODEL, TRAIN, seeds=(0,), run_root=tmp_path, progress=False)


def test_a_checkpoint_whose_loss_count_disagrees_with_its_step_is_refused(tmp_path):
    """An edited or mixed-up step: the losses stored say how many steps were taken."""
    run_dir = _interrupted(tmp_path)
    ckpts = run_dir / "checkpoints"
    (ckpts / "75").rename(ckpts / "90")
    (run_dir / "manifests" / "75.json").rename(run_dir / "manifests" / "90.json")
    with pytest.warns(UserWarning, match="75 losses per run, not 90"):
        ck.load_checkpoint(run_dir, T.init_states(*_runs_and_objective()))


def _runs_and_objective():
    runs, _ = T.make_runs((0,), train_cfg=TRAIN)
    return runs, T.ICAObjective.of(MODEL, TRAIN)


def test_stale_temporaries_are_removed(tmp_path):
    run_dir = _interrupted(tmp_path)
    stale = [run_dir / ".meta.json.abc.tmp", run_dir / "checkpoints" / "100.orbax-checkpoint-tmp-1"]
    stale[0].write_text("half")
    stale[1].mkdir()
    (stale[1] / "x").write_text("half")
    T.train(MODEL, TRAIN, seeds=(0,), run_root=tmp_path, progress=False)
    assert not any(p.exists() for p in stale)


def test_kill_after_the_last_checkpoint_still_finalises_the_run(reference, tmp_path):
    run_dir = T.train(MODEL, TRAIN, seeds=(0,), run_root=tmp_path, progress=False).run_dir
    meta = json.loads((run_dir / "meta.json").read_text())
    meta.update(status="running", steps_done=75)  # as if killed between checkpoint and status
    (run_dir / "meta.json").write_text(json.dumps(meta))
    again = T.train(MODEL, TRAIN, seeds=(0,), run_root=tmp_path, progress=False)
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "finished"
    chex.assert_trees_all_equal(jax.device_get(again.params), jax.device_get(reference.params))
    assert T.load_run(run_dir).finished


def test_non_finite_parameters_after_the_last_update_are_caught(tmp_path):
    one = dataclasses.replace(TRAIN, steps=1, chunk=1, checkpoint_every=1)
    with pytest.raises(T.NonFiniteLossError, match="parameters after the update of step 0 .* not finite or give"):
        T.train(MODEL, one, seeds=(0,), lrs=(1e30,), run_root=tmp_path, progress=False)
    meta = json.loads(next(tmp_path.glob("run-*/meta.json")).read_text())
    assert meta["status"].startswith("failed") and not (tmp_path / "checkpoints").exists()


def test_a_resume_under_another_identity_is_refused(tmp_path):
    """A float32 partial run is not continued under float64 (it would continue on another
    data stream); the run hash of the ICA runs already separates them."""
    from icalign.training import fit

    runs, objective = _runs_and_objective()
    kw = dict(steps=50, chunk=25, checkpoint_every=25, run_dir=tmp_path / "r", progress=False)
    with pytest.raises(_Killed):
        fit(objective, runs, [{"seed": 0}], callback=_kill_at(25), **kw)
    with jax.enable_x64(True):
        with pytest.raises(T.RunIdentityError, match="x64: False -> True"):
            fit(objective, runs, [{"seed": 0}], **kw)
        x64_dir = T.run_dir_for(MODEL, TRAIN, [{"seed": 0, "lr": TRAIN.lr, "noise": 0.0}], tmp_path)
    assert x64_dir != T.run_dir_for(MODEL, TRAIN, [{"seed": 0, "lr": TRAIN.lr, "noise": 0.0}], tmp_path)
