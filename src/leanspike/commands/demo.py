"""``leanspike demo``: the main job — BPTT, SLTT and SLTT-K side by side on real data.

Trains a small spiking CNN on scikit-learn's digits (no download), or on Fashion-MNIST
when its files are present, and prints one table of accuracy, memory and speed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..trainer import TrainConfig, train

FASHION_DEFAULT = Path("/usr/share/datasets/fashion-mnist")


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="BPTT vs SLTT vs SLTT-K on built-in real data")
    p.add_argument("--dataset", choices=("digits", "fashion-mnist"), default="digits")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the Debian package's)")
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--epochs", type=int, default=None, help="default: 15 on digits, 2 on Fashion-MNIST")
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    p.set_defaults(run=run)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def run(args: argparse.Namespace) -> int:
    from ..experiments.logs import check_writable, write_json

    digits = args.dataset == "digits"
    root = args.data_root or (None if digits else str(FASHION_DEFAULT))
    epochs = args.epochs if args.epochs is not None else (15 if digits else 2)  # --epochs 0 is an error, not 15
    setups = [("bptt", {}), ("sltt", {}), ("sltt-k", {"K": 1})]
    configs = [TrainConfig(dataset=args.dataset, data_root=root, model="spiking_cnn", method=method,
                           T=args.T, epochs=epochs, batch_size=32 if digits else 128,
                           lr=0.1, tau=2.0, seed=0, **extra) for method, extra in setups]
    for cfg in configs:  # every setting (--T, --epochs) is checked before the first run trains
        cfg.validate()
    json_path = check_writable(args.json, "--json") if args.json else None  # before training
    rows = []
    for (method, extra), cfg in zip(setups, configs):
        s = train(cfg)
        label = method if method != "sltt-k" else f"sltt-k (K={extra['K']})"
        rows.append({"method": label, "test_accuracy": s["test_accuracy"], "peak_saved_bytes": s["peak_saved_bytes"],
                     "peak_rss_bytes": s["peak_rss_bytes"], "s_per_iter": s["s_per_iter"]})
        print(f"  {label}: test accuracy {s['test_accuracy']:.4f}", flush=True)
    print(f"\n{args.dataset}, spiking CNN, T = {args.T}, {epochs} epochs")
    header = f"{'method':<16} {'test acc':>9} {'saved MiB':>10} {'peak RSS MiB':>13} {'s/iter':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['method']:<16} {r['test_accuracy']:>9.4f} {_mib(r['peak_saved_bytes']):>10} "
              f"{_mib(r['peak_rss_bytes']):>13} {r['s_per_iter']:>8.4f}")
    if json_path is not None:
        write_json(json_path, rows)
    return 0
