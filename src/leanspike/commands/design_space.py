"""``leanspike design-space``: the (k, n, classifier) grid of truncated local BPTT.

    leanspike design-space --preset ttl-emnist-lenet1 --data-root ~/data/emnist --out runs/emnist-ks

One command trains every cell (skipping finished runs and resuming unfinished ones when
run again) and writes results.csv/.md/.json (accuracy, peak saved bytes, the linear fit
of memory against k) and accuracy.png / memory.png into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
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


def _first_missing(path: Path) -> Path | None:
    """The topmost folder of ``path`` that does not exist yet (None when ``path`` exists)."""
    path = path.absolute()
    missing = None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


def _remove_empty(path: Path, top: Path) -> None:
    """Remove the empty folders from ``path`` up to ``top``, the ones this command made."""
    path = path.absolute()
    while True:
        try:
            path.rmdir()  # only ever an empty folder
        except OSError:
            return
        if path == top or path == path.parent:
            return
        path = path.parent


def run(args: argparse.Namespace) -> int:
    from ..experiments.design_space import run_design_space
    from ..experiments.logs import check_writable

    base = build_config(args)
    out = Path(args.out)
    made = _first_missing(out.expanduser())
    check_writable(out, "--out", folder=True)  # an unwritable --out fails now, not after the first run
    try:
        result = run_design_space(base, args.out, ks=args.ks, ns=args.ns, classifiers=args.classifiers,
                                  limit=args.limit, progress=not args.no_progress,
                                  plots=not args.no_plots)
    except UserError:
        if made is not None:  # a grid that fails validation leaves no empty --out behind
            _remove_empty(out.expanduser(), made)
        raise
    print(f"design-space {args.out}: {len(result.ran)} ran, {len(result.skipped)} already finished, "
          f"{len(result.shared)} shared, {len(result.pending)} pending, {len(result.failed)} failed")
    for f in result.fits:
        print(f"  peak saved bytes vs k, {f['classifier']} n = {f['n']}: slope {f['slope_bytes_per_step'] / 2**20:.4f} "
              f"MiB per step, R² = {f['r2']:.5f}")
    return 1 if result.failed else 0
