"""The paper-claims table: its rule on planted verdicts, the published numbers' provenance, the
extraction script on a planted notebook, and the table and figure from the committed files."""

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

from icalign.analysis import paper as P
from icalign.viz import paper as V

ROOT = Path(__file__).resolve().parents[1]


# --- the rule ------------------------------------------------------------------------------------

@pytest.mark.parametrize("statuses,result", [
    (["supported"], "reproduced"),
    (["supported", "not resolved", "withheld"], "reproduced"),
    (["supported", "contradicted"], "not reproduced"),
    (["contradicted", "not resolved"], "not reproduced"),
    (["not resolved", "withheld"], "not tested"),
    (["withheld"], "not tested"),
    ([], "not tested"),  # every source absent
])
def test_rule(statuses, result):
    assert P.rule(statuses) == result


def test_rule_refuses_an_unknown_status():
    with pytest.raises(ValueError, match="statuses must be among"):
        P.rule(["supported", "needed"])


def _eng(text, verdict):
    return {"claim": text, "verdict": verdict}


def _nec(variant, verdict, n=4):
    return {"variant": variant, "n": n, "claim": f"{variant} is worse", "verdict": verdict}


@pytest.fixture
def planted(monkeypatch):
    """source_claims answers from planted claim lists (by source kind) instead of result files."""
    lists = {}
    monkeypatch.setattr(P, "source_claims", lambda kind, res: lists[kind])
    return lists


def _results(*absent):
    return {s: (None if s in absent else {}) for s in P.SOURCES}


def test_rows_from_planted_verdicts(planted):
    planted["ablations"] = [
        _eng("softmax attention does the ranking: linear attention is worse", "not trained"),
        _eng("multi-head attention discriminates tokens: one head is worse than the base (heads at fixed head "
             "dimension)", "supported"),  # confounded with width: shown, never counted
        _eng("the FFN transforms the selected token: no FFN is worse", "supported"),
        _eng("depth handles many responses: the shallowest model is worse than the deepest", "not resolved"),
        _eng("(not a claim of the theory) no LayerNorm is worse", "contradicted"),  # not a row
    ]
    planted["necessity"] = [_nec("linear attention", "needed"), _nec("one head", "not resolved"),
                            _nec("no FFN", "not needed"), _nec("half the blocks", "not trained")]
    planted["reward-noise"] = [
        _eng("corrupted rewards (replace, p = 1 vs 0) degrade the clean-trained transformer", "not trained"),
        _eng("corrupted rewards (replace, p = 1 vs 0) degrade GD (adam)", "supported"),  # icalign's, not paper A's
        _eng("on clean rewards the clean-trained transformer beats GD (adam)", "contradicted")]
    got = {r["key"]: r for r in P.rows(_results())}
    assert {k: r["result"] for k, r in got.items()} == {
        "softmax": "reproduced",        # withheld + supported
        "heads": "not tested",          # the only support does not count
        "ffn": "not reproduced",        # supported in one source, contradicted in another
        "depth": "not tested",          # not resolved + withheld
        "reward": "not tested"}         # withheld; GD and TF-vs-GD claims are not paper A's
    assert "shown, not counted" in got["heads"]["sentence"]
    assert "contradicted by necessity (quick)" in got["ffn"]["sentence"]
    assert set(got["reward"]["evidence"]) == {"reward noise (quick)", "reward noise (full)"}


def test_absent_sources_are_named_and_decide_nothing(planted):
    planted["ablations"] = []
    planted["necessity"] = [_nec("no FFN", "needed")]
    planted["reward-noise"] = []
    got = {r["key"]: r for r in P.rows(_results("full ablations", "reward noise (quick)", "reward noise (full)"))}
    assert got["ffn"]["result"] == "reproduced"
    assert got["ffn"]["evidence"]["full ablations"] is None
    assert "nothing from quick ablations and full ablations" in got["ffn"]["sentence"]
    assert got["reward"]["result"] == "not tested"
    assert "nothing from reward noise (quick) and reward noise (full)" in got["reward"]["sentence"]


@pytest.mark.parametrize("kind,claim,match", [
    ("ablations", _eng("heads help: one head is worse", "supported"), "names no known claim"),
    ("necessity", _nec("no LayerNorm", "needed"), "unknown variant"),
    ("reward-noise", _eng("noise is fine", "supported"), "neither paper A's"),
])
def test_an_unknown_comparison_is_an_error_not_an_absent_row(kind, claim, match):
    with pytest.raises(ValueError, match=match):
        P.classify(kind, claim)


def test_an_unknown_verdict_or_source_is_an_error():
    with pytest.raises(ValueError, match="verdict must be one of"):
        P.status("necessity", _nec("no FFN", "supported"))  # the necessity study's words are needed / not needed
    with pytest.raises(ValueError, match="unknown sources"):
        P.evidence({"tf-vs-gd": {}})


# --- the published numbers -----------------------------------------------------------------------

def test_published_json_names_its_source_and_holds_one_curve_per_level():
    pub = V.published(ROOT / "figures")
    assert pub["repository"] == "https://github.com/yifeiwang77/Self-Correction"
    assert pub["path"].endswith(".ipynb") and re.fullmatch(r"[0-9a-f]{40}", pub["commit"])
    assert isinstance(pub["cell_index"], int) and "mapping" in pub and "left_out" in pub
    assert [float(p) for p in pub["levels"]] == [0.0, 0.25, 0.5, 0.75, 1.0]  # icalign's replace levels
    assert all(len(pub["nmse"][str(p)]) == len(pub["ts"]) for p in pub["levels"])


def test_a_results_root_without_the_published_curves_is_named(tmp_path):
    (tmp_path / "figures").mkdir()
    with pytest.raises(ValueError, match="no published curves; they are read from docs/published"):
        V.published(tmp_path / "figures")


def _extractor():
    spec = importlib.util.spec_from_file_location("extract", ROOT / "docs/published/extract_self_correction.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_extractor_reads_the_printed_arrays_not_the_progress_bars(tmp_path):
    ex = _extractor()
    curves = [[round(0.1 * i + 0.01 * t, 4) for t in ex.TS] for i in range(len(ex.LEVELS))]
    printed = " ".join("[" + " ".join(map(str, c)) + "]" for c in curves) + "\n"
    nb = {"cells": [{"cell_type": "code", "source": ["def evaluate(model, args): ..."], "outputs": []},
                    {"cell_type": "code", "source": ["a, b, c, d, e, GD = evaluate(m, args)\n",
                                                     "print(eval_losses_0, eval_losses_25)"],
                     "outputs": [{"output_type": "stream", "name": "stderr", "text": ["100%| 256/256 [05:26<00:00]"]},
                                 {"output_type": "stream", "name": "stdout", "text": [printed]}]}]}
    repo = tmp_path / "repo"
    (repo / Path(ex.PATH).parent).mkdir(parents=True)
    (repo / ex.PATH).write_text(json.dumps(nb))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "planted"]):
        subprocess.run(git + args, check=True)
    got = ex.extract(str(repo / ".git"))
    assert got["cell_index"] == 1
    assert [got["nmse"][str(p)] for p in ex.LEVELS] == curves
    nb["cells"][1]["outputs"][1]["text"] = [printed.replace("]", " 9.9]", 1)]  # one curve one value too long
    (repo / ex.PATH).write_text(json.dumps(nb))
    subprocess.run(git + ["commit", "-q", "-am", "broken"], check=True)
    with pytest.raises(ValueError, match="expected 5 arrays of 14 numbers"):
        ex.extract(str(repo / ".git"))


# --- from the committed files --------------------------------------------------------------------

def test_the_table_renders_from_the_committed_files_as_docs_results_shows_it():
    text = V.markdown(ROOT / "figures")
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "docs/theory.md" in ln]
    assert len(rows) == len(P.ROWS)
    assert all(re.search(r"\| \*\*(reproduced|not reproduced|not tested)\*\*: ", r) for r in rows)
    block = re.search(r"<!-- generated:paper-claims -->\n(.*)\n<!-- /generated:paper-claims -->",
                      (ROOT / "docs/results.md").read_text(), re.S).group(1)
    assert block == text


def test_the_figure_draws_the_published_curve_of_every_level_beside_ours():
    fig = V.figure(ROOT / "figures")
    pub = V.published(ROOT / "figures")
    for ax in fig.axes:
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(dashed) == len(pub["levels"])
        assert [list(ln.get_ydata()) for ln in dashed] == [pub["nmse"][str(p)] for p in pub["levels"]]


def test_save_writes_the_figure_under_the_results_root_it_reads(tmp_path):
    """`icalign readme --figures` saves into --results: a root of its own holds its own figure."""
    root = tmp_path / "figures"
    for f in [*V.FILES.values(), str(Path("..") / V.PUBLISHED)]:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).symlink_to(ROOT / "figures" / f)
    assert V.save(root) == [root / V.FIGURE]
    assert (root / V.FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_readme_refuses_figures_with_check():
    from icalign import cli

    with pytest.raises(ValueError, match="--figures writes figures and --check only reads"):
        cli.main(["readme", "--check", "--figures"])
