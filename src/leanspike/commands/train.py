"""``leanspike train``: one training run, results written to ``--out``."""

from __future__ import annotations

import argparse
import json

from ..trainer import METHOD_NAMES, TrainConfig, train


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one model with one method")
    p.add_argument("--dataset", default="digits", help="digits (built in), fashion-mnist, ...")
    p.add_argument("--data-root", default=None, help="folder holding the dataset's files")
    p.add_argument("--model", default="spiking_cnn")
    p.add_argument("--method", default="bptt", choices=METHOD_NAMES)
    p.add_argument("--T", type=_positive_int, default=4, help="time steps")
    p.add_argument("--k", type=_positive_int, default=None, help="TBPTT interval length")
    p.add_argument("--K", type=_positive_int, default=None, help="SLTT-K: steps with backward")
    p.add_argument("--epochs", type=_positive_int, default=10)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--lr", type=_positive_float, default=0.1)
    p.add_argument("--tau", type=float, default=2.0)
    p.add_argument("--loss", default="ce", help="ce, sltt, mean-ce (BPTT only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batches", type=_positive_int, default=None, help="cap batches per epoch")
    p.add_argument("--out", default=None, help="results folder (must not exist or be empty)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(dataset=args.dataset, data_root=args.data_root, model=args.model, method=args.method,
                      T=args.T, k=args.k, K=args.K, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, tau=args.tau, loss=args.loss, seed=args.seed, out=args.out,
                      max_batches=args.max_batches)
    summary = train(cfg, progress=not args.no_progress)
    summary.pop("config")
    print(json.dumps(summary, indent=2))
    return 0
