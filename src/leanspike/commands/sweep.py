"""``leanspike sweep``: a grid of runs over any config fields (methods, k, n, K, T, seeds...).

    leanspike sweep --preset ttl-emnist-lenet1 --data-root ~/data/emnist --out runs/emnist
    leanspike sweep --preset sltt-dvs-gesture-vgg11-sltt --grid method.name=bptt,sltt --seeds 0,1,2 --out runs/g

The grid starts from the preset's ``sweep`` section; each ``--grid`` replaces one
field's values. Running the same command again skips finished runs and resumes
unfinished ones. ``leanspike report OUT`` tabulates and plots the results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from .train import add_config_arguments, build_config


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of experiments (skips finished runs, resumes unfinished ones)")
    add_config_arguments(p)
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                   help="values of one config field, e.g. --grid method.k=1,2,5 (repeatable)")
    p.add_argument("--seeds", default=None, metavar="S1,S2", help="shorthand for --grid seed=S1,S2")
    p.add_argument("--out", required=True, help="sweep folder; one sub-folder per run")
    p.add_argument("--skip-invalid", action="store_true", help="skip grid points that fail validation (e.g. k > T)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and stop")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import atomic_write_text
    from ..experiments import config as C
    from ..experiments.logs import check_writable
    from ..experiments.sweep import SWEEP_FILE, expand, parse_grid, run_sweep

    base = build_config(args)
    grid = dict(base.sweep)
    grid.update(parse_grid(args.grid))
    if args.seeds is not None:
        if not args.seeds.strip():
            raise UserError(f"--seeds {args.seeds!r}: expected seeds separated by commas, e.g. 0,1,2")
        grid.update(parse_grid([f"seed={args.seeds}"]))
    points = expand(base, grid, skip_invalid=args.skip_invalid)
    if not points:
        raise UserError("sweep: every grid point failed validation; nothing to run")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if args.dry_run:
        for p in points:
            print(p.run_id)
        print(f"{len(points)} runs")
        return 0
    from ..experiments.sweep import check_existing

    check_existing(points, out)  # before anything is written
    check_writable(out, "--out", folder=True)  # an unwritable --out fails here, not after the first run
    atomic_write_text(out / SWEEP_FILE, json.dumps({
        "grid": grid, "base": C.to_dict(C.apply_overrides(base, {"sweep": {}})),
        "runs": [{"id": p.run_id, "overrides": dict(p.overrides)} for p in points]}, indent=2) + "\n")
    from ..trainer import train

    outcome = run_sweep(points, out, train, progress=not args.no_progress)
    print(f"sweep {out}: {len(outcome['ran'])} ran, {len(outcome['done'])} already finished, "
          f"{len(outcome['failed'])} failed" + (f" ({', '.join(outcome['failed'])})" if outcome["failed"] else ""))
    return 1 if outcome["failed"] else 0
