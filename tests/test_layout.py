"""The house rules that keep the package easy to change: the public module names notebooks
import, one definition of each shared concept, no backend switch on import, small modules."""

from __future__ import annotations

import ast
import json
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


# The import layers, lowest first: a module may import its own layer and the layers below it,
# never one above. Data moves key -> core -> model | theory -> training -> analysis -> io -> viz;
# as code, io (the one writer) and config (overrides) import nothing of icalign, so every layer
# may call them. selfcorrect builds on training (its concept transformer trains through the one
# loop) and is read by analysis. comparison trains the variants of any experiment (it reads their
# configs), so it sits beside the experiments; its verdicts are analysis'. The package root
# (icalign/__init__.py) is the public facade that names the notebook modules, and is not a layer.
LAYERS = (
    ("icalign.core", "icalign.io", "icalign.config"),
    ("icalign.model",),
    ("icalign.theory",),
    ("icalign.training",),
    ("icalign.selfcorrect",),
    ("icalign.analysis",),
    ("icalign.viz",),
    ("icalign.experiment",),
    ("icalign.experiments", "icalign.benchmarks", "icalign.comparison"),
    ("icalign.cli", "icalign.cli_compare"),
)


def _layer(module: str):
    """Index in LAYERS of the longest package prefix of ``module`` (None: not in a layer)."""
    hits = [(len(p), i) for i, names in enumerate(LAYERS) for p in names if module == p or module.startswith(p + ".")]
    return max(hits)[1] if hits else None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts = (["icalign"] + parts) if parts[0] == "experiments" else parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree) -> list[str]:
    """Every icalign module a file imports, at the top or inside a function."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("icalign")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("icalign"):
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def upward_imports(files) -> list[str]:
    bad = []
    for path in files:
        me = _module_name(path)
        mine = _layer(me)
        if me == "icalign" or mine is None:
            continue
        for target in _imported(ast.parse(path.read_text())):
            theirs = _layer(target)
            if theirs is not None and theirs > mine:
                bad.append(f"{me} imports {target} (layer {LAYERS[theirs][0]} is above {LAYERS[mine][0]})")
    return bad


def test_no_module_imports_a_layer_above_its_own():
    files = list(PACKAGE.rglob("*.py")) + list((ROOT / "experiments").glob("*.py"))
    assert len(files) > 80 and upward_imports(files) == []
    # the rule bites: a core module that imported the training loop would be named
    probe = ast.parse("from icalign.training import fit")
    assert _layer("icalign.core.tasks") < _layer("icalign.training") and _imported(probe) == ["icalign.training.fit"]


# One interpreter, with a non-default matplotlib backend. Before each module every icalign module
# is dropped from sys.modules and the package root replaced by a bare package: each module is then
# imported first, as a notebook that imports only it would (the root's own import order cannot
# hide a cycle between two modules). At the end the backend must be unchanged.
_IMPORT_EACH = """
import importlib, json, pkgutil, sys, types
import matplotlib
matplotlib.use("svg")
import icalign, icalign.experiments
root = icalign.__path__[0]
names = sorted(m.name for m in pkgutil.walk_packages(icalign.__path__, "icalign."))
names += sorted("icalign.experiments." + m.name for m in pkgutil.iter_modules(icalign.experiments.__path__))
failed = {}
for name in names:
    for k in [k for k in sys.modules if k == "icalign" or k.startswith("icalign.")]:
        del sys.modules[k]
    sys.modules["icalign"] = bare = types.ModuleType("icalign")
    bare.__path__ = [root]
    try:
        importlib.import_module(name)
    except Exception as err:
        failed[name] = repr(err)
print(json.dumps({"modules": len(names), "failed": failed, "backend": matplotlib.get_backend()}))
"""

@pytest.fixture(scope="module")
def imported_each():
    out = subprocess.run([sys.executable, "-c", _IMPORT_EACH], capture_output=True, text=True, check=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_module_imports_on_its_own(imported_each):
    assert imported_each["modules"] > 80
    assert imported_each["failed"] == {}, imported_each["failed"]


def test_importing_icalign_never_changes_the_matplotlib_backend(imported_each):
    assert imported_each["backend"] == "svg"


def test_no_issue_numbers_in_code_output_or_documents():
    """Code, its output and the docs cite docs/theory.md, never the tracker's numbers."""
    pattern = re.compile(r"\bissues? ?#?\d|\bissue\d", re.IGNORECASE)
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for folder in ("icalign", "experiments", "docs", "tests")
             for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".toml", ".txt")
             for m in pattern.finditer(p.read_text())]
    assert found == []
