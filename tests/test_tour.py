"""The README's tour runs as printed: its commands and code are read out of the README (so the
two cannot drift) and executed in order in a fresh folder, with tiny sizes appended to each
command (a later --set of the same key wins) and a tiny base config under the Python code.
Two commands are only resolved here (flags, keys and values checked, nothing run), to keep the
suite's budget: `icalign verify` (tests/test_verify.py runs its checks) and `icalign compare`
(tests/test_variants.py runs the command at tiny size; here it would train two more models).
The tutorial is run by tests/test_tutorial.py."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from icalign import cli, comparison, config
from icalign.analysis import variants

ROOT = Path(__file__).resolve().parents[1]
# sizes only: the fields the tour's commands set (layers, heads, attention, lr, factors) are left
# as printed, and checked below
TINY = ["model.d_model=8", "model.n=4", "train.steps=2", "train.batch=4", "train.chunk=2", "train.checkpoint_every=2",
        "eval.contexts=4", "eval.gd_steps=2"]
TINY_BY_EXPERIMENT = {"tf-vs-gd": TINY + ["eval.sensitivity_contexts=0", "seeds=2"]}


def tour() -> list[tuple[str, str]]:
    """(language, code) of every fenced block of the README's tour section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## A 60-second tour"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```(bash|python)\n(.*?)\n```", section, re.S)


def test_the_tour_has_its_six_steps():
    langs = [lang for lang, _ in tour()]
    assert langs == ["bash", "bash", "python", "bash", "python", "bash"]


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """Every step of the tour run in one fresh working folder; {step index: what it gave}."""
    from icalign.experiments import tf_vs_gd

    work = tmp_path_factory.mktemp("tour")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(tf_vs_gd, "QUICK", config.override(tf_vs_gd.QUICK, TINY_BY_EXPERIMENT["tf-vs-gd"]))
        for i, (lang, code) in enumerate(tour()):
            if lang == "python":
                scope = {}
                exec(compile(code, f"README tour step {i + 1}", "exec"), scope)
                out[i] = scope
                continue
            argv = shlex.split(code)
            if argv[0].endswith("python"):  # the tutorial: run by tests/test_tutorial.py
                out[i] = argv
                continue
            assert argv[0] == ".venv/bin/icalign", code
            argv = argv[1:]
            if argv[0] == "verify":  # resolved only (module docstring)
                out[i] = (cli.main(argv + ["--show-config"]), argv)
                continue
            if argv[0] == "compare":  # resolved only: tests/test_variants.py runs the command at a tiny size
                asked = []
                mp.setattr(comparison, "compare", lambda cfgs, experiment, **kw: asked.append((cfgs, experiment)) or {})
                mp.setattr(variants, "report", lambda res: "")
                out[i] = (cli.main(argv), argv, asked)
                continue
            for s in TINY_BY_EXPERIMENT[argv[1]]:
                argv += ["--set", s]
            out[i] = cli.main(argv + ["--no-progress"])
    return out, work


def test_verify_command_resolves(walked):
    out, _ = walked
    assert out[0] == (0, ["verify"])


def test_cli_variant_writes_its_result_and_keeps_its_run(walked):
    out, work = walked
    assert out[1] == 0
    r = json.loads((work / "results/tf-vs-gd/linear-3/tf_vs_gd.json").read_text())
    m = r["config"]["model"]
    assert (m["n_layers"], m["n_heads"], m["attention"], r["config"]["train"]["lr"]) == (3, 1, "linear", 3e-4)
    assert (work / "runs" / r["run_folder"] / "meta.json").is_file()


def test_python_variant_runs_in_memory(walked):
    out, _ = walked
    res = out[2]["res"]
    assert (res["config"]["model"]["attention"], res["config"]["model"]["ffn"]) == ("linear", False)
    assert res["run_folder"] is None
    png = res["figures"][""]._repr_png_()  # shown inline by a notebook as the cell's value
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_resolves_to_two_variants_on_shared_seeds(walked):
    """The command is valid as printed: two variants of tf-vs-gd's quick model, 5 seeds each,
    differing from the preset as the tour says (tests/test_variants.py runs it at tiny size)."""
    out, _ = walked
    rc, argv, asked = out[3]
    assert rc == 0 and argv[:2] == ["compare", "tf-vs-gd"] and len(asked) == 1
    cfgs, experiment = asked[0]
    assert experiment == "tf-vs-gd" and sorted(cfgs) == ["a", "b"]
    assert (cfgs["a"].model.attention, cfgs["b"].model.n_layers) == ("linear", 1)
    assert cfgs["a"].seeds == cfgs["b"].seeds == 5


def test_load_run_gives_back_the_cli_variant(walked):
    out, _ = walked
    run, res = out[4]["run"], out[4]["res"]
    assert (run.model_config.n_layers, run.model_config.attention) == (3, "linear")
    assert run.finished and run.losses.shape == (len(res["seeds"]), run.train_config.steps) == (2, 2)


def test_tutorial_command_is_the_file_test_tutorial_runs(walked):
    out, _ = walked
    assert out[5] == [".venv/bin/python", "docs/tutorial.py"]
    runner = (ROOT / "tests" / "test_tutorial.py").read_text()
    assert '"docs" / "tutorial.py"' in runner and "runpy.run_path(str(TUTORIAL)" in runner


def test_the_tour_writes_only_ignored_folders(walked):
    _, work = walked
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {p.name for p in work.iterdir()} == {"results", "runs"}
    assert {"results/", "runs/"} <= set(ignored)
    assert sorted(p.name for p in (work / "results").iterdir()) == ["tf-vs-gd"]
