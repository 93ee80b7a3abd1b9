"""The house rules that keep the package easy to change: the public module names notebooks
import, one definition of each shared concept, no backend switch on import, small modules."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "icalign"


def test_public_modules_keep_their_short_names():
    import icalign
    import icalign.construct
    import icalign.gd
    import icalign.losses
    import icalign.model
    import icalign.tasks
    import icalign.train
    from icalign import construct, gd, losses, model, tasks, train
    from icalign.core import losses as core_losses, tasks as core_tasks
    from icalign.theory import construct as th_construct, gd as th_gd

    assert icalign.tasks is tasks is core_tasks and icalign.losses is losses is core_losses
    assert icalign.gd is gd is th_gd and icalign.construct is construct is th_construct
    assert icalign.train is train and train.train and train.TrainConfig and train.load_run
    assert model.apply and model.ModelConfig and tasks.sample_contexts and gd.fit_linear


def test_importing_icalign_never_changes_the_matplotlib_backend():
    """In a fresh process with a non-default backend: import every icalign module."""
    code = (
        "import matplotlib, pkgutil, importlib\n"
        "matplotlib.use('svg')\n"
        "import icalign\n"
        "for m in pkgutil.walk_packages(icalign.__path__, 'icalign.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(matplotlib.get_backend())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    assert out.stdout.strip() == "svg"


def _defs(name: str) -> list[str]:
    """Modules of icalign that define a top-level function or class ``name``."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                found.append(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("name, where", [
    ("fit", "icalign/training/loop.py"),            # the training loop
    ("apply", "icalign/model/forward.py"),          # the forward pass
    ("write_bytes", "icalign/io.py"),               # the atomic write
    ("band", "icalign/viz/style.py"),               # the band helper
    ("unit", "icalign/core/metrics.py"),            # the unit-vector helper
    ("eval_keys", "icalign/core/keys.py"),          # the evaluation key stream
    ("fit_contexts", "icalign/theory/gd.py"),       # the vmapped GD fits
])
def test_one_definition_of_each_shared_concept(name, where):
    assert _defs(name) == [where]


def _writes(tree) -> list[str]:
    """Calls that write a file other than through icalign.io: open(), Path.write_text/bytes,
    savefig, os.replace, tempfile.mkstemp (any object but ``io``)."""
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "open":
            bad.append("open()")
        if isinstance(f, ast.Attribute) and f.attr in ("write_text", "write_bytes", "savefig", "mkstemp", "replace",
                                                        "open"):
            owner = f.value.id if isinstance(f.value, ast.Name) else None
            if owner == "io" or (f.attr == "replace" and owner != "os"):
                continue  # icalign.io itself, or dataclass/str .replace
            bad.append(f"{owner or '...'}.{f.attr}()")
    return bad


def test_only_the_writer_writes_and_only_the_model_uses_its_internals():
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        text = path.read_text()
        if rel != "icalign/io.py":
            assert _writes(ast.parse(text)) == [], rel
        if not rel.startswith("icalign/model/"):  # no private name of the model package
            assert not re.search(r"\b(?:model|M|M_)\._[a-z]|from icalign\.model[.\w]* import _", text), rel


def test_modules_stay_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 360, {k: v for k, v in sizes.items() if v > 360}
    experiments = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "experiments").glob("*.py")}
    assert max(experiments.values()) <= 130, experiments


def test_pyproject_ships_every_package():
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found | {"icalign.experiments"} == declared
