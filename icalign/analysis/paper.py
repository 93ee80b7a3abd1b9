"""Wang et al.'s claims (paper A) against every committed source that bears on them.

Rows (``ROWS``): the four architecture claims of docs/theory.md section 3.1 (softmax attention
ranks; multi-head attention discriminates tokens; the FFN transforms the selected token; depth
handles many responses) and the one reward-quality statement of section 4 ("What paper A
states about reward quality": corrupting the shown rewards, `replace` at p = 1 against p = 0,
raises the clean-trained transformer's error at the largest t).

Sources (``SOURCES``): the quick and full ablations, the necessity study, the quick and full
reward-noise sweeps. Each source's comparisons are its claim engine's, recomputed from its
result dict as the results document shows them (``sweep_claims.ablation_claims`` /
``noise_claims``; ``necessity_claims.claims``): a full-size file's stored list predates the
engine. Each comparison gets one **status**:

* ``supported``: the engine's "supported", the necessity study's "needed";
* ``contradicted``: "contradicted", "not needed";
* ``not resolved``: the interval contains 0 / neither rank test is significant;
* ``withheld``: "not trained", a model in the comparison failed training (its health gate, or a
  diverged seed in the necessity study): no evidence either way.

A source with no comparison for a claim, or whose result file is missing, is **absent**.
Training-health labels that do not withhold a verdict (under-converged, unknown) do not change
the status (the claim engine's rule); they are shown beside it.

THE RULE, one function of the statuses alone (:func:`rule`), the same for every row: over the
comparisons that **count**,

* **not reproduced** when at least one is contradicted (whatever else supports it: the sources
  disagree). A contradicted status always comes from trained models, since a failed model
  withholds the verdict;
* **reproduced** when none is contradicted and at least one is supported;
* **not tested** otherwise: every comparison is not resolved or withheld, or none exists.

A comparison does not count when it changes more than the component the claim is about: the
heads-at-fixed-head-dimension family also widens the attention with the head count (docs/theory.md
section 4, known defects of the published grid), so its one-head comparison is shown and marked,
never counted. A row is only as strong as its counted comparisons: "reproduced" by one source
while others did not decide says so in its sentence, and no source is read beyond its own
population (each comparison keeps the interval and population its engine wrote).

Unknown claim wordings are errors, not silently absent rows: every comparison of a source is
either mapped to a row or explicitly listed as not a claim of paper A.
"""

from __future__ import annotations

from typing import Optional, Sequence

from icalign.analysis import necessity_claims as NC
from icalign.analysis import sweep_claims as SC

__all__ = ["ROWS", "SOURCES", "STATUSES", "RESULTS", "source_claims", "classify", "status", "rule", "evidence",
           "sentence", "rows"]

_ARCH = ("ablations", "necessity")
#: (key, the claim of paper A as tested, where docs/theory.md states it, the source kinds that can bear on it)
ROWS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("softmax", "softmax attention ranks (softmax attention is needed to rank the responses)", "section 3.1", _ARCH),
    ("heads", "multi-head attention discriminates tokens (one head is worse at the same depth)", "section 3.1", _ARCH),
    ("ffn", "the FFN transforms the selected token (no FFN is worse)", "section 3.1", _ARCH),
    ("depth", "depth handles many responses (fewer blocks are worse)", "section 3.1", _ARCH),
    ("reward", "accurate rewards are needed: corrupted shown rewards (replace, p = 1 vs 0) raise the clean-trained "
               "transformer's error", "section 4, reward quality", ("reward-noise",)),
)

#: source name -> its kind (which result it is and how its comparisons are read)
SOURCES: dict[str, str] = {"quick ablations": "ablations", "full ablations": "ablations",
                           "necessity (quick)": "necessity", "reward noise (quick)": "reward-noise",
                           "reward noise (full)": "reward-noise"}

STATUSES = ("supported", "contradicted", "not resolved", "withheld")
RESULTS = ("reproduced", "not reproduced", "not tested")

_ENGINE = {"supported": "supported", "contradicted": "contradicted", "not resolved": "not resolved",
           "not trained": "withheld"}
_NECESSITY = {"needed": "supported", "not needed": "contradicted", "not resolved": "not resolved",
              "not trained": "withheld"}

# Ablation claims are "<theory claim>: <comparison>"; the part before the colon names the row.
_ABLATION = {"softmax attention does the ranking": "softmax", "multi-head attention discriminates tokens": "heads",
             "the FFN transforms the selected token": "ffn", "depth handles many responses": "depth"}
_ABLATION_OTHER = ("(not a claim of the theory)",)
_NECESSITY_ROW = {"linear attention": "softmax", "one head": "heads", "no FFN": "ffn", "half the blocks": "depth"}
# Reward-noise claims by their opening words; None: icalign's own question, not paper A's (section 4).
_NOISE = (("corrupted rewards (replace, p = 1 vs 0) degrade the clean-trained transformer", "reward"),
          ("corrupted rewards (replace, p = 1 vs 0) degrade GD", None),
          ("on clean rewards the clean-trained transformer beats GD", None),
          ("under ", None), ("at p = ", None))
_CONFOUNDED = {"heads at fixed head dimension": "also widens the attention (heads x fixed head dimension)"}


def _check_kind(kind: str) -> None:
    kinds = sorted(set(SOURCES.values()))
    if kind not in kinds:
        raise ValueError(f"source kind must be one of {kinds}, got {kind!r}")


def source_claims(kind: str, res: dict) -> list[dict]:
    """The comparisons of one source, from its result dict, as its claim engine makes them."""
    _check_kind(kind)
    if kind == "ablations":
        return SC.ablation_claims(res)
    if kind == "reward-noise":
        return SC.noise_claims(res)
    return NC.claims(res["results"])


def classify(kind: str, claim: dict) -> tuple[Optional[str], str]:
    """(row key or None when the comparison is not a claim of paper A, why it does not count
    or "" when it counts). An unknown wording is a ValueError naming it."""
    _check_kind(kind)
    text = claim["claim"]
    if kind == "necessity":
        if claim["variant"] not in _NECESSITY_ROW:
            raise ValueError(f"necessity comparison of an unknown variant {claim['variant']!r}; known: "
                             f"{sorted(_NECESSITY_ROW)}")
        return _NECESSITY_ROW[claim["variant"]], ""
    if kind == "ablations":
        if text.startswith(_ABLATION_OTHER):
            return None, ""
        head = text.split(":")[0]
        if head not in _ABLATION:
            raise ValueError(f"ablation claim {text!r} names no known claim of paper A; known: {sorted(_ABLATION)}")
        why = next((w for k, w in _CONFOUNDED.items() if k in text), "")
        return _ABLATION[head], why
    for opening, row in _NOISE:
        if text.startswith(opening):
            return row, ""
    raise ValueError(f"reward-noise claim {text!r} is neither paper A's nor a known icalign question; known openings: "
                     f"{[o for o, _ in _NOISE]}")


def status(kind: str, claim: dict) -> str:
    """The comparison's status (module docstring) from its source's verdict word."""
    table = _NECESSITY if kind == "necessity" else _ENGINE
    if claim["verdict"] not in table:
        raise ValueError(f"{kind} verdict must be one of {sorted(table)}, got {claim['verdict']!r}")
    return table[claim["verdict"]]


def rule(statuses: Sequence[str]) -> str:
    """The row's result from the statuses of its counted comparisons (module docstring)."""
    bad = [s for s in statuses if s not in STATUSES]
    if bad:
        raise ValueError(f"statuses must be among {STATUSES}, got {bad}")
    if "contradicted" in statuses:
        return "not reproduced"
    if "supported" in statuses:
        return "reproduced"
    return "not tested"


def evidence(results: dict[str, Optional[dict]]) -> dict[str, dict[str, Optional[list[dict]]]]:
    """{row key: {source: its entries, or None when its result is absent}}, over the sources
    whose kind can bear on the row. ``results``: {source
    name (``SOURCES``): result dict or None}. Each entry: {"claim": the comparison's record,
    "kind", "status", "counts", "why"} ("why": the reason it does not count)."""
    unknown = set(results) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; known: {list(SOURCES)}")
    out = {key: {} for key, *_ in ROWS}
    for source, kind in SOURCES.items():
        res = results.get(source)
        for key, _, _, kinds in ROWS:
            if kind in kinds:  # a source that cannot bear on a row is not listed in it, not even as absent
                out[key][source] = None if res is None else []
        if res is None:
            continue
        for c in source_claims(kind, res):
            key, why = classify(kind, c)
            if key is not None:
                out[key][source].append({"claim": c, "kind": kind, "status": status(kind, c), "counts": not why,
                                         "why": why})
    return out


def _list(names: Sequence[str]) -> str:
    names = list(dict.fromkeys(names))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def sentence(result: str, by_source: dict[str, Optional[list[dict]]]) -> str:
    """One plain sentence: the result, which sources decided it and how the rest stand."""
    counted = [(s, e) for s, es in by_source.items() for e in es or [] if e["counts"]]
    of = lambda st: [s for s, e in counted if e["status"] == st]
    n = lambda st: len(of(st))
    parts = []
    if of("contradicted"):
        parts.append(f"contradicted by {_list(of('contradicted'))}")
    if of("supported"):
        parts.append(f"supported by {_list(of('supported'))} ({n('supported')} of {len(counted)} comparisons)")
    undecided = [f"{n(st)} {'withheld (a model failed training)' if st == 'withheld' else st}"
                 for st in ("not resolved", "withheld") if n(st)]
    if undecided:
        parts.append(("the other comparisons: " if parts else "comparisons: ") + ", ".join(undecided))
    if result == "reproduced":
        parts.append("no source contradicts it")
    shown = sum(1 for es in by_source.values() for e in es or [] if not e["counts"])
    if shown:
        parts.append(f"{shown} confounded comparison{'s' if shown > 1 else ''} shown, not counted")
    absent = [s for s, es in by_source.items() if not es]
    if absent:
        parts.append(f"nothing from {_list(absent)}")
    return f"{result[0].upper()}{result[1:]}: " + "; ".join(parts) + "."


def rows(results: dict[str, Optional[dict]]) -> list[dict]:
    """One record per claim of paper A: {"key", "claim", "where", "evidence": {source: entries
    or None}, "result", "sentence"}."""
    ev = evidence(results)
    out = []
    for key, text, where, _ in ROWS:
        counted = [e["status"] for es in ev[key].values() for e in es or [] if e["counts"]]
        result = rule(counted)
        out.append({"key": key, "claim": text, "where": f"docs/theory.md {where}", "evidence": ev[key],
                    "result": result, "sentence": sentence(result, ev[key])})
    return out

