"""Results are claimed exclusively at the start of a run: a second run on the same output is
refused naming the holder, a stale claim (its holder died) is released, a failed run in this
process gives its claim back, and two runs started together never both write."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from icalign import io
from icalign.experiments import gd_baseline

TINY = ["--set", "eval.contexts=4", "--set", "t_max=3", "--no-progress"]
CFG = gd_baseline.Config(eval=gd_baseline.EvalConfig(contexts=4), t_max=3)


def _cli(out, *extra, wait=True):
    cmd = [sys.executable, "-m", "icalign.cli", "run", "gd-baseline", "--out", str(out), "--name", "same", *TINY, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return proc.communicate() + (proc.returncode,) if wait else proc


def test_a_live_claim_refuses_a_second_run_naming_the_holder(tmp_path):
    folder = tmp_path / "gd-baseline" / "same"
    result = folder / "gd_baseline.json"
    io.claim_output(result, force=False)  # a run in progress (this process) holds it
    try:
        with pytest.raises(io.ResultClaimedError, match=f"being written by another run \\(pid {os.getpid()}"):
            gd_baseline.run(CFG, folder, progress=False)
        with pytest.raises(io.ResultClaimedError):  # --force overwrites results; it never steals a live run
            gd_baseline.run(CFG, folder, force=True, progress=False)
    finally:
        io.release(result)
    gd_baseline.run(CFG, folder, progress=False)  # released: the next run writes
    assert result.exists() and not list(folder.glob(".*.claim"))


def test_a_stale_claim_is_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "gd-baseline" / "same"
    folder.mkdir(parents=True)
    (folder / ".gd_baseline.json.claim").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename,
                                                                  "file": "x", "started": "earlier"}))
    gd_baseline.run(CFG, folder, progress=False)
    assert (folder / "gd_baseline.json").exists() and not (folder / ".gd_baseline.json.claim").exists()


def test_a_failed_run_in_this_process_gives_its_claim_back(tmp_path, monkeypatch):
    cfg = CFG
    monkeypatch.setattr(gd_baseline, "hardware", lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        gd_baseline.run(cfg, tmp_path, progress=False)
    monkeypatch.undo()
    res = gd_baseline.run(cfg, tmp_path, progress=False)  # a notebook cell run again
    assert res["experiment"] == "gd-baseline" and not list(tmp_path.glob(".*.claim"))


def test_two_runs_started_together_never_both_write(tmp_path):
    procs = [_cli(tmp_path, wait=False) for _ in range(2)]
    outs = [p.communicate() + (p.returncode,) for p in procs]
    codes = sorted(rc for _, _, rc in outs)
    assert codes == [0, 1], outs
    loser = next(err for _, err, rc in outs if rc == 1)
    assert "being written by another run" in loser or "already holds a finished result" in loser
