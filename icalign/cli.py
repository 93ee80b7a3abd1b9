"""The ``icalign`` command.

    icalign run NAME [--quick | --full] [--out DIR] [--force] [--seed S]   an experiment
    icalign bench NAME                                                      a benchmark (JSON)
    icalign list                                                            what exists

Experiments are the modules of ``experiments/`` (shipped as ``icalign.experiments``);
benchmarks are the modules of ``icalign/benchmarks/``. A module's file name with '_' read as
'-' is its command name. Each module defines ``DESCRIPTION``, ``run(args)`` and optionally
``add_arguments(parser)`` for flags of its own. The CLI only dispatches: no logic lives here.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

import icalign.benchmarks
import icalign.experiments


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


def _add_common_run_args(p: argparse.ArgumentParser) -> None:
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="quick", action="store_true", default=True,
                      help="reduced size that fits a 2-core CPU in minutes (the default)")
    size.add_argument("--full", dest="quick", action="store_false",
                      help="the published size (meant for a GPU or TPU)")
    p.add_argument("--out", type=Path, default=Path("figures"),
                   help="folder for the results JSON and figures (default: figures/)")
    p.add_argument("--force", action="store_true",
                   help="overwrite a finished result instead of refusing")
    p.add_argument("--seed", type=int, default=0, help="master PRNG seed (default 0)")


def _sub(kind: str, name: str, table: dict[str, str]):
    if name not in table:
        raise SystemExit(f"icalign {kind}: unknown name {name!r}; choose one of {sorted(table)}")
    return importlib.import_module(table[name])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The top parser handles -h itself: with argparse's own, `icalign run NAME --help` showed
    # the top-level usage and none of NAME's flags.
    top = argparse.ArgumentParser(prog="icalign", description=__doc__.split("\n")[0], add_help=False)
    top.add_argument("-h", "--help", action="store_true", help="show this help (after a NAME: its flags)")
    top.add_argument("command", nargs="?", choices=["run", "bench", "list", "verify"])
    top.add_argument("name", nargs="?")
    ns, rest = top.parse_known_args(argv)
    if ns.help and (ns.command in (None, "list") or (ns.command in ("run", "bench") and not ns.name)):
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

    if ns.command == "verify":
        # `icalign verify` is the experiments/verify.py module with its own flags.
        rest = ([ns.name] if ns.name else []) + rest
        ns.name = "verify"
        ns.command = "run"
        table = experiments()
        if "verify" not in table:
            raise SystemExit("icalign verify: no constructions to verify in this version")
        mod = _sub("verify", "verify", table)
        p = argparse.ArgumentParser(prog="icalign verify", description=mod.DESCRIPTION)
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)
        return int(mod.run(p.parse_args(rest)) or 0)

    if not ns.name:
        table = experiments() if ns.command == "run" else benchmarks()
        raise SystemExit(f"icalign {ns.command}: give a name, one of {sorted(table)}")

    table = experiments() if ns.command == "run" else benchmarks()
    mod = _sub(ns.command, ns.name, table)
    p = argparse.ArgumentParser(prog=f"icalign {ns.command} {ns.name}", description=mod.DESCRIPTION)
    if ns.command == "run":
        _add_common_run_args(p)
    if hasattr(mod, "add_arguments"):
        mod.add_arguments(p)
    args = p.parse_args(rest)
    return int(mod.run(args) or 0)


def entry() -> int:
    """Console entry point: bad input and refused overwrites end with a one-line message and
    exit code 1, not a traceback (tests call ``main`` and see the exceptions)."""
    from icalign.results import ResultExistsError

    try:
        return main()
    except (ValueError, ResultExistsError) as err:
        print(f"icalign: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(entry())
