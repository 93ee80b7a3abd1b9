"""The icalign command: it parses flags and calls the experiment, benchmark or renderer.

Experiments are the modules of experiments/ (shipped as icalign.experiments), benchmarks those
of icalign/benchmarks/; a module's file name with '_' read as '-' is its command name. What
`icalign --help` prints is COMMANDS below.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from pathlib import Path

import icalign.benchmarks
import icalign.experiments
from icalign import config as C
from icalign.core import validate
from icalign.experiment import default_name, preflight, run_folders


DESCRIPTION = "Self-correction as in-context alignment: run the sandbox's experiments, checks and benchmarks."
COMMANDS = """commands:
  run NAME      run an experiment; results go to results/NAME/quick (or full, or variant-HASH)
                  e.g. icalign run tf-vs-gd --set model.n_layers=4 --no-progress
                  (icalign run NAME --help lists its flags and every --set key)
  verify        check every theorem-as-code claim in float64 (the same as icalign run verify)
                  e.g. icalign verify --set contexts=16
  list          list every experiment and benchmark with one line each
                  e.g. icalign list
  bench NAME    time one piece of the code and print JSON
                  e.g. icalign bench train-step
  redraw FILE   redraw a result's markdown and figures from its JSON, without rerunning
                  e.g. icalign redraw figures/tf-vs-gd/quick/tf_vs_gd.json
  reproduce     run every experiment in order into one folder (resumable; prints estimates first)
                  e.g. icalign reproduce --quick --out results --dry-run
  readme        rewrite (or --check) the result sections of README.md and docs/results.md
                  e.g. icalign readme --check  (--figures: also redraw figures/paper/paper_claims.png)
  compare NAME  is variant B of NAME's model better than variant A? (same contexts and seeds; verdicts)
                  e.g. icalign compare tf-vs-gd --variant a:model.attention=linear --variant b:model.n_layers=1
                  (icalign compare --help; icalign compare --results A.json B.json compares saved results)
"""


def _modules(package) -> dict[str, str]:
    return {
        info.name.replace("_", "-"): f"{package.__name__}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_")
    }


def experiments() -> dict[str, str]:
    return _modules(icalign.experiments)


def benchmarks() -> dict[str, str]:
    return _modules(icalign.benchmarks)


def _sub(kind: str, name: str, table: dict[str, str]):
    if name not in table:
        raise SystemExit(f"icalign {kind}: unknown name {name!r}; choose one of {sorted(table)}")
    return importlib.import_module(table[name])


def _run_parser(name: str, mod) -> argparse.ArgumentParser:
    keys = "\n".join(f"  {k}\n      {text}" for k, text in C.describe_keys(mod.QUICK))
    p = argparse.ArgumentParser(prog=f"icalign run {name}", description=mod.DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"keys for --set and --config (type; default of --quick; allowed values):\n{keys}\n\n"
                                       f"example: icalign run {name} --set seed=1 --no-progress")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="preset", action="store_const", const="quick", default="quick",
                      help="the preset sized for a 2-core CPU in minutes (the default)")
    size.add_argument("--full", dest="preset", action="store_const", const="full",
                      help="the published size (meant for a GPU or TPU)")
    p.add_argument("--config", type=Path, help="a TOML file of overrides (see --show-config)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set model.n_layers=4 (repeatable)")
    p.add_argument("--seed", type=int, help="shortcut for --set seed=S")
    p.add_argument("--name", help="run name: the output sub-folder (default: the preset, or variant-<hash>)")
    p.add_argument("--out", type=Path, default=Path("results"),
                   help="output root; results go to OUT/NAME/RUN (default results/; "
                        "`--out figures` regenerates the committed results)")
    p.add_argument("--force", action="store_true", help="overwrite a finished result instead of refusing")
    p.add_argument("--show-config", action="store_true",
                   help="print the resolved config as commented TOML (for --config) and exit")
    p.add_argument("--run-root", type=Path, default=Path("runs"),
                   help="where trained models are kept, one run folder each (default runs/); a rerun loads them, "
                        "and icalign.train.load_run(FOLDER) loads one in Python")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    # An experiment may name shortcut flags for config overrides: FLAGS = {"--flag": ("key=value", help)}.
    for flag, (assignment, text) in getattr(mod, "FLAGS", {}).items():
        p.add_argument(flag, dest=f"flag_{flag.lstrip('-').replace('-', '_')}", action="store_true",
                       help=f"{text} (= --set {assignment})")
    return p


def resolve(name: str, mod, args) -> tuple:
    """(config, output folder) from the parsed flags; validates everything, runs nothing."""
    presets = {"quick": mod.QUICK, "full": mod.FULL}
    cfg = presets[args.preset]
    if args.config is not None:
        cfg = C.load_toml(cfg, args.config)
    shortcuts = [a for flag, (a, _) in getattr(mod, "FLAGS", {}).items()
                 if getattr(args, f"flag_{flag.lstrip('-').replace('-', '_')}")]
    cfg = C.override(cfg, shortcuts + args.sets + ([f"seed={args.seed}"] if args.seed is not None else []))
    # the chosen preset first: quick and full may be the same config (gd-baseline, verify)
    run_name = args.name or default_name(cfg, {args.preset: presets[args.preset], **presets})
    if run_name in presets and args.name and cfg != presets[run_name]:
        raise C.ConfigError(f"--name {run_name} is reserved for the unchanged {run_name} preset; "
                            "choose another name for a variant")
    if not run_name or any(c in run_name for c in "/\\") or run_name.startswith("."):
        raise C.ConfigError(f"--name must be a plain folder name, got {run_name!r}")
    preflight(cfg)
    for flag, folder in (("--out", args.out), ("--run-root", args.run_root)):
        _check_folder(flag, folder)
    return cfg, args.out / name / run_name


def _check_folder(flag: str, folder: Path) -> None:
    """An output folder must be a folder we can create and write (checked before any work)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{flag} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK) or str(folder.resolve()).startswith(("/proc", "/sys")):
        raise ValueError(f"{flag} {folder}: cannot write there (no permission, or a system folder)")


def parse_run(name: str, rest: list[str]) -> tuple:
    """(experiment module, parsed flags) of ``icalign run NAME *rest`` (icalign reproduce plans with it)."""
    mod = _sub("run", name, experiments())
    return mod, _run_parser(name, mod).parse_args(rest)


def run_experiment(name: str, rest: list[str]) -> int:
    """``icalign run NAME *rest``: resolve, run, print where the results and models went; the exit code."""
    mod, args = parse_run(name, rest)
    cfg, out = resolve(name, mod, args)
    if args.show_config:
        print(C.to_toml(cfg, comments=True), end="")
        return 0
    print(f"[{name}] results folder: {out}")
    train = getattr(cfg, "train", None)
    for note in (train.notes() if hasattr(train, "notes") else []):
        print(f"[{name}] note: {note}")
    from icalign.io import ResultExistsError

    try:
        result = mod.run(cfg, out, force=args.force, progress=not args.no_progress, run_root=args.run_root,
                         checked=True)
    except ResultExistsError as err:
        raise ResultExistsError(f"{err}{_redraw_hint(out)}") from None
    print(f"[{name}] results folder: {out}")
    for folder in run_folders(result):  # the trained models, and the one line that loads each
        print(f"[{name}] trained model: {args.run_root / folder}  (load it: "
              f"icalign.train.load_run({str(args.run_root / folder)!r}))")
    return int(getattr(mod, "exit_code", lambda r: 0)(result))


MAX_RESULT_BYTES = 256 * 2**20  #: the largest committed result is under 1 MiB


def _read_result(p: str, table: dict) -> tuple[str, dict]:
    """(experiment command name, result dict) of a result JSON given to ``icalign redraw``:
    a regular file holding a JSON object that names one of the experiments."""
    import json

    res = validate.parse_input_file("icalign redraw:", p, MAX_RESULT_BYTES, json.loads, "JSON", json.JSONDecodeError)
    if not isinstance(res, dict):
        raise ValueError(f"icalign redraw: {p}: holds a JSON {type(res).__name__}, not a result (a JSON object "
                         "written by `icalign run`)")
    name = res.get("experiment")
    name = name.replace("_", "-") if isinstance(name, str) else name
    if name not in table:
        raise ValueError(f"icalign redraw: {p}: its field 'experiment' is {res.get('experiment')!r}, not one of "
                         f"{sorted(table)}")
    return name, res


def _redraw_hint(out: Path) -> str:
    """For a refused rerun: the command that redraws the finished result's markdown and figures
    (a run whose disk filled up after the JSON was written has the JSON but not its figures)."""
    results = sorted(p for p in out.glob("*.json") if not p.name.startswith("."))
    if not results:
        return ""
    missing = not any(out.glob(f"{results[0].stem}*.png"))
    return (f". {'Its figures are missing: r' if missing else 'R'}edraw its markdown and figures from the JSON, "
            f"without rerunning, with `icalign redraw {' '.join(map(str, results))}`")


def _redraw(paths: list[str]) -> int:
    from icalign.experiment import redraw

    if not paths:
        raise SystemExit("icalign redraw: give one or more result JSON files")
    table = experiments()
    for p in paths:
        name, _ = _read_result(p, table)
        try:
            written = redraw(Path(p), importlib.import_module(table[name]))
        except (KeyError, TypeError, IndexError, AttributeError) as err:
            # the figure and markdown code read the result's fields: a missing or mistyped one
            # is the file's fault, named here rather than in a traceback from a figure module
            what = f"lacks the field {err}" if isinstance(err, KeyError) else f"has a field of the wrong shape ({err})"
            raise ValueError(f"icalign redraw: {p}: {what}, which the {name} figures need; is it a complete "
                             f"{name} result?") from None
        print(f"redrew {', '.join(map(str, written))}")
    return 0


def _readme(rest: list[str]) -> int:
    from icalign.viz import readme

    p = argparse.ArgumentParser(prog="icalign readme", description=readme.__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1, naming the sections, if a document is stale")
    p.add_argument("--repo", type=Path, default=Path("."), help="folder holding README.md and docs/results.md")
    p.add_argument("--results", type=Path, default=Path("figures"), help="committed results root (default figures/)")
    p.add_argument("--figures", action="store_true",
                   help="also redraw the figures drawn from several committed results (RESULTS/paper/paper_claims.png)")
    args = p.parse_args(rest)
    if args.figures and args.check:
        raise ValueError("icalign readme: --figures writes figures and --check only reads; give one of them")
    if not args.results.is_dir():
        raise ValueError(f"icalign readme: --results {args.results}: not a folder of results")
    for doc in readme.DOCUMENTS:
        validate.check_input_file("icalign readme: --repo", args.repo / doc, 16 * 2**20)
    try:
        return _readme_run(readme, args)
    except (FileNotFoundError, IsADirectoryError) as err:  # a result file the sections are written from
        raise ValueError(f"icalign readme: {err.filename}: {err.strerror}; the README's sections are written from "
                         f"the results under --results {args.results}") from None


def _readme_run(readme, args) -> int:
    if args.check:
        stale = readme.check(args.repo, args.results)
        if stale:
            print(f"icalign readme: stale sections {stale}: run `icalign readme`", file=sys.stderr)
        return int(bool(stale))
    if args.figures:  # before the documents, which link to them
        from icalign.viz import paper

        print(f"drew {', '.join(map(str, paper.save(args.results)))}")
    readme.update(args.repo, args.results)
    print(f"rewrote the generated sections of {', '.join(readme.DOCUMENTS)} from {args.results}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The top parser handles -h itself: with argparse's own, `icalign run NAME --help` showed
    # the top-level usage and none of NAME's flags.
    top = argparse.ArgumentParser(prog="icalign", description=DESCRIPTION, epilog=COMMANDS, add_help=False,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("-h", "--help", action="store_true", help="show this help (after a NAME: its flags)")
    top.add_argument("command", nargs="?", choices=["run", "bench", "list", "verify", "readme", "redraw", "reproduce",
                                                    "compare"])
    top.add_argument("name", nargs="?")
    ns, rest = top.parse_known_args(argv)
    if ns.command == "compare":  # its own flags, as given (the top parser would take a --results file as NAME)
        from icalign.cli_compare import main as compare

        argv.remove("compare")
        return compare(argv)
    if ns.command == "verify":  # `icalign verify ...` is `icalign run verify ...`
        rest = ([ns.name] if ns.name else []) + rest
        ns.command, ns.name = "run", "verify"
    if ns.command == "readme":  # the top parser took -h: hand it on, or help would rewrite README.md
        return _readme(([ns.name] if ns.name else []) + rest + (["--help"] if ns.help else []))
    if ns.command == "reproduce":  # its own parser gets every flag as given (the top one would take
        from icalign import reproduce  # the value of `--out DIR` for a NAME)

        return reproduce.main(argv[:argv.index("reproduce")] + argv[argv.index("reproduce") + 1:])
    if ns.command == "redraw" and ns.help:
        print("usage: icalign redraw RESULT.json ...  (redraw a result's markdown and figures from its JSON)")
        return 0
    if ns.command == "redraw":
        return _redraw(([ns.name] if ns.name else []) + rest)
    if ns.help and (ns.command in (None, "list") or not ns.name):
        top.print_help()
        return 0
    if ns.command is None:
        top.error("give a command: run, bench, list or verify")
    if ns.help:
        rest.append("--help")

    if ns.command == "list":
        for kind, table in (("run", experiments()), ("bench", benchmarks())):
            for name, mod in sorted(table.items()):
                doc = getattr(importlib.import_module(mod), "DESCRIPTION", "")
                print(f"icalign {kind} {name:<18} {doc}")
        return 0
    if not ns.name:
        table = experiments() if ns.command == "run" else benchmarks()
        raise SystemExit(f"icalign {ns.command}: give a name, one of {sorted(table)}")
    if ns.command == "run":
        return run_experiment(ns.name, rest)
    mod = _sub("bench", ns.name, benchmarks())
    p = argparse.ArgumentParser(prog=f"icalign bench {ns.name}", description=mod.DESCRIPTION)
    if hasattr(mod, "add_arguments"):
        mod.add_arguments(p)
    return int(mod.run(p.parse_args(rest)) or 0)


def entry() -> int:
    """Console entry point: errors end with a one-line message, not a traceback (tests call
    ``main`` and see the exceptions). Exit code 2: the input was refused before any work (a
    flag, a config value, a file: ValueError; argparse's usage errors exit 2 too); exit code
    1: the run was refused or failed (a finished or claimed result, a finished run folder,
    a loss that became NaN)."""
    import matplotlib

    matplotlib.use("Agg")  # the command writes figure files; a library import never does this
    from icalign.io import ResultClaimedError, ResultExistsError
    from icalign.training import NonFiniteLossError, RunExistsError

    try:
        return main()
    except ValueError as err:
        print(f"icalign: error: {err}", file=sys.stderr)
        return 2
    except (ResultExistsError, ResultClaimedError, RunExistsError, NonFiniteLossError) as err:
        print(f"icalign: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(entry())
