"""`icalign reproduce`: every experiment, in a fixed order, into one output folder, resumable.

One job: plan, estimate, run in order, record. Each step is exactly ``icalign run NAME
--quick|--full --out DIR --run-root ROOT`` (the same parser and :func:`icalign.cli.resolve`),
its result in ``DIR/NAME/<preset>/`` as the hand command would put it.

* **Order** (:data:`ORDER`): verify, gd-baseline, tf-vs-gd, precision, reward-noise, ablations,
  necessity, self-correction, mechanism: the checks that need no training first (a broken
  install fails in minutes, not after an hour), then the trained experiments from the
  smallest to the largest question, so the early results are readable while the long ones run.
  A new experiment must be placed here (tests/test_reproduce.py refuses an experiment missing
  from the order).
* **Estimate**, printed before anything runs: each step's wall time as recorded under the
  repository's ``figures/``: by a committed ``reproduce.json`` (the whole command), else by the
  committed result itself (``seconds``: a number or a dict with ``total``; self-correction's
  ``wall_seconds``), labelled with the machine it was measured on. A timing of the same config
  is preferred; one of an older config of the same preset is used but flagged; none, or a
  result that records no wall time, reads "no estimate".
* **Resume**: a step whose result JSON is already in its folder is "done" and skipped (a
  finished result is never overwritten: ``icalign run`` refuses to, and so does this). A
  killed step resumes on the next call: its trained models are loaded from their run folders
  and the sweeps continue from their saved progress. A folder holding a result of another
  config (a preset changed since it ran) is refused before any step runs, never skipped.
* **Failures**: the steps are independent (each trains its own models), so a failed step is
  recorded with its error and the next one runs; the command then exits 1 and names every
  failed step. A step whose experiment reports a failure (``exit_code``; verify when a claim
  fails) counts as failed too, on a rerun as well.
* **Record**: ``DIR/reproduce.json``, written atomically after every step (and before the first,
  so a killed run shows where it stopped): per step its status, wall seconds, estimate,
  hardware, preset, command line and package identity. A step's wall time is kept from the call
  that ran it, so a resumed run still reports every step's time.
* **Results document**: ``DIR/results.md`` at the end (:mod:`icalign.viz.reproduce`): the wall-time table
  and one section per experiment: the markdown the run wrote beside its JSON (``NAME.md``),
  else the experiment's renderer of :mod:`icalign.viz` applied to the JSON.

Trained models go to ``runs/`` by default, as for ``icalign run`` (no checkpoints land inside
DIR, often the committed ``figures/``); each step's record counts the models it loaded rather
than trained (a load is no training time).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

from icalign import config as C
from icalign import io
from icalign.viz.reproduce import document, duration as _duration, machine as _machine, markdown

__all__ = ["ORDER", "Step", "plan", "estimate", "reproduce", "markdown", "document", "main"]

#: The fixed order of the steps (see the module docstring for why).
ORDER = ("verify", "gd-baseline", "tf-vs-gd", "precision", "reward-noise", "ablations", "necessity",
         "self-correction", "mechanism")

#: The repository's committed results (the estimates' source), when running from a checkout.
FIGURES = Path(__file__).resolve().parents[1] / "figures"


@dataclasses.dataclass(frozen=True)
class Step:
    """``icalign run name --<preset> *sets`` (``sets``: KEY=VALUE overrides; tests' tiny sizes)."""

    name: str
    sets: tuple[str, ...] = ()


def plan(preset: str) -> list[Step]:
    """The steps of ``icalign reproduce --<preset>``: every experiment, in :data:`ORDER`."""
    return [Step(name) for name in ORDER]


def _argv(step: Step, preset: str, out: Path, run_root: Path, progress: bool) -> list[str]:
    """The flags of ``icalign run step.name`` for this step (also its recorded command line)."""
    sets = [a for s in step.sets for a in ("--set", s)]
    return ([f"--{preset}", "--out", str(out), "--run-root", str(run_root), *sets]
            + ([] if progress else ["--no-progress"]))


def _resolve(step: Step, preset: str, out: Path, run_root: Path, progress: bool):
    """(module, config, result folder) of a step, validated by icalign run's own parser and resolve."""
    from icalign import cli

    mod, args = cli.parse_run(step.name, _argv(step, preset, out, run_root, progress))
    cfg, folder = cli.resolve(step.name, mod, args)
    return mod, cfg, folder


def _finished(folder: Path) -> Optional[Path]:
    """The finished result JSON in a result folder, or None: the one visible JSON there (progress
    and claims are hidden files), written atomically, so its presence means the run finished."""
    found = sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")) if folder.is_dir() else []
    if len(found) > 1:
        raise ValueError(f"{folder} holds several result files ({', '.join(p.name for p in found)}); "
                         "one result folder holds one result: move the others away")
    return found[0] if found else None


def _wall(res: dict) -> Optional[float]:
    """A result's own wall time (``seconds``, ``{"total": ...}`` or ``wall_seconds``), or None."""
    s = res.get("seconds", res.get("wall_seconds"))
    if isinstance(s, dict):
        s = s.get("total")
    return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else None


def _timings(name: str, figures: Path):
    """Every committed wall time of ``name`` under ``figures`` (config hash, run name, seconds or None,
    machine, source, whole command?): each result's own, and a committed reproduce.json's steps."""
    for path in sorted(Path(figures).glob(f"{name}/*/*.json")):
        try:
            res = io.read_json(path) if not path.name.startswith(".") else None
        except (OSError, ValueError):
            res = None
        if isinstance(res, dict):
            yield (res.get("config_hash"), path.parent.name, _wall(res), _machine(res.get("hardware") or {}),
                   str(path), False)
    record = _earlier(Path(figures) / "reproduce.json")
    for folder, row in record.items():
        if row.get("step") == name and isinstance(row.get("seconds"), (int, float)) and row.get("ran_hardware"):
            yield (row.get("config_hash"), Path(folder).name, float(row["seconds"]), row["ran_hardware"],
                   f"{Path(figures) / 'reproduce.json'} ({folder})", True)


def estimate(name: str, preset: str, cfg, figures: Path = FIGURES) -> dict:
    """The estimate of one step from the committed timings under ``figures``: {"seconds",
    "hardware" (its words), "source", "note"}; ``seconds`` None means no estimate, and ``note``
    says why. A timing of the very config is preferred (gd-baseline and verify have quick ==
    full), else one of the preset's own folder, flagged when its config differs or is not
    recorded; a whole reproduce step's time before a result's own (which omits start-up)."""
    want = C.short_hash(cfg)
    found = [t for t in _timings(name, figures) if t[0] == want or t[1] == preset]
    timed = [t for t in found if t[2] is not None]
    if not timed:
        why = (f"{', '.join(Path(t[4]).name for t in found)} records no wall time" if found
               else f"no committed {name} result of this config or preset under {figures}")
        return {"seconds": None, "hardware": None, "source": None, "note": f"no estimate: {why}"}
    h, _, seconds, machine, source, _ = min(timed, key=lambda t: (t[0] != want, t[1] != preset, not t[5], t[4]))
    note = "" if h == want else ("from a result of another config (the preset changed since)" if h
                                 else "from a result that does not record its config")
    return {"seconds": seconds, "hardware": machine, "source": source, "note": note}


def _walk(x, key: str) -> list:
    """Every value stored under ``key`` anywhere in a result (a model's ``train_loaded``)."""
    if isinstance(x, dict):
        return [v for k, v in x.items() if k == key] + [f for k, v in x.items() if k != key for f in _walk(v, key)]
    if isinstance(x, list):
        return [f for v in x for f in _walk(v, key)]
    return []


def _check_result(name: str, cfg, path: Path) -> dict:
    """A finished result read back, refused (ValueError) when it is not this step's: another
    experiment, or another config (its folder name is the preset's, but the preset changed)."""
    try:
        res = io.read_json(path)
    except ValueError as err:
        raise ValueError(f"{path} is not a readable result ({err}); move it away to rerun the step") from None
    exp = res.get("experiment") if isinstance(res, dict) else None
    if not isinstance(exp, str) or exp.replace("_", "-") != name:
        raise ValueError(f"{path} is not a {name} result (its 'experiment' is {exp!r})")
    if res.get("config_hash") not in (None, C.short_hash(cfg)):
        raise ValueError(f"{path} holds a result of another config (hash {res['config_hash']}; this preset is "
                         f"{C.short_hash(cfg)}): the preset changed since it ran. It is never overwritten: move it "
                         "away, or reproduce into another --out")
    return res


def _models(res: dict) -> dict:
    from icalign.experiment import run_folders

    loaded = _walk(res, "train_loaded")
    return {"run_folders": run_folders(res), "models_loaded": sum(bool(x) for x in loaded)}


def _print_plan(rows: list[dict], preset: str, out: Path, run_root: Path, figures: Path, here: str) -> None:
    print(f"icalign reproduce --{preset}: {len(rows)} steps into {out}/ (trained models under {run_root}/), "
          f"this machine: {here}")
    print(f"estimates: each step's wall time as recorded under {figures}/ (by its reproduce.json, else by the "
          "result itself)")
    todo = [r for r in rows if r["status"] != "done"]
    for i, r in enumerate(rows, 1):
        e = r["estimate"]
        what = ("done (skipped)" if r["status"] == "done" else
                f"~{_duration(e['seconds'])} (measured on: {e['hardware']})" if e["seconds"] is not None else e["note"])
        extra = f" ({e['note']})" if e["seconds"] is not None and e["note"] else ""
        print(f"  {i}. {r['step']:<16} {r['folder']:<28} {what}{extra}")
    known = [r["estimate"]["seconds"] for r in todo if r["estimate"]["seconds"] is not None]
    missing = [r["step"] for r in todo if r["estimate"]["seconds"] is None]
    machines = sorted({r["estimate"]["hardware"] for r in todo if r["estimate"]["hardware"]})
    print(f"  total: ~{_duration(sum(known))} for {len(known)} of {len(todo)} steps to run"
          + (f" (measured on: {'; '.join(machines)})" if machines else "")
          + (f"; no estimate for {', '.join(missing)}" if missing else ""))


def reproduce(steps: list[Step], preset: str = "quick", out: Path = Path("results"), run_root: Path = Path("runs"),
              *, dry_run: bool = False, progress: bool = True, figures: Path = FIGURES,
              argv: Optional[list[str]] = None) -> int:
    """Run ``steps`` (see the module docstring); returns the exit code: 0 when every step
    finished (now or earlier) and passed, 1 naming the failed steps. Every step is resolved
    and validated before the first one runs; ``dry_run`` prints the plan and writes nothing."""
    import jax

    from icalign import cli

    out, run_root = Path(out), Path(run_root)
    here = _machine(io.hardware())
    if preset == "full" and jax.default_backend() == "cpu":
        print("icalign reproduce: WARNING: --full is the published size, meant for a GPU; on this CPU it takes "
              "many hours (the estimates below were measured where marked)", file=sys.stderr)
    rows, mods = [], {}
    for step in steps:
        mod, cfg, folder = _resolve(step, preset, out, run_root, progress)
        mods[step.name] = (mod, cfg, folder)
        done = _finished(folder)
        if done is not None:  # a stale result is refused now, not after an hour of the other steps
            _check_result(step.name, cfg, done)
        rows.append({"step": step.name, "folder": str(folder.relative_to(out)), "preset": preset,
                     "status": "done" if done else "pending",
                     "argv": _argv(step, preset, out, run_root, progress),
                     "estimate": estimate(step.name, preset, cfg, figures)})
        rows[-1].update(command=shlex.join(["icalign", "run", step.name, *rows[-1]["argv"]]),
                        config_hash=C.short_hash(cfg))
    _print_plan(rows, preset, out, run_root, figures, here)
    if dry_run:
        return 0
    record_path = io.claim_output(out / "reproduce.json", force=True)  # one reproduce per DIR at a time
    try:
        earlier = _earlier(record_path)
        # steps of an earlier call outside this plan (an --only run) stay in the record and the document
        kept = [r for f, r in earlier.items() if f not in {row["folder"] for row in rows} and r.get("preset") == preset]
        place = {s.name: i for i, s in enumerate(plan(preset))}
        command = shlex.join(["icalign", "reproduce", *(argv if argv is not None else [f"--{preset}"])])
        record = {"command": command, "preset": preset, "out": str(out), "run_root": str(run_root),
                  "estimates_from": str(figures), "started": _now(), "finished": None, "hardware": io.hardware(),
                  "identity": io.identity(),
                  "steps": sorted(rows + kept, key=lambda r: place.get(r.get("step"), len(place)))}
        io.write_json(record_path, record)
        for row in rows:
            mod, cfg, folder = mods[row["step"]]
            _step(row, mod, cfg, folder, cli, earlier.get(row["folder"]), record_path, record)
        record["finished"] = _now()
        io.write_json(record_path, record)
        io.write_text(out / "results.md", document(record, out, figures))
        print(f"wrote {record_path} and {out / 'results.md'}")
    finally:
        io.release(record_path)
    failed = [r for r in rows if r["status"] == "failed" or r.get("exit_code")]
    for r in failed:
        why = r.get("error") or f"its result reports a failure (exit code {r['exit_code']})"
        print(f"icalign reproduce: step {r['step']} failed: {why}", file=sys.stderr)
    return int(bool(failed))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _earlier(path: Path) -> dict:
    """The steps of an earlier call's record in this DIR, by result folder (their wall times
    are kept for the steps skipped now); an unreadable record is ignored, not trusted."""
    try:
        old = io.read_json(path)
        return {r["folder"]: r for r in old["steps"] if isinstance(r, dict) and "folder" in r}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _same_file(recorded, path: Path) -> bool:
    return isinstance(recorded, str) and Path(recorded).resolve() == path.resolve()


def _step(row: dict, mod, cfg, folder: Path, cli, before: Optional[dict], record_path: Path,
          record: dict) -> None:
    """Run (or skip) one step and record it in ``row``; the record is rewritten after it."""
    row.update(hardware=record["hardware"], identity=record["identity"])
    try:
        path = _finished(folder)
        if path is not None:
            res = _check_result(row["step"], cfg, path)
            # the call that ran it, if an earlier record holds it for this very file (a skip keeps it)
            ran = (before if before and before.get("seconds") is not None and _same_file(before.get("result"), path)
                   else None)
            # the time of the call that ran it; else the result's own record of it
            row.update(status="skipped", result_seconds=_wall(res), **_models(res),
                       **{k: (ran or {}).get(k) for k in ("seconds", "ran_at", "ran_hardware")})
            print(f"[reproduce] {row['step']}: done, {path} (skipped)")
        else:
            row.update(status="running", ran_at=_now(), ran_hardware=_machine(record["hardware"]))
            io.write_json(record_path, record)
            print(f"[reproduce] {row['step']}: {row['command']}", flush=True)
            t0 = time.perf_counter()
            cli.run_experiment(row["step"], row["argv"])  # its exit code is the module's, read below
            row.update(status="ran", seconds=time.perf_counter() - t0)
            path = _finished(folder)
            if path is None:
                raise RuntimeError(f"the run ended without a result in {folder}")
            res = _check_result(row["step"], cfg, path)
            row.update(result_seconds=_wall(res), **_models(res))
        row["result"] = str(path)
        # from the result, so a rerun that skips a finished step still reports its failure
        code = int(getattr(mod, "exit_code", lambda r: 0)(res))
        if code:
            row["exit_code"] = code
    except KeyboardInterrupt:
        row.update(status="failed", error="interrupted")
        io.write_json(record_path, record)
        raise
    except Exception as err:  # a failed step is recorded and the next one runs (they are independent)
        row.update(status="failed", error=f"{type(err).__name__}: {err}")
        print(f"[reproduce] {row['step']} failed: {row['error']}", file=sys.stderr, flush=True)
    finally:
        # the next step starts as a separate `icalign run` would: no compiled programs or buffers
        # held over from this one (nine steps in one process would otherwise accumulate them)
        import gc

        import jax

        jax.clear_caches()
        gc.collect()
    io.write_json(record_path, record)


def main(argv: list[str]) -> int:
    """``icalign reproduce [--quick | --full] [--out DIR] [--run-root DIR] [--dry-run] [--only a,b]
    [--no-progress]``: the command line (argv without ``reproduce``); returns the exit code."""
    p = argparse.ArgumentParser(prog="icalign reproduce", description="run every experiment in order into one folder "
                                "(resumable), with an estimate of each step first, and write DIR/results.md",
                                epilog=f"order: {', '.join(ORDER)}")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="preset", action="store_const", const="quick", default="quick",
                      help="every experiment's quick preset (the default; about an hour on a 2-core CPU)")
    size.add_argument("--full", dest="preset", action="store_const", const="full",
                      help="every experiment's published size (meant for a GPU)")
    p.add_argument("--out", type=Path, default=Path("results"),
                   help="output root: results go to OUT/NAME/<preset>/, the record to OUT/reproduce.json and "
                        "OUT/results.md (default results/)")
    p.add_argument("--run-root", type=Path, default=Path("runs"),
                   help="where trained models are kept (default runs/, as for icalign run)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the estimates, run and write nothing")
    p.add_argument("--only", help=f"comma-separated steps to run, kept in the plan's order; from {', '.join(ORDER)}")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    steps = plan(args.preset)
    if args.only is not None:
        names = [n.strip() for n in args.only.split(",")]
        known = [s.name for s in steps]
        bad = [n for n in names if n not in known]
        if bad or not names:
            p.error(f"argument --only: unknown step(s) {bad or [args.only]}; choose from {', '.join(known)}")
        steps = [s for s in steps if s.name in names]
    return reproduce(steps, args.preset, args.out, args.run_root, dry_run=args.dry_run,
                     progress=not args.no_progress, argv=argv)
