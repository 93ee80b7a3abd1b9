"""Verdicts between variants of one experiment's model, on shared evaluation contexts: the
judging half of ``icalign.compare`` (training and evaluating each variant is
:mod:`icalign.comparison`; the command is ``icalign compare``, :mod:`icalign.cli_compare`).

A variant is a config of one experiment (its trained transformers, one per seed) and its
values are every seed's normalised MSE on every evaluation context at the largest t, clean
rewards (docs/theory.md section 4). Two variants are comparable only on the same contexts
with the same seeds, so that the claim engine can pair them context by context and seed by
seed (:mod:`icalign.analysis.claims`, "seeds x contexts"). What fixes the contexts and seeds is
the **context identity** of a config (:func:`identity`): the experiment (its evaluation key
stream), ``seed``, ``seeds``, ``eval.contexts``, ``model.d``, ``model.n``, ``train.queries``
and ``train.query_corr``. Variants or files whose identities differ are refused, naming the
field and both values: pairing values of different contexts would give a verdict about
nothing (a silent wrong answer).

Each variant other than the reference (the first, unless named) gets one claim, "V has lower
error than REF", the engine's paired verdict of REF minus V: **supported** (V is better),
**contradicted** (V is worse), **not resolved**, or **not trained** when either model failed
its training-health gate (:mod:`icalign.analysis.health`) or diverged.

:func:`compare_results` does the same for saved files: outputs of ``icalign compare`` and
tf-vs-gd results (``nmse.transformer.cells``), each file's identity computed from its stored
``config``; files stored before per-context cells are refused (their values cannot be paired).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from icalign.analysis import claims, health
from icalign.core import validate

__all__ = ["IDENTITY", "USED", "identity", "flat", "check_shared", "record", "judge", "compare_results", "report"]

#: The config keys that fix the evaluation contexts and the seeds (the context identity).
IDENTITY = ("seed", "seeds", "eval.contexts", "model.d", "model.n", "train.queries", "train.query_corr")
#: What a comparison uses of a config: the model and its training, the seeds and the number of
#: evaluation contexts. A difference elsewhere (e.g. eval.gd_steps) would not change a variant.
USED = ("model.", "train.", "seed", "seeds", "eval.contexts")
MAX_RESULT_BYTES = 256 * 2**20  #: the largest committed result is under 1 MiB


def flat(config: dict, prefix: str = "") -> dict:
    """A config dict (``icalign.config.to_dict``, or a result's ``config``) as {dotted key: value}."""
    out = {}
    for k, v in config.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def identity(experiment: str, config: dict) -> dict:
    """The context identity of ``config`` (a dict) of ``experiment`` (module docstring)."""
    f = flat(config)
    missing = [k for k in IDENTITY if k not in f]
    if missing:
        raise ValueError(f"a {experiment} config without {', '.join(missing)} has no context identity (only "
                         "experiments whose Config has model, train, eval, seed and seeds)")
    return {"experiment": experiment, **{k: f[k] for k in IDENTITY}}


def _used(key: str) -> bool:
    return any(key.startswith(u) if u.endswith(".") else key == u for u in USED)


def check_shared(experiment: str, configs: dict) -> None:
    """Refuse (ValueError) variants ({name: config dict}, the reference first) that do not share
    the context identity, or that differ from the reference in a key a comparison does not use
    (a variant that differed only there would be the reference's model under another name)."""
    names = list(configs)
    ref, base = names[0], flat(configs[names[0]])
    ref_id = identity(experiment, configs[ref])
    for name in names[1:]:
        other = identity(experiment, configs[name])
        for key in IDENTITY:
            if other[key] != ref_id[key]:
                raise ValueError(f"variants must share the evaluation contexts and seeds: {name!r} and {ref!r} "
                                 f"differ in {key}: {other[key]!r} vs {ref_id[key]!r}")
        unused = [k for k, v in flat(configs[name]).items() if v != base.get(k) and not _used(k)]
        if unused:
            raise ValueError(f"variant {name!r} differs from {ref!r} in {', '.join(unused)}, which a comparison "
                             "does not use (it trains model.* with train.* for every seed and evaluates on "
                             "eval.contexts clean contexts); set only model.*, train.* keys per variant")


def _cells(summary) -> Optional[np.ndarray]:
    """(seeds, contexts) values at the largest t from a stored summary (``stats.summarise`` with
    keep=True): ``cells`` for several seeds, ``last`` (one row) for one seed; None if absent."""
    if not isinstance(summary, dict):
        return None
    if summary.get("cells") is not None:
        return np.asarray(summary["cells"], float)
    if summary.get("unit") == "contexts" and summary.get("last") is not None:
        return np.asarray(summary["last"], float)[None, :]
    return None


def record(name: str, config: dict, nmse: Optional[dict], gate: dict, reference_config: dict, **extra) -> dict:
    """One variant of a comparison: its name, what differs from the reference's config
    ({dotted key: value}), its health, its normalised-MSE summary (None: no finite values)."""
    base = flat(reference_config)
    diff = {k: v for k, v in flat(config).items() if base.get(k) != v}
    return {"name": name, "overrides": diff, "config": config, "health": gate, "nmse": nmse, **extra}


def judge(variants: Sequence[dict], reference: str, t: int) -> list:
    """One claim per variant against ``reference`` ("V has lower error than REF": the engine's
    verdict of REF minus V on the variants' paired (seeds, contexts) values at t)."""
    by_name, arms = {v["name"]: v for v in variants}, {}
    for v in variants:
        cells = _cells(v["nmse"])
        arms[v["name"]] = None if cells is None else claims.cells(v["name"], cells, health=v["health"])
    out = []
    for v in variants:
        if v["name"] == reference:
            continue
        text = f"{v['name']} has lower error than {reference}"
        lost = [n for n in (reference, v["name"]) if arms[n] is None]
        if lost:  # a diverged model has no values: no evidence either way
            why = "; ".join(f"{n}: {by_name[n]['health']['reason']}" for n in lost)
            out.append(claims.unresolvable(text, reference, v["name"], "not trained", why, t=t))
        else:
            out.append(claims.claim(text, arms[reference], arms[v["name"]], t=t))
    return out


def _read(path) -> dict:
    import json

    res = validate.parse_input_file("icalign compare --results", path, MAX_RESULT_BYTES, json.loads, "JSON",
                                    json.JSONDecodeError)
    if not isinstance(res, dict) or not isinstance(res.get("config"), dict):
        raise ValueError(f"icalign compare --results {path}: not a result file (a JSON object with its 'config')")
    return res


def _variants_of(res: dict, label: str) -> list:
    """The variants a compare output or a tf-vs-gd result holds, with their stored health and summary."""
    if res.get("kind") == "compare":
        return [{**v, "name": f"{label}/{v['name']}", "health": health.legacy(v.get("health"))}
                for v in res["variants"]]
    protocol = res.get("protocol") or [None]  # the learning-rate selection of its one trained model, if any
    return [{"name": label, "config": res["config"], "health": health.stored(res),
             "nmse": (res.get("nmse") or {}).get("transformer"), "overrides": {}, "selection": protocol[0]}]


def compare_results(paths: Sequence, reference: Optional[str] = None) -> dict:
    """Compare the variants of two or more saved result files (module docstring) on their shared
    evaluation contexts; refused, naming the file, field and values, when they do not share them
    or when a file holds no per-context values. ``reference``: a variant's name ("FILE_STEM" for
    a tf-vs-gd result, "FILE_STEM/NAME" for a variant of a compare output); default the first."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ValueError(f"icalign compare --results: give two or more result files, got {len(paths)}")
    twice = [str(p) for i, p in enumerate(paths) if p.resolve() in [q.resolve() for q in paths[:i]]]
    if twice:
        raise ValueError(f"icalign compare --results: {twice[0]} is given twice (a file compared with itself)")
    files = [_read(p) for p in paths]
    ids = [identity(res.get("experiment", "?"), res["config"]) for res in files]
    for p, other in zip(paths[1:], ids[1:]):  # first: the reason a user must read when files differ
        for key, value in ids[0].items():
            if other[key] != value:
                raise ValueError(f"icalign compare --results: {p} and {paths[0]} were not evaluated on the same "
                                 f"contexts and seeds: {key} is {other[key]!r} vs {value!r}")
    stems = [p.stem for p in paths]
    variants = []
    for p, stem, res in zip(paths, stems, files):
        if res.get("kind") != "compare" and res.get("experiment") != "tf-vs-gd":
            raise ValueError(f"icalign compare --results {p}: experiment {res.get('experiment')!r} is neither an "
                             "`icalign compare` output nor a tf-vs-gd result (the files holding per-context values "
                             "of whole trained models)")
        try:
            found = [(v, _cells(v["nmse"]), (int(v["config"]["seeds"]), int(v["config"]["eval"]["contexts"])))
                     for v in _variants_of(res, stem if stems.count(stem) == 1 else str(p))]
        except (KeyError, TypeError, ValueError) as err:  # a hand-made or truncated file: name it, not a traceback
            raise ValueError(f"icalign compare --results {p}: a variant lacks a field or has one of the wrong "
                             f"shape ({err!r}); is it a complete compare output or tf-vs-gd result?") from None
        for v, cells, want in found:
            if identity(res.get("experiment", "?"), v["config"]) != ids[0]:
                raise ValueError(f"icalign compare --results {p}: variant {v['name']} has another context identity "
                                 "than its file's config")
            if cells is None and not (v["nmse"] is None and v["health"]["status"] == "failed"):  # diverged: no values
                raise ValueError(f"icalign compare --results {p}: {v['name']} stores no per-context values (nmse "
                                 "cells; files written before they were stored cannot be paired)")
            if cells is not None and cells.shape != want:
                raise ValueError(f"icalign compare --results {p}: {v['name']} cells have shape {cells.shape}, "
                                 f"expected (seeds, contexts) {want}")
            variants.append(v)
    ref_id = ids[0]
    names = [v["name"] for v in variants]
    dup = [n for n in names if names.count(n) > 1]
    if dup:  # claims and arms are keyed by name
        raise ValueError(f"icalign compare --results: two variants are both named {dup[0]!r}; rename a file")
    reference = names[0] if reference is None else reference
    if reference not in names:
        raise ValueError(f"reference {reference!r} is not one of the variants {names}")
    t = int(ref_id["model.n"]) - 1
    return {"experiment": ref_id["experiment"], "kind": "compare", "config": files[0]["config"],
            "files": [str(p) for p in paths], "reference": reference, "t": t, "contexts": ref_id,
            "variants": [{k: v.get(k) for k in ("name", "overrides", "config", "health", "nmse", "selection")}
                         for v in variants], "claims": judge(variants, reference, t)}


def report(res: dict) -> str:
    """The claims table and one health line per variant (with its learning-rate selection)."""
    lines = [claims.table(res["claims"]), "", "training health (the verdict is withheld for a failed model):"]
    for v in res["variants"]:
        h, sel = v["health"], v.get("selection")
        runs = (h.get("reason") or "").split("; run ")  # one line: the first run's reasons, the rest in the JSON
        why = runs[0] + (f"; and {len(runs) - 1} more run(s), in its health record" if len(runs) > 1 else "")
        chosen = f"; lr chosen {sel.get('chosen')} ({sel.get('stopped', '')})" if isinstance(sel, dict) else ""
        lines.append(f"  {v['name']}: {h['status']}" + (f" ({why})" if why else "") + chosen)
    return "\n".join(lines)
