"""`icalign bench published-step`: it refuses, with the flag named, what it cannot time, before
importing anything heavy. (Timing the published code itself needs torch and a checkout of
the published repository, neither of which CI has.)"""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from icalign.benchmarks import published_step


def _args(*argv):
    p = argparse.ArgumentParser()
    published_step.add_arguments(p)
    return p.parse_args(list(argv))


def test_refuses_a_folder_without_the_published_code(tmp_path):
    (tmp_path / "synthetic_experiment").mkdir()
    (tmp_path / "synthetic_experiment" / "models.py").write_text("")
    with pytest.raises(SystemExit, match=r"--code .*no synthetic_experiment/tasks.py, samplers.py there"):
        published_step.run(_args("--code", str(tmp_path)))


def test_names_the_missing_packages(tmp_path, monkeypatch):
    src = tmp_path / "synthetic_experiment"
    src.mkdir()
    for f in ("models.py", "tasks.py", "samplers.py"):
        (src / f).write_text("")
    # as if only torch and scikit-learn were missing (find_spec is all the check consults)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("torch", "sklearn") else object())
    with pytest.raises(SystemExit, match=r"needs torch, sklearn .*pip install torch scikit-learn"):
        published_step.run(_args("--code", str(tmp_path)))
    with pytest.raises(SystemExit, match="--steps and --batch must be >= 1"):
        published_step.run(_args("--code", str(tmp_path), "--steps", "0"))
