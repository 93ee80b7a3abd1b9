"""The fault table of run folders: each fault planted in a copy of one tiny trained folder, each
with its exact outcome. A damaged final checkpoint makes a run unfinished (it resumes, saying
so, and ends bit-identical to the undamaged run; a plain load refuses naming the file); a folder
of other settings or another identity is refused naming the fields; a live lock refuses a
second run with the holder's pid; damaged bookkeeping falls back or is named; a planted
symlink out of the folder is refused before anything is written through it."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from icalign import io
from icalign import model as M
from icalign import train as T

MODEL = M.ModelConfig(n_layers=1, n_heads=1, d_model=8, d=2, n=4, token_layout="stacked")
TRAIN = T.TrainConfig(lr=1e-3, batch=4, steps=4, chunk=2, checkpoint_every=2)  # checkpoints at 2 and 4


def _dir(train=TRAIN, root=None):
    return T.run_dir_for(MODEL, train, [{"seed": 0, "lr": train.lr, "noise": 0.0}], root)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return T.train(MODEL, TRAIN, seeds=(0,), run_root=tmp_path_factory.mktemp("trained"), progress=False)


def _copy(trained, tmp_path, unfinished=False):
    """A copy of the trained folder at its own path under ``tmp_path``; ``unfinished``: as if
    killed right after the step-2 checkpoint."""
    run_dir = _dir(root=tmp_path)
    shutil.copytree(trained.run_dir, run_dir)
    if unfinished:
        shutil.rmtree(run_dir / "checkpoints" / "4")
        (run_dir / "manifests" / "4.json").unlink()
        meta = json.loads((run_dir / "meta.json").read_text())
        (run_dir / "meta.json").write_text(json.dumps({**meta, "status": "running", "steps_done": 2}))
        (run_dir / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    return run_dir


def _flip_final(run_dir):
    """One bit flipped in the largest data file of the final step (step 4): its arrays."""
    files = [p for p in (run_dir / "checkpoints" / "4" / "state").rglob("*") if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return target


def _same_as(result, trained):
    chex.assert_trees_all_equal(jax.device_get(result.params), jax.device_get(trained.params))
    np.testing.assert_array_equal(result.losses, trained.losses)


def _load(tmp_path, train=TRAIN):
    return T.train_or_load(MODEL, train, seeds=(0,), run_root=tmp_path, progress=False)


# -- a damaged final checkpoint: never published as the final model -------------------------

def test_damaged_final_checkpoint_resumes_from_the_newest_valid_step_and_says_so(trained, tmp_path):
    run_dir = _copy(trained, tmp_path)
    target = _flip_final(run_dir)
    with pytest.warns(UserWarning, match=rf"resuming .* from step 2: .*{target.name} does not match its checksum"):
        resumed = _load(tmp_path)
    assert not resumed.loaded and resumed.losses.shape == (1, 4)
    _same_as(resumed, trained)  # steps 3-4 retrained: bit-identical to the undamaged run
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "finished"
    assert (run_dir / "damaged" / "4").is_dir()
    again = _load(tmp_path)  # the repaired folder now loads as finished
    assert again.loaded and again.finished
    _same_as(again, trained)


def test_damaged_final_checkpoint_is_refused_by_load_run_naming_the_file(trained, tmp_path):
    run_dir = _copy(trained, tmp_path)
    target = _flip_final(run_dir)
    with pytest.raises(T.CheckpointError, match=rf"marked finished, but .*{target.name} does not match .*resume"):
        T.load_run(run_dir)
    assert not (run_dir / "damaged").exists()  # loading changes nothing on disk


def test_a_read_only_folder_blames_the_damaged_step_and_says_to_make_it_writable(trained, tmp_path, monkeypatch):
    run_dir = _copy(trained, tmp_path)
    target = _flip_final(run_dir)
    # read-only as seen by this process (tests may run as root, whom chmod does not stop)
    monkeypatch.setattr(io, "writable", lambda folder: False, raising=False)
    monkeypatch.setattr(shutil, "move", lambda *a: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(T.CheckpointError) as err:
        _load(tmp_path)
    msg = str(err.value)
    assert re.search(rf"not writable, and resuming from step 2 writes there .*checkpoints/4/.*{target.name}", msg)
    assert "make it writable" in msg and "Delete" not in msg and "checkpoints/2" not in msg
    assert (run_dir / "checkpoints" / "4").is_dir() and not (run_dir / "damaged").exists()


def test_load_run_of_an_unfinished_folder_with_a_damaged_newest_step_loads_the_older_one(trained, tmp_path):
    run_dir = _copy(trained, tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, "status": "running"}))  # killed before its status
    target = _flip_final(run_dir)
    with pytest.warns(UserWarning, match=rf"loading step 2 of .*: skipped .*{target.name}"):
        loaded = T.load_run(run_dir)
    assert not loaded.finished and loaded.losses.shape == (1, 2)
    assert (run_dir / "checkpoints" / "4").is_dir() and not (run_dir / "damaged").exists()  # nothing moved
    np.testing.assert_array_equal(loaded.losses, trained.losses[:, :2])


# -- a foreign folder: refused with the differing fields ------------------------------------

def test_a_folder_of_another_learning_rate_at_this_configs_path_is_refused(trained, tmp_path):
    other = dataclasses.replace(TRAIN, lr=2e-3)
    shutil.copytree(trained.run_dir, _dir(other, tmp_path))
    with pytest.raises(T.RunIdentityError, match=r"train_config\.lr: 0\.001 -> 0\.002.*runs\[0\]\.lr: 0\.001 -> 0\.002"):
        _load(tmp_path, other)
    with pytest.raises(T.RunIdentityError, match=r"train_config\.lr: 0\.001 -> 0\.002"):
        T.train(MODEL, other, seeds=(0,), run_root=tmp_path, progress=False)


@pytest.mark.parametrize("field, value", [("jax", "0.4.1"), ("device_kind", "TPU v5 lite")])
def test_a_finished_folder_of_another_identity_is_refused(trained, tmp_path, field, value):
    run_dir = _copy(trained, tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    now = meta["identity"][field]
    meta["identity"][field] = value
    (run_dir / "meta.json").write_text(json.dumps(meta))
    expected = rf"identity\.{field}: {value!r} -> {now!r}"
    with pytest.raises(T.RunIdentityError, match=expected):
        _load(tmp_path)
    with pytest.raises(T.RunIdentityError, match=expected):
        T.load_run(run_dir)


# -- one training run per folder ------------------------------------------------------------

def test_a_live_lock_refuses_a_second_run_with_the_holders_pid(trained, tmp_path):
    run_dir = _copy(trained, tmp_path, unfinished=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lock = run_dir.with_name(f".{run_dir.name}.claim")
    try:
        lock.write_text(json.dumps({"pid": holder.pid, "host": platform.node(), "file": str(lock), "started": "now"}))
        with pytest.raises(io.ResultClaimedError, match=rf"{run_dir} is being trained by another run \(pid {holder.pid}"):
            _load(tmp_path)
        assert json.loads((run_dir / "meta.json").read_text())["steps_done"] == 2  # untouched
    finally:
        holder.kill()
        holder.wait()
    _same_as(_load(tmp_path), trained)  # the holder is dead: its lock is stale and released
    assert not lock.exists()


# -- damaged bookkeeping: a fallback, or the file named -------------------------------------

@pytest.mark.parametrize("damage", ["directory", "files a list"])
def test_a_damaged_final_manifest_resumes_from_the_step_before(trained, tmp_path, damage):
    run_dir = _copy(trained, tmp_path)
    manifest = run_dir / "manifests" / "4.json"
    if damage == "directory":
        manifest.unlink()
        manifest.mkdir()
    else:
        manifest.write_text(json.dumps({"step": 4, "files": ["a", "b"]}))
    with pytest.warns(UserWarning, match=r"resuming .* from step 2: .*manifests/4\.json is damaged"):
        _same_as(_load(tmp_path), trained)


def test_meta_json_as_a_directory_is_named(trained, tmp_path):
    run_dir = _copy(trained, tmp_path)
    (run_dir / "meta.json").unlink()
    (run_dir / "meta.json").mkdir()
    with pytest.raises(T.CheckpointError, match=r"meta\.json is not a regular file.*--force"):
        _load(tmp_path)
    with pytest.raises(T.CheckpointError, match=r"meta\.json is not a regular file"):
        T.load_run(run_dir)


def test_log_lines_that_are_not_records_are_dropped_on_resume(trained, tmp_path):
    run_dir = _copy(trained, tmp_path, unfinished=True)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('[1,2]\n{"step": "x"}\n')
    _same_as(_load(tmp_path), trained)
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [2, 4]


# -- writes stay inside the run folder ------------------------------------------------------

@pytest.mark.parametrize("link", ["metrics.jsonl", "manifests"])
def test_a_symlink_out_of_the_folder_is_refused_before_writing(trained, tmp_path, link):
    run_dir = _copy(trained, tmp_path / "runs", unfinished=True)
    outside = tmp_path / "outside" / "target"
    outside.parent.mkdir()
    shutil.rmtree(run_dir / link) if (run_dir / link).is_dir() else (run_dir / link).unlink()
    os.symlink(outside, run_dir / link)  # dangling
    with pytest.raises(ValueError, match=rf"{link} is a symbolic link to {outside}, outside"):
        _load(tmp_path / "runs")
    assert not outside.exists()


def test_damaged_orbax_metadata_of_an_older_step_does_not_stop_the_final_load(trained, tmp_path):
    """A restore reads its own step's files (all in its manifest) and, as orbax lists the
    steps, each step's _CHECKPOINT_METADATA, whose damage orbax only logs."""
    run_dir = _copy(trained, tmp_path)
    (run_dir / "checkpoints" / "2" / "_CHECKPOINT_METADATA").write_text("{not json")
    loaded = T.load_run(run_dir)
    assert loaded.finished
    _same_as(loaded, trained)


def test_the_log_writer_never_appends_through_a_symlink(tmp_path):
    target = tmp_path / "elsewhere.jsonl"
    os.symlink(target, tmp_path / "metrics.jsonl")
    with pytest.raises(ValueError, match=r"metrics\.jsonl is a symbolic link .*refusing to append"):
        io.append_text(tmp_path / "metrics.jsonl", "{}\n")
    assert not target.exists()
    io.append_text(tmp_path / "log.jsonl", "a\n")
    io.append_text(tmp_path / "log.jsonl", "b\n")
    assert (tmp_path / "log.jsonl").read_text() == "a\nb\n"
