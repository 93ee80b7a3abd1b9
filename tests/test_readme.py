"""The README stays true: its two set-up commands (CI runs exactly the test command), its
examples (they run), and its result sections (they are what the committed JSON says)."""

import json
import re
import shlex
from pathlib import Path

import pytest

from icalign import cli
from icalign.analysis import readme

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TINY_SETS = ["model.d_model=8", "model.n=4", "model.n_layers=1", "train.steps=2", "train.batch=4", "train.chunk=2",
             "train.checkpoint_every=2", "eval.contexts=4", "eval.sensitivity_contexts=0"]


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", README.read_text())


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_command():
    setup = [c for c in readme_commands() if c.startswith("python3 -m venv")]
    assert len(setup) == 2
    assert "icalign run gd-baseline" in setup[0] and "pytest" in setup[1]
    assert setup[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_cli_example_runs(tmp_path):
    """The 'Vary an architecture' command as printed, with tiny sizes appended (a later --set
    of the same key wins), runs and changes the model it says it changes."""
    line = next(c for c in readme_commands() if "icalign run tf-vs-gd --set" in c)
    argv = shlex.split(line)[1:]  # drop the program name
    for s in TINY_SETS:
        argv += ["--set", s]
    argv += ["--out", str(tmp_path), "--run-root", str(tmp_path / "runs"), "--no-progress"]
    assert cli.main(argv) == 0
    name = argv[argv.index("--name") + 1]
    res = json.loads((tmp_path / "tf-vs-gd" / name / "tf_vs_gd.json").read_text())
    m = res["config"]["model"]
    assert (m["n_heads"], m["attention"], res["config"]["train"]["lr"]) == (1, "linear", 3e-4)


def test_readme_python_example_runs(monkeypatch, capsys, tmp_path):
    """The Python example as printed, on a tiny base config (its overrides still apply)."""
    from icalign import config
    from icalign.experiments import tf_vs_gd

    code = next(b for b in re.findall(r"```python\n(.+?)\n```", README.read_text(), re.S) if "tf_vs_gd.run" in b)
    monkeypatch.setattr(tf_vs_gd, "QUICK", config.override(tf_vs_gd.QUICK, [s for s in TINY_SETS
                                                                           if not s.startswith("model.n_layers")]))
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README example", "exec"), scope)
    assert scope["res"]["config"]["model"]["attention"] == "linear" and scope["res"]["config"]["model"]["ffn"] is False
    assert "transformer" in capsys.readouterr().out and list(tmp_path.iterdir()) == []


def test_result_sections_match_the_committed_json():
    assert readme.check(README, ROOT / "figures") == []


def test_readme_check_fails_when_one_number_changes(tmp_path):
    text = README.read_text()
    m = re.search(r"<!-- generated:tf-vs-gd -->\n.*?(\d\.\d{3})", text, re.S)
    changed = text[:m.start(1)] + ("9" if m.group(1)[0] != "9" else "8") + text[m.start(1) + 1:]
    copy = tmp_path / "README.md"
    copy.write_text(changed)
    assert readme.check(copy, ROOT / "figures") == ["tf-vs-gd"]
    readme.update(copy, ROOT / "figures")
    assert copy.read_text() == text


def test_missing_block_is_a_clear_error(tmp_path):
    copy = tmp_path / "README.md"
    copy.write_text(README.read_text().replace("<!-- generated:necessity -->", "").replace(
        "<!-- /generated:necessity -->", ""))
    with pytest.raises(ValueError, match="necessity"):
        readme.update(copy, ROOT / "figures", write=False)


@pytest.mark.parametrize("block", ["reward-noise", "ablations", "self-correction"])
def test_readme_check_fails_when_one_verdict_changes(tmp_path, block):
    """The claims tables are generated too: flipping one verdict is caught like a number."""
    text = README.read_text()
    start = text.index(f"<!-- generated:{block} -->")
    m = re.compile(r"\*\*(supported|contradicted|not resolved|not trained)").search(text, start)
    other = "contradicted" if m.group(1) != "contradicted" else "supported"
    copy = tmp_path / "README.md"
    copy.write_text(text[:m.start(1)] + other + text[m.end(1):])
    assert readme.check(copy, ROOT / "figures") == [block]


def test_no_result_section_uses_the_old_interval_overlap_rule():
    text = README.read_text()
    assert "intervals overlap" not in text and "(intervals overlap)" not in text
