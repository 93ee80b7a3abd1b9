"""The documents of ``icalign reproduce`` (:mod:`icalign.reproduce`): the wall-time table of
its record and DIR/results.md, one section per step, drawn from the files the steps wrote."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

from icalign import io
from icalign.viz.md import table

__all__ = ["markdown", "document", "duration", "machine"]


def duration(s: Optional[float]) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def machine(hw: dict) -> str:
    from icalign.viz.md import machine

    return machine({"hardware": hw})


def markdown(record: dict) -> str:
    """The wall-time table of a reproduce record: per step its status, wall time (from the call
    that ran it), the result's own timing, the estimate and the machine it was measured on."""
    rows = []
    for r in record["steps"]:
        e = r["estimate"]
        status = r["status"] + (f" (exit code {r['exit_code']})" if r.get("exit_code") else "") + (
            f" ({r['models_loaded']} model(s) loaded, not trained)" if r.get("models_loaded") else "")
        on = r.get("ran_hardware")
        wall = duration(r.get("seconds")) + (f" ({on})" if on and on != machine(record["hardware"]) else "")
        rows.append([r["step"], r["folder"], status, wall, duration(r.get("result_seconds")),
                     duration(e["seconds"]) if e["seconds"] is not None else "no estimate",
                     e["hardware"] or "-"])
    ran = [r["seconds"] for r in record["steps"] if r.get("seconds") is not None]
    # a step whose call time was lost (it finished outside `icalign reproduce`) still has its
    # result's own time: the total counts it, saying how many such steps it holds
    own = [r["result_seconds"] for r in record["steps"] if r.get("seconds") is None and r.get("result_seconds")]
    known = [r["estimate"]["seconds"] for r in record["steps"] if r["estimate"]["seconds"] is not None]
    total = (f"Total wall time {duration(sum(ran) + sum(own))} over {len(ran) + len(own)} timed step(s)"
             + (f" ({len(own)} of them by the result's own time, their call's time not recorded)" if own else ""))
    return (table(["step", "folder", "status", "wall time", "result's own time", "estimate", "estimate measured on"],
                  rows)
            + f"\n\n{total}; this machine: "
              f"{machine(record['hardware'])}; estimated {duration(sum(known))} over {len(known)} step(s). "
              "Wall time is that of the call that ran the step (a step skipped as done keeps it; '-' when it "
              "finished outside `icalign reproduce`); a result's own time excludes start-up and imports.")


def _section(row: dict, out: Path) -> str:
    """One experiment's section: the markdown its run wrote beside the JSON, else its
    :mod:`icalign.viz` renderer on the JSON; with its figures linked."""
    head = f"## {row['step']} ({row['folder']})\n\n"
    if row["status"] == "failed" or not row.get("result"):
        return head + f"Not reproduced: {row.get('error', row['status'])}."
    path = Path(row["result"])
    md_file = path.with_suffix(".md")
    if md_file.exists():
        body = md_file.read_text().strip()
    else:
        try:
            body = _RENDER[row["step"]](io.read_json(path))
        except Exception as err:  # the section says so; the result itself is intact
            body = f"(its markdown could not be rendered: {type(err).__name__}: {err}; see {path.name})"
    figs = sorted(p.relative_to(out) for p in path.parent.glob("*.png"))
    return head + body + ("\n\n" + "\n".join(f"![{p.stem}]({p})" for p in figs) if figs else "")


def _verify_md(res: dict) -> str:
    from icalign.theory import verify as V

    return "```\n" + V.table(res) + "\n```"


def _renderer(module: str):
    return lambda res: importlib.import_module(f"icalign.viz.{module}").markdown(res)


#: Each experiment's renderer of one result (used when its run wrote no NAME.md).
_RENDER = {"verify": _verify_md, "gd-baseline": _renderer("gd"), "tf-vs-gd": _renderer("tf"),
           "precision": _renderer("precision"), "reward-noise": _renderer("sweeps"),
           "ablations": _renderer("ablations"), "necessity": _renderer("necessity"),
           "self-correction": _renderer("selfcorrect"), "mechanism": _renderer("mechanism")}


def document(record: dict, out: Path, figures: Optional[Path] = None) -> str:
    """DIR/results.md: the wall-time table, then one section per step (``figures``: the
    repository's committed results folder, named in a note when DIR is it)."""
    out = Path(out)
    repo = out.resolve().parent
    committed = (figures is not None and out.resolve() == Path(figures).resolve()) or (out.name == "figures" and (repo / "docs" / "results.md").exists())
    return "\n\n".join(
        [f"# Reproduced results ({record['preset']})",
         f"Written by `{record['command']}` (started {record['started']}, finished {record['finished']}); "
         f"the record of every step is reproduce.json beside this file.",
         "## Wall time per step", markdown(record)]
        + [_section(r, out) for r in record["steps"]]
        + (["This folder is the repository's figures/: `icalign readme` regenerates README.md and docs/results.md "
            "from it."] if committed else [])) + "\n"
