"""``leanspike report DIR``: a Markdown table (mean ± std over seeds) and PNG plots of
accuracy and memory against the swept field, for the runs under DIR."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="tabulate and plot the runs of a sweep folder")
    p.add_argument("dir", help="a sweep folder (or any folder holding run folders)")
    p.add_argument("--x", default=None, help="the swept field on the plots' x axis (default: the first numeric one)")
    p.add_argument("--out", default=None, help="where report.md and the plots go (default: DIR)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.report import write_report

    report, plots, note = write_report(Path(args.dir), Path(args.out) if args.out else None, args.x)
    print(report.read_text(), end="")
    for p in plots:
        print(f"plot: {p}")
    if note:
        print(note)
    return 0
