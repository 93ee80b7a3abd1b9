"""The generated parts of README.md and docs/results.md, written from the committed result files.

Every number in either document sits between the markers ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->`` and is written here from the JSON under ``figures/``:
docs/results.md holds each experiment's tables and claims, the README two or three lines of
verdict per experiment. ``icalign readme`` rewrites both; ``icalign readme --check`` and the
test suite fail when a document and the JSON disagree. Prose outside the markers carries no
result numbers. The renderers live beside each experiment's figures (``markdown`` and
``verdict`` of its :mod:`icalign.viz` module); this module only reads the files and fills
the blocks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from icalign.io import read_json, write_text
from icalign.viz import (ablations, bench, gd, md, mechanism, necessity, paper, precision, reproduce, selfcorrect,
                         sweeps, tf, verify)

__all__ = ["DOCUMENTS", "render", "update", "check"]


def _r(root: Path, name: str) -> dict:
    return read_json(root / name)


def _sizes(root: Path, experiment: str, stem: str, sizes=("quick", "full")) -> list:
    return [_r(root, f"{experiment}/{size}/{stem}.json") for size in sizes]


def _step(root: Path) -> list:
    return [_r(root, f"bench/{n}.json") for n in ("published_step_cpu", "train_step_cpu", "train_step_h200")]


def _figure1(root: Path) -> str:
    names = ["bench/figure1_cpu.json", "bench/figure1_cpu8.json", "bench/figure1_h200.json"]
    # an accelerator run (bench figure1 --size full on an H200) joins the CPU lines once committed
    runs = [_r(root, n) for n in names if not n.endswith("h200.json") or (root / n).exists()]
    return bench.figure1(runs, _r(root, "bench/train_step_h200.json"))


def _verify(root: Path) -> list:
    return [_r(root, "verify/quick/verify.json"), _r(root, "verify/search/verify.json")]


_join = "\n\n".join

#: the results behind trained models, for the table of training protocols
_TRAINED = [("tf-vs-gd", "tf_vs_gd", ("quick", "full")), ("precision", "precision", ("quick",)),
            ("reward-noise", "reward_noise", ("quick", "full")), ("ablations", "ablations", ("quick", "full")),
            ("self-correction", "self_correction", ("quick",)), ("mechanism", "mechanism", ("quick",))]


def _protocols(root: Path) -> str:
    rows = [md.protocol_row(name, size, _r(root, f"{name}/{size}/{stem}.json"))
            for name, stem, sizes in _TRAINED for size in sizes]
    return md.table(["experiment", "size", "protocol", "learning rate", "steps (why it stopped)", "seeds"], rows)


#: docs/results.md: every experiment's tables and claims, and the benchmarks.
RESULTS: dict[str, Callable[[Path], str]] = {
    "protocols": _protocols,
    "paper-claims": paper.markdown,
    "gd-baseline": lambda root: gd.markdown(_r(root, "gd-baseline/quick/gd_baseline.json")),
    "gd-sweep-bench": lambda root: bench.gd_sweep(_r(root, "bench/gd_sweep_cpu.json"),
                                                  _r(root, "bench/gd_sweep_cpu2.json")),
    "tf-vs-gd": lambda root: _join(map(tf.markdown, _sizes(root, "tf-vs-gd", "tf_vs_gd"))),
    "train-step-bench": lambda root: bench.train_step(*_step(root)),
    "precision": lambda root: precision.markdown(_r(root, "precision/quick/precision.json")),
    "reward-noise": lambda root: _join(map(sweeps.markdown, _sizes(root, "reward-noise", "reward_noise"))),
    "ablations": lambda root: _join(map(ablations.markdown, _sizes(root, "ablations", "ablations", ("full", "quick")))),
    "figure1-bench": _figure1,
    "reproduce": lambda root: reproduce.markdown(_r(root, "reproduce.json")),
    "verify": lambda root: verify.markdown(*_verify(root)),
    "necessity": lambda root: necessity.markdown(_r(root, "necessity/quick/necessity.json")),
    "self-correction": lambda root: selfcorrect.markdown(_r(root, "self-correction/quick/self_correction.json")),
    "mechanism": lambda root: mechanism.markdown(_r(root, "mechanism/quick/mechanism.json")),
}

#: README.md: two or three lines of verdict per experiment.
VERDICTS: dict[str, Callable[[Path], str]] = {
    "verify": lambda root: verify.verdict(*_verify(root)),
    "gd-baseline": lambda root: gd.verdict(_r(root, "gd-baseline/quick/gd_baseline.json")),
    "tf-vs-gd": lambda root: tf.verdict(*_sizes(root, "tf-vs-gd", "tf_vs_gd")),
    "reward-noise": lambda root: "\n".join(map(sweeps.verdict, _sizes(root, "reward-noise", "reward_noise"))),
    "ablations": lambda root: "\n".join(map(ablations.verdict,
                                             _sizes(root, "ablations", "ablations", ("full", "quick")))),
    "necessity": lambda root: necessity.verdict(_r(root, "necessity/quick/necessity.json")),
    "self-correction": lambda root: selfcorrect.verdict(_r(root, "self-correction/quick/self_correction.json")),
    "mechanism": lambda root: mechanism.verdict(_r(root, "mechanism/quick/mechanism.json")),
    "precision": lambda root: precision.verdict(_r(root, "precision/quick/precision.json")),
    "train-step": lambda root: bench.verdict(*_step(root)),
}

#: Each generated document (path under the repository root) and its blocks.
DOCUMENTS: dict[str, dict[str, Callable[[Path], str]]] = {"README.md": VERDICTS, "docs/results.md": RESULTS}
_BLOCK = re.compile(r"(<!-- generated:([\w-]+) -->)(.*?)(<!-- /generated:\2 -->)", re.S)


def render(root: Path = Path("figures")) -> dict[str, dict[str, str]]:
    """{document: {block: text}} from the result files under ``root``."""
    return {doc: {name: fn(Path(root)) for name, fn in blocks.items()} for doc, blocks in DOCUMENTS.items()}


def _filled(path: Path, text: str, blocks: dict[str, str]) -> str:
    found = [m.group(2) for m in _BLOCK.finditer(text)]
    missing, unknown = set(blocks) - set(found), set(found) - set(blocks)
    if missing or unknown:
        raise ValueError(f"{path}: " + "; ".join(
            ([f"no generated block for {sorted(missing)}; add <!-- generated:NAME --> ... <!-- /generated:NAME --> "
              "markers"] if missing else [])
            + ([f"unknown generated blocks {sorted(unknown)}; known: {sorted(blocks)}"] if unknown else [])))
    return _BLOCK.sub(lambda m: m.group(1) + "\n" + blocks[m.group(2)] + "\n" + m.group(4), text)


def update(repo: Path = Path("."), root: Path = Path("figures"), write: bool = True,
           rendered: dict | None = None) -> dict[str, str]:
    """{document: its text with every generated block rewritten from the result files}
    (written back where it changed, unless ``write`` is False). ``rendered``: what
    :func:`render` gave for ``root``, to reuse it."""
    out = {}
    for doc, blocks in (rendered or render(root)).items():
        path = Path(repo) / doc
        text = path.read_text()
        out[doc] = _filled(path, text, blocks)
        if write and out[doc] != text:
            write_text(path, out[doc])
    return out


def check(repo: Path = Path("."), root: Path = Path("figures"), rendered: dict | None = None) -> list[str]:
    """``document:block`` of every generated block whose text differs from what the result
    files give (a missing or unknown block is a ValueError). ``rendered`` as for :func:`update`."""
    stale = []
    for doc, blocks in (rendered or render(root)).items():
        path = Path(repo) / doc
        text = path.read_text()
        _filled(path, text, blocks)
        stale += [f"{doc}:{m.group(2)}" for m in _BLOCK.finditer(text)
                  if m.group(3) != "\n" + blocks[m.group(2)] + "\n"]
    return stale
