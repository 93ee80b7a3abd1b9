"""`icalign reproduce`: the plan covers every experiment, the dry run writes nothing, a run
records every step and a second call skips the finished ones, failures name their step."""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest

from icalign import cli, io
from icalign import reproduce as R
from icalign.experiment import config_record, publish, result_path, runner
from icalign.viz import reproduce as VR
from icalign.experiments import gd_baseline


def test_the_order_holds_every_experiment_once():
    # a new experiment module must be placed in the order, or `reproduce` would forget it
    assert sorted(R.ORDER) == sorted(cli.experiments()) and len(set(R.ORDER)) == len(R.ORDER)
    assert [s.name for s in R.plan("quick")] == list(R.ORDER) == [s.name for s in R.plan("full")]
    assert set(VR._RENDER) == set(R.ORDER)  # every experiment has a section renderer


def test_estimate_reads_each_kind_of_wall_time_and_says_when_there_is_none(tmp_path):
    cfg = gd_baseline.QUICK
    cpu = {"backend": "cpu", "cpu_count": 2, "jax": "9.9"}
    gpu = {"backend": "gpu", "device": "NVIDIA H200", "jax": "9.8"}

    def put(folder, res):
        (tmp_path / "gd-baseline" / folder).mkdir(parents=True)
        io.write_json(tmp_path / "gd-baseline" / folder / "gd_baseline.json", res)

    assert R.estimate("gd-baseline", "quick", cfg, tmp_path)["seconds"] is None  # nothing committed
    put("quick", {"config_hash": "other", "seconds": {"total": 120.0, "train": 100.0}, "hardware": cpu})
    e = R.estimate("gd-baseline", "quick", cfg, tmp_path)
    assert (e["seconds"], e["hardware"]) == (120.0, "2-core CPU (jax 9.9)") and "another config" in e["note"]
    # a result of the very config (quick == full here) wins over the preset's folder
    from icalign import config as C

    put("full", {"config_hash": C.short_hash(cfg), "seconds": 33.0, "hardware": gpu})
    e = R.estimate("gd-baseline", "quick", cfg, tmp_path)
    assert (e["seconds"], e["hardware"], e["note"]) == (33.0, "NVIDIA H200 (jax 9.8)", "")
    put("variant-x", {"config_hash": "zzz", "wall_seconds": 7.0, "hardware": cpu})  # neither preset nor config
    assert R.estimate("gd-baseline", "variant-x", cfg, tmp_path)["seconds"] == 33.0
    (tmp_path / "gd-baseline" / "full" / "gd_baseline.json").unlink()
    (tmp_path / "gd-baseline" / "full").rmdir()
    io.write_json(tmp_path / "gd-baseline" / "quick" / "gd_baseline.json", {"config_hash": "o", "hardware": cpu})
    e = R.estimate("gd-baseline", "quick", cfg, tmp_path)
    assert e["seconds"] is None and "records no wall time" in e["note"]
    # a committed reproduce record times the whole step; of this config, it is the estimate
    step = {"step": "gd-baseline", "folder": "gd-baseline/quick", "seconds": 50.0, "ran_hardware": "a machine"}
    io.write_json(tmp_path / "reproduce.json", {"steps": [{**step, "config_hash": "old"}]})
    e = R.estimate("gd-baseline", "quick", cfg, tmp_path)
    assert (e["seconds"], e["hardware"]) == (50.0, "a machine") and "another config" in e["note"]
    io.write_json(tmp_path / "reproduce.json", {"steps": [{**step, "config_hash": C.short_hash(cfg)},
                                                          {**step, "step": "verify", "folder": "verify/quick", "seconds": 9.0}]})
    assert R.estimate("gd-baseline", "quick", cfg, tmp_path)["note"] == ""


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    assert cli.main(["reproduce", "--dry-run", "--out", str(tmp_path / "out"), "--run-root", str(tmp_path / "runs"),
                     "--only", "mechanism,verify"]) == 0
    printed = capsys.readouterr().out
    lines = [x.strip() for x in printed.splitlines()]
    steps = [x for x in lines if x[:2] in ("1.", "2.")]
    # --only keeps the plan's order, and every step has an estimate or says why not
    assert steps[0].startswith("1. verify") and steps[1].startswith("2. mechanism")
    assert all("measured on" in x or "no estimate" in x for x in steps)
    assert any(x.startswith("total:") for x in lines)
    assert list(tmp_path.iterdir()) == []


def test_full_on_a_cpu_warns_that_it_is_meant_for_a_gpu(tmp_path, capsys):
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("the warning is for CPUs")
    assert cli.main(["reproduce", "--full", "--dry-run", "--out", str(tmp_path), "--only", "gd-baseline"]) == 0
    captured = capsys.readouterr()
    assert "meant for a GPU" in captured.err and "gd-baseline/full" in captured.out


@pytest.mark.parametrize("flags, named", [(["--only", "verify,nope"], "--only"), (["--quick", "--full"], "--full"),
                                          (["--bogus"], "--bogus"), (["--only", ","], "--only")])
def test_bad_flags_exit_2_naming_the_flag(flags, named, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["reproduce", "--dry-run", "--out", str(tmp_path), *flags])
    assert e.value.code == 2 and named in capsys.readouterr().err


def test_results_document_points_to_icalign_readme_only_for_the_repository_figures(tmp_path):
    record = {"preset": "quick", "command": "icalign reproduce", "started": "s", "finished": "f",
              "hardware": {"backend": "cpu", "cpu_count": 2, "jax": "x"},
              "steps": [{"step": "verify", "folder": "verify/quick", "status": "failed", "error": "boom",
                         "estimate": {"seconds": 60.0, "hardware": "h"}, "seconds": 5.0}]}
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("")
    doc = R.document(record, tmp_path / "figures")
    assert "`icalign readme` regenerates README.md" in doc and "Not reproduced: boom" in doc
    assert "| verify | verify/quick | failed | 5 s | - | 60 s | h |" in doc
    assert "icalign readme" not in R.document(record, tmp_path / "elsewhere")


# A stand-in experiment that fails while FAIL is set: a failed step must be recorded, named and
# not stop the next one; once it passes, the rerun runs it and skips the finished steps.
FAIL = {"now": True, "claims": False}


@dataclasses.dataclass(frozen=True)
class _Config:
    seed: int = 0


def _fake_module():
    mod = types.ModuleType("icalign.experiments.fake_step")

    @runner
    def run(cfg, out=None, *, force=False, progress=True, run_root=None):
        path = result_path(out, "fake_step", force)
        if FAIL["now"]:
            raise RuntimeError("fake failure")
        return publish(path, {"experiment": "fake-step", **config_record(cfg), "seconds": 1.5,
                                "all_pass": not FAIL["claims"]},
                       markdown=lambda r: "fake section text")

    mod.__dict__.update(NAME="fake-step", DESCRIPTION="a stand-in", Config=_Config, QUICK=_Config(),
                        FULL=_Config(), run=run, exit_code=lambda r: 0 if r["all_pass"] else 1)
    return mod


def test_a_run_records_every_step_and_a_rerun_skips_the_finished_ones(tmp_path, monkeypatch, capsys):
    sys.modules["icalign.experiments.fake_step"] = _fake_module()
    monkeypatch.setattr(cli, "experiments", lambda: {**cli._modules(cli.icalign.experiments),
                                                     "fake-step": "icalign.experiments.fake_step"})
    tiny = R.Step("gd-baseline", ("eval.contexts=4", "t_max=3", "eval.gd_steps=2"))
    monkeypatch.setattr(R, "plan", lambda preset: [R.Step("fake-step"), tiny])
    out = tmp_path / "out"
    argv = ["reproduce", "--out", str(out), "--run-root", str(tmp_path / "runs"), "--no-progress"]
    FAIL["now"] = True
    try:
        assert cli.main(argv) == 1  # the failed first step did not stop the second
        err = capsys.readouterr().err
        assert "step fake-step failed: RuntimeError: fake failure" in err
        rec = json.loads((out / "reproduce.json").read_text())
        by = {s["step"]: s for s in rec["steps"]}
        assert [s["step"] for s in rec["steps"]] == ["fake-step", "gd-baseline"]
        assert by["fake-step"]["status"] == "failed" and "fake failure" in by["fake-step"]["error"]
        g = by["gd-baseline"]
        assert g["status"] == "ran" and g["seconds"] > 0 and g["preset"] == "quick"
        assert g["folder"].startswith("gd-baseline/variant-")  # the tiny overrides made a variant
        assert "--set eval.contexts=4" in g["command"] and g["identity"]["jax"] and g["hardware"]["backend"]
        assert g["estimate"]["seconds"] is None or g["estimate"]["hardware"]
        result = out / g["folder"] / "gd_baseline.json"
        stamp = result.stat().st_mtime_ns
        doc = (out / "results.md").read_text()
        assert "## gd-baseline" in doc and "Not reproduced: RuntimeError: fake failure" in doc
        assert "| gd-baseline |" in doc  # its row of the wall-time table

        FAIL["now"] = False
        assert cli.main(argv) == 0
        printed = capsys.readouterr().out
        assert f"[reproduce] gd-baseline: done, {result} (skipped)" in printed
        assert result.stat().st_mtime_ns == stamp  # never rewritten
        rec = json.loads((out / "reproduce.json").read_text())
        by = {s["step"]: s for s in rec["steps"]}
        assert by["fake-step"]["status"] == "ran" and by["gd-baseline"]["status"] == "skipped"
        assert by["gd-baseline"]["seconds"] == g["seconds"]  # its time kept from the call that ran it
        assert by["fake-step"]["result_seconds"] == 1.5
        doc = (out / "results.md").read_text()
        assert "fake section text" in doc and "Not reproduced" not in doc
        # a result of another config in a step's folder is refused, never skipped or overwritten
        fake = out / "fake-step" / "quick" / "fake_step.json"
        io.write_json(fake, {**json.loads(fake.read_text()), "config_hash": "deadbeef"})
        with pytest.raises(ValueError, match="another config"):  # before any step runs
            cli.main(argv)
        assert json.loads(fake.read_text())["config_hash"] == "deadbeef"
        fake.unlink()  # the next call reruns only that step; gd-baseline keeps its time over a second skip
        assert cli.main(argv) == 0
        rec = json.loads((out / "reproduce.json").read_text())
        assert rec["steps"][1]["status"] == "skipped" and rec["steps"][1]["seconds"] == g["seconds"]
        # a call for one step keeps the others in the record and the document
        monkeypatch.setattr(R, "plan", lambda preset: [R.Step("fake-step"), tiny])
        assert cli.main(argv + ["--only", "fake-step"]) == 0
        rec = json.loads((out / "reproduce.json").read_text())
        assert [s["step"] for s in rec["steps"]] == ["fake-step", "gd-baseline"]
        assert "## gd-baseline" in (out / "results.md").read_text()
        # a result that reports a failure (verify's failed claim) fails the command, on a rerun too
        (out / "fake-step" / "quick" / "fake_step.json").unlink()
        FAIL["claims"] = True
        for _ in range(2):
            assert cli.main(argv) == 1
            assert "step fake-step failed: its result reports a failure (exit code 1)" in capsys.readouterr().err
    finally:
        FAIL.update(now=True, claims=False)
        sys.modules.pop("icalign.experiments.fake_step", None)


def test_the_total_counts_a_step_timed_only_by_its_result():
    """A step whose call time was lost (finished outside `icalign reproduce`) is counted by its
    result's own time, and the total says so; a step with neither is left out."""
    est = {"seconds": None, "hardware": None}
    hw = {"backend": "cpu", "cpu_count": 2, "jax": "0.10.2"}
    steps = [{"step": "a", "folder": "a/quick", "status": "ran", "seconds": 60.0, "result_seconds": 55.0, "estimate": est},
             {"step": "b", "folder": "b/quick", "status": "skipped", "seconds": None, "result_seconds": 120.0,
              "estimate": est},
             {"step": "c", "folder": "c/quick", "status": "skipped", "estimate": est}]
    text = VR.markdown({"hardware": hw, "steps": steps})
    assert "Total wall time 3.0 min over 2 timed step(s) (1 of them by the result's own time" in text
