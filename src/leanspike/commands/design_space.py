"""``leanspike design-space``: the (k, n, classifier) grid of truncated local BPTT.

    leanspike design-space --preset ttl-emnist-lenet1 --data-root ~/data/emnist --out runs/emnist-ks

One command trains every cell (skipping finished runs and resuming unfinished ones when
run again) and writes results.csv/.md/.json (accuracy, peak saved bytes, the linear fit
of memory against k) and accuracy.png / memory.png into ``--out``.
"""

from __future__ import annotations

import argparse

from .train import add_config_arguments, build_config, positive_int


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1 separated by commas, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_parser(sub) -> None:
    p = sub.add_parser("design-space", help="truncated local BPTT over a grid of k, n and classifier types")
    add_config_arguments(p)
    p.add_argument("--ks", type=_int_list, required=True, metavar="K1,K2", help="truncation intervals, e.g. 20,10,5,2,1")
    p.add_argument("--ns", type=_int_list, required=True, metavar="N1,N2", help="spiking layers per block, e.g. 4,2,1")
    p.add_argument("--classifiers", type=_names, default=["trainable", "random"], metavar="C1,C2",
                   help="trainable, random or both (default)")
    p.add_argument("--out", required=True, help="sweep folder (run it again to resume)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="stop after N trained runs")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.design_space import run_design_space

    base = build_config(args)
    result = run_design_space(base, args.out, ks=args.ks, ns=args.ns, classifiers=args.classifiers,
                              limit=args.limit, progress=not args.no_progress,
                              plots=not args.no_plots)
    print(f"design-space {args.out}: {len(result.ran)} ran, {len(result.skipped)} already finished, "
          f"{len(result.shared)} shared, {len(result.pending)} pending, {len(result.failed)} failed")
    for f in result.fits:
        print(f"  peak saved bytes vs k, {f['classifier']} n = {f['n']}: slope {f['slope_bytes_per_step'] / 2**20:.4f} "
              f"MiB per step, R² = {f['r2']:.5f}")
    return 1 if result.failed else 0
