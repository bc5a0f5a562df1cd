"""``leanspike grad-sim``: how close the spatial-only gradient stays to BPTT's during training.

Trains a small spiking CNN with BPTT for each τ and, every ``--every`` iterations, takes
the batch about to be trained on and computes per layer the cosine similarity between the
BPTT gradient and the spatial-only (SLTT) gradient at the current weights (SLTT paper,
Fig. 3). Writes grad_sim.json and grad_sim.png to ``--out``.

    leanspike grad-sim --dataset fashion-mnist --tau 1.1 2 4 --T 6 --iterations 300 --out docs/results
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..analysis import gradient_similarity
from ..checkpoint import atomic_write_bytes, atomic_write_text
from ..errors import UserError
from ..experiments.logs import check_writable
from ..losses import make_loss
from ..methods import BPTT
from ..models.small import spiking_cnn
from ..neuron import LIF


def add_parser(sub) -> None:
    p = sub.add_parser("grad-sim", help="cosine similarity of BPTT and spatial-only gradients while training")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--tau", type=float, nargs="+", default=[1.1, 2.0, 4.0])
    p.add_argument("--T", type=int, default=6)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--every", type=int, default=20, help="analyse every this many iterations (and the first)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32], help="conv widths of the spiking CNN")
    p.add_argument("--loss", choices=("sltt", "ce"), default="sltt", help="per-step loss shared by BPTT and SLTT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="grad_sim", help="folder for grad_sim.json and grad_sim.png")
    p.set_defaults(run=run)


def _check(args: argparse.Namespace) -> None:
    for name in ("T", "iterations", "every", "batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for tau in args.tau:
        if not tau >= 1:
            raise UserError(f"--tau {tau}: expected τ >= 1 (decay = 1 − 1/τ)")
    if not 0 < args.lr < math.inf:
        raise UserError(f"--lr must be a finite number > 0, got {args.lr}")
    for width in args.widths:
        if width < 1:
            raise UserError(f"--widths {' '.join(map(str, args.widths))}: expected channel counts >= 1, got {width}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")


def _check_batch(args: argparse.Namespace, ds) -> None:
    """Whole batches only (drop_last): a batch larger than the data set would yield none."""
    if args.batch > len(ds):
        raise UserError(f"--batch {args.batch}: the {args.dataset} training set holds {len(ds)} samples; "
                        f"expected --batch <= {len(ds)}")


def _batches(ds, batch: int, seed: int):
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    while True:
        empty = True
        for item in loader:
            empty = False
            yield item
        if empty:  # never loop forever on a loader without a whole batch
            raise UserError(f"--batch {batch}: the training set holds {len(ds)} samples; "
                            f"expected --batch <= {len(ds)}")


def train_and_analyse(args: argparse.Namespace, tau: float, ds, info) -> dict:
    from ..data.factory import to_time_major

    torch.manual_seed(args.seed)
    model = spiking_cnn(info.in_channels, info.num_classes, info.input_size, widths=tuple(args.widths),
                        neuron=partial(LIF, tau=tau))
    loss = make_loss(args.loss)
    method = BPTT(loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    points = []
    start = time.perf_counter()
    for it, (x, y) in zip(range(args.iterations), _batches(ds, args.batch, args.seed)):
        inputs = to_time_major(x, args.T, info.encoding)
        if it % args.every == 0 or it == args.iterations - 1:
            model.train()
            sim = gradient_similarity(model, inputs, y, loss)
            points.append({"iteration": it, **sim.as_dict()})
        result = method.train_step(model, inputs, y, optimizer)
        if points and points[-1]["iteration"] == it:
            points[-1]["train_loss"] = result.loss
            points[-1]["batch_accuracy"] = float((result.predictions == y).float().mean())
    return {"tau": tau, "decay": 1 - 1 / tau, "seconds": time.perf_counter() - start, "points": points}


def run(args: argparse.Namespace) -> int:
    from ..data.factory import build_dataset

    _check(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ds, info = build_dataset(args.dataset, args.data_root, train=True, T=args.T)
    except (ValueError, OSError) as exc:
        raise UserError(f"--dataset {args.dataset}: {exc}") from None
    if info.is_frames:
        raise UserError(f"--dataset {args.dataset}: grad-sim trains on static images; got event frames")
    _check_batch(args, ds)
    out = check_writable(args.out, "--out", folder=True)  # before training, not after it
    runs = []
    for tau in args.tau:
        r = train_and_analyse(args, tau, ds, info)
        means = [p["mean"] for p in r["points"]]
        print(f"τ = {tau:g} (λ = {r['decay']:.3f}): mean cosine similarity {sum(means) / len(means):.4f} "
              f"(min {min(means):.4f}, last {means[-1]:.4f}), {r['seconds']:.0f} s", flush=True)
        runs.append(r)
    doc = {"dataset": args.dataset, "model": f"spiking_cnn widths {args.widths}", "T": args.T, "batch": args.batch,
           "iterations": args.iterations, "every": args.every, "lr": args.lr, "loss": args.loss, "seed": args.seed,
           "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
           "runs": runs}
    atomic_write_text(out / "grad_sim.json", json.dumps(doc, indent=1))
    plot(doc, out / "grad_sim.png")
    print(f"wrote {out / 'grad_sim.json'} and {out / 'grad_sim.png'}")
    return 0


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(doc["runs"]):
        its = [p["iteration"] for p in r["points"]]
        a.plot(its, [p["mean"] for p in r["points"]], marker="o", ms=3, color=f"C{i}", label=f"τ = {r['tau']:g}")
        layers = list(r["points"][0]["layers"])
        for name in layers:
            b.plot(its, [p["layers"][name] for p in r["points"]], color=f"C{i}", alpha=0.6, lw=1)
        b.plot([], [], color=f"C{i}", label=f"τ = {r['tau']:g}")
    a.set_xlabel("iteration")
    a.set_ylabel("cosine similarity, mean over layers")
    a.set_title("BPTT vs spatial-only gradient")
    a.legend()
    b.set_xlabel("iteration")
    b.set_ylabel("cosine similarity per layer")
    b.set_title("each layer (thin lines)")
    b.legend()
    fig.suptitle(f"{doc['dataset']}, {doc['model']}, T = {doc['T']}, batch {doc['batch']}, loss {doc['loss']}")
    fig.tight_layout()
    try:
        atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
