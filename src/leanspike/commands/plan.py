"""``leanspike plan``: which training settings fit a memory budget, best expected accuracy first.

    leanspike plan --model vgg11 --input 2x48x48 --T 10 --batch 64 --budget 4GiB

Calibrates from a few cheap runs (BPTT at T ∈ {1, 2, 3} and TBPTT(2) at T = 4, batch ∈ {1, 2};
the saved bytes scale linearly in T and batch, with one step and a carried interval fitted
apart: leanspike.planner), predicts the peak memory of BPTT, TBPTT(k), SLTT, SLTT-K
and the local method, and lists them in order of expected accuracy cost with the first
that fits marked as the recommendation. ``--json`` writes the plan as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from ..planner import OPTIMIZER_SLOTS, fmt_bytes, parse_bytes, parse_shape, plan


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="predict each method's peak memory and pick settings that fit a budget")
    p.add_argument("--model", required=True, help="a model name (see `leanspike models`)")
    p.add_argument("--input", required=True, metavar="CxHxW", help="per-step input shape, e.g. 2x48x48")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--T", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--budget", required=True, help="memory budget, e.g. 4GiB, 512MiB, 16GB")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZER_SLOTS), default="momentum",
                   help="optimizer state per weight: sgd 0, momentum 1, adam 2 slots")
    p.add_argument("--json", default=None, help="also write the plan here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import atomic_write_text
    from ..experiments.logs import check_writable
    from ..models.registry import MODELS, build_model

    shape = parse_shape(args.input)
    budget = parse_bytes(args.budget)
    if args.model not in MODELS:
        raise UserError(f"--model: unknown model {args.model!r}; known: {', '.join(sorted(MODELS))}")
    if args.num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {args.num_classes}")
    if len(shape) != 3:
        raise UserError(f"--input: expected CxHxW, got {args.input!r}")
    try:
        model = build_model(args.model, in_channels=shape[0], num_classes=args.num_classes,
                            input_size=(shape[1], shape[2]))
    except ValueError as exc:
        raise UserError(f"--model {args.model}: {exc}") from None
    if args.T < 1 or args.batch < 1:
        raise UserError(f"--T and --batch must be >= 1, got T={args.T}, batch={args.batch}")
    if args.json:
        check_writable(args.json, "--json")  # before calibrating, so a bad path fails at once
    rows, memory = plan(model, shape, args.num_classes, args.T, args.batch, budget, args.optimizer)
    best = next((r for r in rows if r.fits), None)
    print(f"{args.model} {args.input} → {args.num_classes}, T = {args.T}, batch {args.batch}, "
          f"budget {fmt_bytes(budget)}, optimizer {args.optimizer}")
    print(f"calibration: {memory.per_sample_step / 2**10:.1f} KiB per sample and step of graph, "
          f"{memory.per_sample / 2**10:.1f} KiB per sample per sequence")
    header = f"{'#':>3}  {'setting':<22} {'saved (pred.)':>14} {'weights+input':>14} {'workspace':>11} {'total':>11}  fits"
    print(header)
    print("-" * len(header))
    for r in rows:
        mark = "yes" if r.fits else "no"
        if r is best:
            mark += "  ← recommended"
        print(f"{r.rank:>3}  {r.setting.label():<22} {fmt_bytes(r.saved):>14} {fmt_bytes(r.fixed):>14} "
              f"{fmt_bytes(r.workspace):>11} {fmt_bytes(r.total):>11}  {mark}")
    if best is None:
        print("nothing fits: lower --batch, or T, or raise the budget")
    print("order: exact gradient first, then fewer temporal routes (smaller k), SLTT, fewer sampled steps "
          "(SLTT-K), then local blocks (smaller n); saved = autograd's activations (measured model), "
          "workspace = an estimate of transient tensors")
    if args.json:
        doc = {"model": args.model, "input": list(shape), "num_classes": args.num_classes, "T": args.T,
               "batch": args.batch, "budget_bytes": budget, "optimizer": args.optimizer,
               "calibration": memory.as_dict(), "recommended": best.setting.label() if best else None,
               "rows": [r.as_dict() for r in rows]}
        atomic_write_text(Path(args.json).expanduser(), json.dumps(doc, indent=1))
    return 0
