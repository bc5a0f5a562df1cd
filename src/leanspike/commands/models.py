"""``leanspike models``: the model zoo with parameter counts and accepted input shapes.

Counts are for each model's reference input (the dataset it was designed for) unless
``--input CxHxW`` / ``--num-classes`` ask for another one. Models are built on the
``meta`` device, so listing even the large ones allocates nothing.
"""

from __future__ import annotations

import argparse
import json

import torch

from ..errors import UserError
from ..models.registry import MODELS, REFERENCE, accepted_shapes, build_model, count_parameters, describe_models


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the models with parameter counts and accepted input shapes")
    p.add_argument("--input", default=None, metavar="CxHxW",
                   help="count parameters for this per-step input shape (e.g. 2x128x128) instead of the references")
    p.add_argument("--num-classes", type=int, default=None, help="classes for the count (default: the reference's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = tuple(int(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise UserError(f"--input: expected CxHxW with positive integers (e.g. 3x32x32), got {text!r}")
    return values  # type: ignore[return-value]


def _rows(args: argparse.Namespace) -> list[dict[str, object]]:
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {args.num_classes}")
    if args.input is None and args.num_classes is None:
        return [{"name": d.name, "parameters": d.parameters, "input": d.reference_shape(),
                 "reference": d.reference.dataset, "accepts": d.accepted} for d in describe_models()]
    shape = parse_shape(args.input) if args.input is not None else None
    rows = []
    for name in MODELS:
        ref = REFERENCE[name]
        c, h, w = shape if shape is not None else (ref.in_channels, ref.input_size, ref.input_size)
        classes = args.num_classes if args.num_classes is not None else ref.num_classes
        try:
            with torch.device("meta"):
                count: object = count_parameters(build_model(name, in_channels=c, num_classes=classes,
                                                             input_size=(h, w)))
        except ValueError as exc:  # e.g. an input below the model's minimum size
            count = f"n/a ({exc})"
        rows.append({"name": name, "parameters": count, "input": f"{c}×{h}×{w} → {classes}",
                     "reference": ref.dataset, "accepts": accepted_shapes(name)})
    return rows


def run(args: argparse.Namespace) -> int:
    rows = _rows(args)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    print(f"{'model':<14}{'parameters':>14}  {'input → classes':<22}{'accepts':<28}designed for")
    for r in rows:
        count = r["parameters"]
        shown = f"{count:,}" if isinstance(count, int) else str(count)
        print(f"{r['name']:<14}{shown:>14}  {r['input']:<22}{r['accepts']:<28}{r['reference']}")
    return 0
