"""docs/tutorial.py runs top to bottom at its tiny size, and what it shows is there and sane:
the variant's comparison with GD, the construction's error, the corruption sweep with its
intervals, the saved run it loads back, and the figures."""

from __future__ import annotations

import math
import re
import runpy
from pathlib import Path

import jax
import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from icalign import cli
from icalign.experiments import tf_vs_gd
from icalign.tasks import DEFAULT_LEVELS

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.py"


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """The tutorial's globals after one tiny run, in a fresh working folder (anything it
    writes lands there), and that folder."""
    workdir = tmp_path_factory.mktemp("tutorial")
    backend = matplotlib.get_backend()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICALIGN_TUTORIAL_SIZE", "tiny")
        mp.chdir(workdir)
        g = runpy.run_path(str(TUTORIAL), run_name="__main__")
    assert matplotlib.get_backend() == backend  # the tutorial never switches the backend
    return g, workdir


def _finite(xs) -> np.ndarray:
    a = np.asarray(xs, dtype=float)
    assert np.all(np.isfinite(a)), a
    return a


def test_the_size_switch_is_the_only_difference(tutorial):
    g, _ = tutorial
    assert g["SIZE"] == "tiny" and g["S"] == g["SIZES"]["tiny"]
    assert set(g["SIZES"]) == {"tiny", "quick"} and g["SIZES"]["tiny"].keys() == g["SIZES"]["quick"].keys()
    code = "\n".join(line for line in TUTORIAL.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert code.count("os.environ") == 1  # the size is read once, into S
    assert not re.search(r"matplotlib\.use\(|import pyplot|matplotlib\.pyplot|plt\.", code)  # no global state


def test_the_file_is_jupytext_percent_with_the_four_sections():
    text = TUTORIAL.read_text()
    cells = re.split(r"^# %%.*$", text, flags=re.M)[1:]
    kinds = re.findall(r"^# %%(.*)$", text, flags=re.M)
    assert len(cells) == len(kinds) >= 8
    for kind, cell in zip(kinds, cells):
        if "[markdown]" in kind:  # every markdown line is a comment, so the script still runs
            assert all(not line or line.startswith("#") for line in cell.strip("\n").splitlines()), cell[:80]
    for n in range(1, 5):
        assert re.search(rf"^# ## {n}\. ", text, flags=re.M), f"section {n}"
    assert "icalign run tf-vs-gd --set model.n_layers=" in text  # the CLI equivalent of section 1


def test_section1_variant_against_gd(tutorial):
    g, _ = tutorial
    res, cfg = g["variant_res"], g["variant_cfg"]
    m = res["model_config"]
    assert (m["n_layers"], m["n_heads"], m["attention"], m["ffn"]) == (3, 4, "linear", False)
    assert res["train_config"]["lr"] == 3e-4 and res["train_config"]["steps"] == g["S"]["steps"]
    assert res["config_hash"] == g["C"].short_hash(cfg)
    cmp = res["comparison"]
    assert cmp["t"] == list(range(1, m["n"])) and cmp["n_contexts"] == g["S"]["contexts"]
    assert set(cmp["nmse"]) == {"transformer", "adam", "gd"}
    for name, stats in cmp["nmse"].items():
        mean = _finite(stats["mean"])
        assert mean.shape == (len(cmp["t"]),) and np.all((mean >= 0) & (mean <= 2)), name  # 1 - cos
    assert isinstance(g["variant_fig"], Figure) and g["variant_fig"] is res["figures"][""]
    table = g["nmse_table"](cmp).splitlines()
    assert len(table) == 1 + len(cmp["t"]) and table[-1].split()[0] == str(cmp["t"][-1])


def test_the_cli_command_shown_is_the_quick_variant(tutorial, capsys):
    g, _ = tutorial
    block = re.search(r"^# ```bash\n(.*?)^# ```", TUTORIAL.read_text(), flags=re.M | re.S).group(1)
    words = " ".join(line[2:].rstrip("\\ ") for line in block.splitlines()).split()
    assert words[:3] == ["icalign", "run", "tf-vs-gd"] and words[3::2] == ["--set"] * len(words[4::2])
    assert words[4::2] == g["VARIANT"]
    # the quick budget is the preset's own, so the command's config is the quick-size variant
    quick_cfg = g["C"].override(tf_vs_gd.QUICK, g["VARIANT"] + g["budget"](g["SIZES"]["quick"]))
    assert quick_cfg == g["C"].override(tf_vs_gd.QUICK, g["VARIANT"])
    capsys.readouterr()
    assert cli.main(words[1:] + ["--show-config"]) == 0
    assert capsys.readouterr().out == g["C"].to_toml(quick_cfg, comments=True)


def test_section2_construction_matches_the_closed_form_and_autodiff(tutorial):
    g, _ = tutorial
    y = g["y_transformer"]
    assert y.dtype == np.float64 and y.shape == (g["S"]["construction_contexts"], g["D_C"])
    assert set(g["construction_errors"]) == {"transformer vs closed form", "transformer vs jax.grad",
                                             "closed form vs jax.grad"}
    assert all(math.isfinite(e) for e in g["construction_errors"].values())
    assert g["construction_error"] < 1e-9
    # the check is not vacuous: the GD steps moved the prediction away from W0 x
    y0 = np.einsum("ij,bj->bi", g["spec"].W0, np.asarray(g["construction_ctx"].x))
    assert np.max(np.abs(np.asarray(y) - y0)) > 1e-3
    assert not jax.config.jax_enable_x64  # float64 stayed inside the with-block


def test_section3_corruption_sweep(tutorial):
    g, _ = tutorial
    sweep, seeds = g["sweep"], len(g["SWEEP_SEEDS"])
    assert seeds >= 2  # an interval over seeds needs two
    assert sweep["levels"] == list(DEFAULT_LEVELS[g["CORRUPTION"]])
    assert sweep["t"] == list(range(1, g["SWEEP_MODEL"].n))
    assert set(sweep["nmse"]) == {"transformer", "adam", "gd"}
    for name, per_level in sweep["nmse"].items():
        assert len(per_level) == len(sweep["levels"])
        for s in per_level:
            mean, low, high = (_finite(s[k]) for k in ("mean", "low", "high"))
            assert mean.shape == (len(sweep["t"]),) and np.all((mean >= 0) & (mean <= 2))
            assert np.all(low <= mean) and np.all(mean <= high)
            expected = ("seeds", seeds) if name == "transformer" else ("contexts", g["S"]["contexts"])
            assert (s["unit"], s["n"]) == expected
    # level 0 leaves the rewards untouched: the shown rewards at level 0 are the true ones
    assert np.array_equal(np.asarray(g["shown"])[:, 0], np.asarray(g["sweep_ctx"].r_true))
    assert isinstance(g["sweep_fig"], Figure)


def test_section4_loads_the_saved_run(tutorial):
    g, workdir = tutorial
    trained, loaded = g["trained"], g["loaded"]
    assert (workdir / "runs" / g["run_folder"] / "meta.json").is_file()
    assert loaded.finished and loaded.model_config == g["SWEEP_MODEL"] and loaded.train_config == g["SWEEP_TRAIN"]
    assert loaded.losses.shape == (len(g["SWEEP_SEEDS"]), g["SWEEP_TRAIN"].steps)
    _finite(loaded.losses)
    np.testing.assert_array_equal(loaded.losses, trained.losses)
    for a, b in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(trained.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the checkpoint is exact
    assert g["y_hat"].shape == (g["S"]["contexts"], g["SWEEP_MODEL"].d)
    assert np.all((_finite(g["loaded_nmse"]) >= 0) & (g["loaded_nmse"] <= 2))
    assert isinstance(g["run_fig"], Figure)


def test_it_writes_only_runs_and_its_figures(tutorial):
    _, workdir = tutorial
    assert {p.name for p in workdir.iterdir()} == {"runs", "results"}  # both ignored by git
    assert [p.name for p in (workdir / "results").iterdir()] == ["tutorial"]
    pngs = sorted(p.name for p in (workdir / "results" / "tutorial").iterdir())
    assert pngs == ["1_variant_vs_gd.png", "3_corruption_sweep.png", "4_loaded_run.png"]
    assert all((workdir / "results" / "tutorial" / p).stat().st_size > 1000 for p in pngs)

