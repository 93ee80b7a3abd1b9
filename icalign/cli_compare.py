"""``icalign compare``: the command of :mod:`icalign.comparison` (train and judge variants) and
of :func:`icalign.analysis.variants.compare_results` (judge saved results). It parses and checks
every flag, then calls them; every refusal comes before any training (exit code 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from icalign import config as C

EXAMPLE = """examples:
  icalign compare tf-vs-gd --variant a:model.attention=linear --variant b:model.n_layers=1 --set seeds=5 \
      --out cmp.json
  icalign compare --results cmp.json figures/tf-vs-gd/quick/tf_vs_gd.json   (the same contexts and seeds)
  icalign compare ablations --variant base --variant noffn:model.ffn=false --reference noffn

Each variant is the preset (--quick or --full) with --set applied to all, then its own
KEY=VALUE (which wins). Keys: those of `icalign run EXPERIMENT --help`; per variant only model.*
and train.* may differ (seed, seeds and eval.contexts are shared: set them with --set). The
first variant is the reference (or --reference NAME); each other variant gets the claim "NAME
has lower error than REFERENCE" with the engine's verdict (supported: better; contradicted:
worse; not trained: a model failed its training-health gate)."""


def parser(names) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icalign compare", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="compare two or more variants of an experiment's model on the same "
                                            "evaluation contexts and seeds (or saved results that share them)",
                                epilog=EXAMPLE)
    p.add_argument("experiment", nargs="?", help=f"the experiment whose variants are compared: one of {names}")
    p.add_argument("--variant", dest="variants", action="append", default=[],
                   metavar="NAME[:KEY=VALUE[;KEY=VALUE...]]", help="one variant (repeat: at least two)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value of every variant, e.g. --set seeds=5 (repeatable)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="preset", action="store_const", const="QUICK", default="QUICK",
                      help="start from the preset sized for a 2-core CPU (the default)")
    size.add_argument("--full", dest="preset", action="store_const", const="FULL", help="start from the published size")
    p.add_argument("--reference", help="the variant every other is judged against (default: the first)")
    p.add_argument("--results", nargs="+", type=Path, metavar="FILE.json",
                   help="compare saved results instead (compare outputs, tf-vs-gd results) on their shared contexts")
    p.add_argument("--run-root", type=Path, default=Path("runs"), help="where trained models are kept (default runs/)")
    p.add_argument("--out", type=Path, metavar="FILE.json", help="write the comparison as JSON to this file")
    p.add_argument("--force", action="store_true", help="overwrite a finished --out file instead of refusing")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def variants(mod, specs: list, sets: list, preset: str) -> dict:
    """{name: config} from the --variant specs, --set and the preset; refuses (ValueError,
    naming the flag) a malformed spec, a duplicate name, fewer than two, an unknown key."""
    from icalign.comparison import check_name

    base = getattr(mod, preset)
    try:
        base = C.override(base, sets)
    except ValueError as err:
        raise ValueError(f"--set: {err}") from None
    out = {}
    for spec in specs:
        name, _, rest = spec.partition(":")
        try:
            check_name(name)
        except ValueError as err:
            raise ValueError(f"--variant {spec!r}: write NAME[:KEY=VALUE[;KEY=VALUE...]]; {err}") from None
        if name in out:
            raise ValueError(f"--variant {spec!r}: the name {name!r} is used twice; give every variant its own name")
        assignments = [a.strip() for a in rest.split(";") if a.strip()]
        bad = [a for a in assignments if "=" not in a]
        if bad:
            raise ValueError(f"--variant {spec!r}: {bad[0]!r} is not KEY=VALUE (write NAME[:KEY=VALUE[;KEY=VALUE...]], "
                             "e.g. b:model.n_layers=1;train.lr=3e-3)")
        try:
            out[name] = C.override(base, assignments)
        except ValueError as err:
            raise ValueError(f"--variant {name}: {err}") from None
    if len(out) < 2:
        raise ValueError(f"--variant: give at least two variants (got {len(out)}), e.g. --variant a --variant "
                         "b:model.n_layers=1")
    return out


def main(argv: list) -> int:
    from icalign import comparison, io
    from icalign.analysis.variants import compare_results, report
    from icalign.cli import _check_folder

    table = comparison.experiments()
    args = parser(sorted(table)).parse_args(argv)
    if args.out is not None:
        _check_folder("--out", args.out.parent)
        if args.out.is_dir():
            raise ValueError(f"--out {args.out}: a folder; give a file name such as comparison.json")
    if args.results and (args.experiment or args.variants or args.sets):
        raise ValueError("--results compares saved files: give no EXPERIMENT, --variant or --set with it")
    if not args.results:
        if args.experiment not in table:
            raise ValueError(f"EXPERIMENT must be one of {sorted(table)}, got {args.experiment!r} "
                             "(or give --results FILE.json FILE.json ...)")
        cfgs = variants(table[args.experiment], args.variants, args.sets, args.preset)
        if args.reference is not None and args.reference not in cfgs:
            raise ValueError(f"--reference {args.reference!r}: not one of the variants {list(cfgs)}")
        _check_folder("--run-root", args.run_root)
    out = args.out and io.claim_output(args.out, args.force)  # refused now, not after the training
    try:
        res = (compare_results(args.results, reference=args.reference) if args.results else
               comparison.compare(cfgs, args.experiment, run_root=args.run_root, progress=not args.no_progress,
                                  reference=args.reference))
        print(report(res))
        if out:
            io.write_json(out, res)
            print(f"wrote {out}")
    finally:
        if out:
            io.release(out)
    return 0
