"""Markdown pieces shared by the result renderers (each experiment's ``markdown`` and
``verdict`` live beside its figures, in its own module of :mod:`icalign.viz`)."""

from __future__ import annotations

import re

from icalign.analysis import claims as CL
from icalign.analysis import health as H

__all__ = ["machine", "num", "table", "ci", "loaded", "health_text", "health_note", "find", "brief", "label",
           "protocol_row", "training_note", "size_note"]


def num(x, nd=3) -> str:
    """A stored number with ``nd`` decimals; None and the string "nan" (JSON's stand-in) read "nan"."""
    return "nan" if x is None or (isinstance(x, str) and x.lower() == "nan") else f"{float(x):.{nd}f}"


def machine(res: dict) -> str:
    """The machine a result file was made on, in a few words (its ``hardware`` record)."""
    hw = res.get("hardware") or {}
    if hw.get("backend") == "cpu":
        return f"{hw.get('cpu_count')}-core CPU (jax {hw.get('jax')})"
    return f"{hw.get('device')} (jax {hw.get('jax')})"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def ci(s: dict, i: int | None = None) -> str:
    """mean [low, high] of a summary (at t index ``i``, or a scalar summary)."""
    pick = (lambda k: s[k]) if i is None else (lambda k: s[k][i])
    return f"{num(pick('mean'))} [{num(pick('low'))}, {num(pick('high'))}]"


def loaded(res: dict) -> str:
    """A note for a result whose training was loaded from its run folder (its time is no training time)."""
    return "; training loaded from its finished run folder, not timed" if res.get("train_loaded") else ""


def health_text(health: dict | None) -> str:
    """"training health: **status** (reason)", and the model's normalised MSE at the largest t
    beside both trivial predictors' on the same contexts when the gate stored them."""
    g = H.legacy(health)
    ref = g.get("references")
    refs = "" if not ref else (f"; normalised MSE at t = {ref['t']}: model {num(ref['model'])}, "
                               + ", ".join(f"{p} {num(ref[p])}" for p in H.PREDICTORS))
    return f"training health: **{g['status']}**" + (f" ({g['reason']})" if g.get("reason") else "") + refs


def health_note(health: dict, label) -> str:
    """One paragraph: every trained model that is not "converged", with its label and reason
    (only "failed" withholds a verdict)."""
    bad = {k: H.legacy(g) for k, g in health.items() if H.legacy(g)["status"] != "converged"}
    if not bad:
        return ("Training health: every trained model converged (its clean objective below the reward-blind "
                "reference's, its error rising when the rewards are shuffled, its training loss on a plateau).")
    return "Training health: " + "; ".join(f"{label(k)}: {health_text(g)[len('training health: '):]}"
                                           for k, g in bad.items()) + "."


def find(claims: list, *words: str) -> dict:
    """The first claim whose text holds every one of ``words`` (a README verdict names claims
    by their text; a renamed claim is a clear error, not a silently missing line)."""
    for c in claims:
        if all(w in c["claim"] for w in words):
            return c
    raise ValueError(f"no claim holds {words!r}; claims: {[c['claim'] for c in claims]}")


def brief(c: dict) -> str:
    """A claim's verdict and numbers in a few words: **verdict** (effect [interval], units)."""
    return f"**{c['verdict']}** ({CL.short(c)})"


def label(res: dict) -> str:
    """The result's size or run name (quick, full, ...); files written before results stored
    their name carry it as the first word of ``size``."""
    return res.get("name") or (res.get("size") or "in memory").split()[0]


def _seed_count(res: dict, cfg: dict) -> str:
    seeds = res.get("seeds")
    return str(len(seeds) if isinstance(seeds, list) else cfg.get("seeds", 1))


def protocol_row(name: str, size: str, res: dict) -> list:
    """[experiment, size, protocol, learning rate, steps, seeds] of a result: its stored
    ``protocol`` records (one per trained model), or, for files written before they were
    stored, the published protocol read from its stored training config."""
    cfg = res.get("config") or {}
    train = cfg.get("train") or res.get("train_config") or {}
    records = res.get("protocol") or []
    fair = [r for r in records if r.get("protocol") == "fair"]
    if not fair:
        lr = train.get("lr", "?")
        stopped = sorted({r.get("stopped", "budget").split(":")[0] for r in records}) or ["budget"]
        steps = f"{train.get('steps', '?')} ({', '.join(stopped)})"
        kind = sorted({r.get("protocol", "published") for r in records}) or ["published"]
        return [name, size, ", ".join(kind), f"{lr:g}" if isinstance(lr, (int, float)) else lr, steps,
                _seed_count(res, cfg)]
    chosen = sorted({f"{lr:g}" for r in fair for lr in r["chosen"].values() if lr is not None})
    grid = ",".join(f"{v:g}" for v in fair[0]["grid"])
    done = sorted({r["steps_done"] for r in fair})
    stopped = sorted({r["stopped"].split(":")[0] for r in fair})
    return [name, size, f"fair (grid {grid}, chosen on validation contexts)", ", ".join(chosen) + " chosen",
            f"{'-'.join(map(str, [done[0], done[-1]] if len(done) > 1 else done))} of {fair[0]['budget']} "
            f"({', '.join(stopped)})", _seed_count(res, cfg)]


def training_note(res: dict, tr: dict | None = None) -> str:
    """"400 steps, lr 0.003" (the published protocol, from the stored training config ``tr``), or
    what the fair protocol did: the grid, the rates chosen and the steps trained of the budget."""
    fair = [r for r in res.get("protocol") or [] if isinstance(r, dict) and r.get("protocol") == "fair"]
    if not fair:
        tr = tr if tr is not None else (res.get("config") or {}).get("train") or res.get("train_config") or {}
        return f"{tr.get('steps', '?')} steps, lr {tr.get('lr', float('nan')):g}"
    chosen = sorted({lr for r in fair for lr in r["chosen"].values() if lr is not None})
    done = sorted({r["steps_done"] for r in fair})
    steps = f"{done[0]}" if len(done) == 1 else f"{done[0]}-{done[-1]}"
    return (f"{steps} of {fair[0]['budget']} steps, lr {'/'.join(f'{x:g}' for x in chosen)} chosen from "
            f"{','.join(f'{x:g}' for x in fair[0]['grid'])} on validation contexts")


def size_note(res: dict) -> str:
    """A sweep's stored ``size_note`` with its "N steps, lr X" read from the protocol records."""
    note = res["size_note"]
    if not any(isinstance(r, dict) and r.get("protocol") == "fair" for r in res.get("protocol") or []):
        return note
    return re.sub(r"\d+ steps, lr \S+$", lambda _: training_note(res), note)
