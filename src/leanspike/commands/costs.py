"""``leanspike costs``: the truncated-local paper's cost model (Sec. IV) for any model and (k, n).

    leanspike costs --model lenet1 --T 20 --k 20 10 5 2 1 --n 4 2 1 --classifier trainable random \\
        --dataset fashion-mnist --out costs/

Prints one row per (classifier, n, k): memory footprint, memory access, additions and
MACs of one iteration, normalised by BPTT's, with the figure of merit (Eq. 17); then the
per-layer counts of BPTT and the SLTT supplement's scalar multiplications. ``--out``
writes costs.json and costs.png (panels in the style of the paper's Figs. 10–15).
Densities α come from the model's spikes on ``--dataset`` or from ``--density``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..costs import (GRADIENT_ADDS, MEMORY_MODELS, CostReport, CostSetting, analyze, figure_of_merit,
                     measure_densities, profile_model, scalar_multiplications, with_densities)
from ..checkpoint import atomic_write_bytes, atomic_write_text
from ..errors import UserError
from ..experiments.logs import check_writable
from ..planner import calibrate, parse_shape


def add_parser(sub) -> None:
    p = sub.add_parser("costs", help="analytic memory, memory-access, addition and MAC counts per (k, n)")
    p.add_argument("--model", required=True, help="a model name (see `leanspike models`)")
    p.add_argument("--input", default=None, metavar="CxHxW", help="per-step input shape (default: the model's reference)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--T", type=int, required=True)
    p.add_argument("--k", type=int, nargs="+", default=None, help="truncation intervals (default: T)")
    p.add_argument("--n", type=int, nargs="+", default=None, help="layers per block (default: the depth, i.e. BP)")
    p.add_argument("--classifier", nargs="+", choices=("trainable", "random"), default=["trainable"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dataset", default=None, help="measure spike densities on this dataset (e.g. fashion-mnist)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--density", type=float, default=None, help="given density of spike inputs (no measurement)")
    p.add_argument("--input-density", type=float, default=1.0, help="density of the network input with --density")
    p.add_argument("--gradient-adds", choices=GRADIENT_ADDS, default="paper",
                   help="paper: N_B·α·|W| additions per layer for ∂W (Eq. 15); exact: α·M (convs reuse weights)")
    p.add_argument("--memory-model", choices=MEMORY_MODELS, default="engine", help="memory term of the FoM")
    p.add_argument("--calibrate", action="store_true", help="scale the graph memory by measured saved bytes")
    p.add_argument("--accuracy", nargs="+", default=(), metavar="K,N=ACC",
                   help="accuracies for the FoM's AL term; include the BPTT one (k = T, n = depth)")
    p.add_argument("--K", type=int, default=None, help="SLTT-K's K for the multiplication count (default T/2)")
    p.add_argument("--out", default=None, help="folder for costs.json and costs.png")
    p.set_defaults(run=run)


def _build(args: argparse.Namespace):
    from ..models.registry import REFERENCE, build_model  # lazily: keeps `leanspike --help` light

    if args.model not in REFERENCE:
        raise UserError(f"--model: unknown model {args.model!r}; known: {', '.join(sorted(REFERENCE))}")
    ref = REFERENCE[args.model]
    shape = parse_shape(args.input) if args.input else (ref.in_channels, ref.input_size, ref.input_size)
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {args.num_classes}")
    classes = args.num_classes if args.num_classes is not None else ref.num_classes
    if len(shape) != 3:
        raise UserError(f"--input: expected CxHxW, got {args.input!r}")
    try:
        model = build_model(args.model, in_channels=shape[0], num_classes=classes, input_size=(shape[1], shape[2]))
    except ValueError as exc:
        raise UserError(f"--model {args.model}: {exc}") from None
    return model, shape, classes


def _dataset(args: argparse.Namespace, shape):
    """The ``--dataset`` to measure densities on (None without one), checked against the model."""
    if args.density is not None or args.dataset is None:
        return None
    from ..data.factory import build_dataset

    try:
        ds, info = build_dataset(args.dataset, args.data_root, train=True, T=args.T)
    except (ValueError, OSError) as exc:
        raise UserError(f"--dataset {args.dataset}: {exc}") from None
    if info.is_frames:
        sample_shape = tuple(ds[0][0].shape[1:])
    else:
        sample_shape = (info.in_channels, *info.input_size)
    if tuple(sample_shape) != tuple(shape):
        raise UserError(f"--dataset {args.dataset} gives inputs {sample_shape}, the model takes {tuple(shape)}; "
                        f"pass --input to match")
    return ds, info


def _densities(args: argparse.Namespace, model, data):
    if args.density is not None:
        return None, f"given: spikes {args.density}, input {args.input_density}"
    if data is None:
        return None, "none given: dense upper bound (α = 1); pass --dataset or --density"
    from torch.utils.data import DataLoader

    from ..data.factory import to_time_major

    ds, info = data
    x, _ = next(iter(DataLoader(ds, batch_size=min(args.batch, 64), shuffle=True,
                                generator=torch.Generator().manual_seed(0))))
    inputs = to_time_major(x, args.T, info.encoding)
    return measure_densities(model, inputs), f"measured on {min(args.batch, 64)} {args.dataset} samples"


def _accuracies(entries) -> dict[tuple[int, int], float]:
    out = {}
    for e in entries:
        try:
            key, value = e.split("=")
            k, n = (int(v) for v in key.split(","))
            acc = float(value)
        except ValueError:
            raise UserError(f"--accuracy: expected K,N=ACC (e.g. 20,4=0.91), got {e!r}") from None
        if not 0 <= acc <= 1:
            raise UserError(f"--accuracy {e}: accuracy {acc} out of range; expected a fraction in [0, 1]")
        out[(k, n)] = acc
    return out


def _check(args: argparse.Namespace, depth: int) -> tuple[list[int], list[int]]:
    if args.T < 1 or args.batch < 1:
        raise UserError(f"--T and --batch must be >= 1, got T={args.T}, batch={args.batch}")
    ks = args.k or [args.T]
    ns = args.n or [depth]
    for k in ks:
        if not 1 <= k <= args.T:
            raise UserError(f"--k {k}: expected 1 <= k <= T = {args.T}")
    for n in ns:
        if not 1 <= n <= depth:
            raise UserError(f"--n {n}: expected 1 <= n <= {depth} (the model's spiking depth)")
    if args.density is not None and not 0 <= args.density <= 1:
        raise UserError(f"--density {args.density}: expected a fraction in [0, 1]")
    if not 0 <= args.input_density <= 1:
        raise UserError(f"--input-density {args.input_density}: expected a fraction in [0, 1]")
    if args.K is not None and not 1 <= args.K <= args.T:
        raise UserError(f"--K {args.K}: expected 1 <= K <= T = {args.T}")
    return sorted(set(ks), reverse=True), sorted(set(ns), reverse=True)


def _fmt(x: float) -> str:
    return f"{x:.3e}"


def run(args: argparse.Namespace) -> int:
    model, shape, classes = _build(args)
    profile = profile_model(model, shape, classes)
    depth = profile.depth
    ks, ns = _check(args, depth)
    accuracy = _accuracies(args.accuracy)
    data = _dataset(args, shape)
    out = check_writable(args.out, "--out", folder=True) if args.out else None  # before measuring
    densities, density_note = _densities(args, model, data)
    if densities is not None:
        profile = with_densities(profile, densities)
    else:
        profile = with_densities(profile, spike_density=args.density if args.density is not None else 1.0,
                                 input_density=args.input_density if args.density is not None else 1.0)
    scale = 1.0
    if args.calibrate:
        memory = calibrate(model, shape, classes, batches=(2, 4), profile=profile)
        scale = memory.per_sample_step / (profile.graph * profile.itemsize)
    base_acc = accuracy.get((args.T, depth))

    def report(k: int, n: int, classifier: str) -> CostReport:
        return analyze(profile, CostSetting(args.T, k, n, classifier, args.batch), args.gradient_adds, scale)

    baseline = report(args.T, depth, "trainable")
    results = []
    print(f"{args.model} {'x'.join(map(str, shape))} → {classes}, T = {args.T}, batch {args.batch}, "
          f"depth {depth}{' + spiking output layer' if profile.output else ''}; densities {density_note}")
    header = (f"{'classifier':<10} {'n':>3} {'k':>4} {'MC engine':>10} {'MC paper':>10} {'mem.access':>11} "
              f"{'additions':>11} {'MACs':>11} {'MC':>6} {'MA':>6} {'ADD':>6} {'MAC':>6} {'FoM':>6}")
    print(header)
    print("-" * len(header))
    for classifier in args.classifier:
        for n in ns:
            for k in ks:
                r = report(k, n, classifier)
                fom = figure_of_merit(r, baseline, accuracy.get((k, n)), base_acc, args.memory_model)
                t = r.totals
                print(f"{classifier:<10} {n:>3} {k:>4} {r.memory['engine'] / 2**20:>9.2f}M "
                      f"{r.memory['paper'] / 2**20:>9.2f}M {_fmt(t['memory_access']):>11} {_fmt(t['additions']):>11} "
                      f"{_fmt(t['macs']):>11} {fom['MC']:>6.3f} {fom['MA']:>6.3f} {fom['ADD']:>6.3f} "
                      f"{fom['MAC']:>6.3f} {fom['FoM']:>6.3f}")
                results.append({**r.as_dict(), "normalised": fom})
    print(f"\nper layer, BPTT (k = T = {args.T}, n = {depth}):")
    print(f"{'layer':<44} {'N(w)':>10} {'|U| batch':>11} {'M batch':>11} {'α':>6} {'mem.access':>11} "
          f"{'additions':>11} {'MACs':>11}")
    for row in baseline.rows:
        print(f"{row.name[:44]:<44} {row.params:>10} {row.states:>11} {_fmt(row.macs_fwd_dense):>11} "
              f"{row.density:>6.3f} {_fmt(row.memory_access):>11} {_fmt(row.additions):>11} {_fmt(row.macs):>11}")
    K = args.K if args.K is not None else max(1, args.T // 2)
    mults = scalar_multiplications(profile, args.T, args.batch, K)
    tot = mults["total"]
    print(f"\nbackward scalar multiplications (SLTT supplement C.2): BPTT {_fmt(tot['bptt'])}, "
          f"SLTT {_fmt(tot['sltt'])} ({tot['sltt'] / tot['bptt']:.4f}×), "
          f"SLTT-K (K = {K}) {_fmt(tot['sltt_k'])} ({tot['sltt_k'] / tot['bptt']:.4f}×)")
    if out is not None:
        doc = {"model": args.model, "input": list(shape), "num_classes": classes, "T": args.T, "batch": args.batch,
               "depth": depth, "densities": density_note, "graph_scale": scale,
               "gradient_adds": args.gradient_adds, "memory_model": args.memory_model,
               "baseline": baseline.as_dict(), "settings": results, "scalar_multiplications": mults}
        atomic_write_text(out / "costs.json", json.dumps(doc, indent=1))
        plot_costs(doc, out / "costs.png")
        print(f"\nwrote {out / 'costs.json'} and {out / 'costs.png'}")
    return 0


def plot_costs(doc: dict, path: Path) -> None:
    """Panels after the paper's Figs. 7–8 and 10–15: memory, access, additions, MACs, FoM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = doc["settings"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    ax = axes.ravel()
    styles = {"trainable": "-", "random": "--"}
    ns = sorted({s["n"] for s in settings}, reverse=True)
    colours = {n: f"C{i}" for i, n in enumerate(ns)}
    panels = [(0, lambda s: s["memory_bytes"][doc["memory_model"]] / 2**20, "memory footprint (MiB)"),
              (1, lambda s: s["totals"]["memory_access"], "memory accesses / iteration"),
              (2, lambda s: s["totals"]["additions"], "additions / iteration")]
    for i, value, label in panels:
        for classifier in styles:
            for n in ns:
                rows = sorted((s for s in settings if s["n"] == n and s["classifier"] == classifier),
                              key=lambda s: s["k"])
                if rows:
                    ax[i].plot([s["k"] for s in rows], [value(s) for s in rows], styles[classifier], marker="o",
                               color=colours[n], label=f"n = {n} ({classifier[0].upper()})")
        ax[i].set_xscale("log")
        ax[i].set_xlabel("truncation interval k")
        ax[i].set_ylabel(label)
        ax[i].legend(fontsize=7)
    macs = [min(s["normalised"]["MAC"] for s in settings if s["n"] == n) for n in ns]
    ax[3].bar([str(n) for n in ns], macs, color=[colours[n] for n in ns])
    ax[3].set_xlabel("layers per block n")
    ax[3].set_ylabel("MACs / BPTT's")
    best = []
    for n in ns:
        rows = [s for s in settings if s["n"] == n]
        top = min(rows, key=lambda s: s["normalised"]["FoM"])
        best.append((n, top["normalised"]["FoM"], f"{top['k']} {top['classifier'][0].upper()}"))
    bars = ax[4].bar([str(n) for n, _, _ in best], [f for _, f, _ in best], color=[colours[n] for n, _, _ in best])
    for bar, (_, _, k) in zip(bars, best):
        ax[4].annotate(f"k={k}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax[4].set_xlabel("layers per block n")
    ax[4].set_ylabel("smallest FoM over k (Eq. 17)")
    tot = doc["scalar_multiplications"]["total"]
    ax[5].bar(["BPTT", "SLTT", f"SLTT-K={doc['scalar_multiplications']['K']}"],
              [1.0, tot["sltt"] / tot["bptt"], tot["sltt_k"] / tot["bptt"]], color=["C7", "C2", "C3"])
    ax[5].set_ylabel("backward scalar mults / BPTT's")
    fig.suptitle(f"{doc['model']} {'x'.join(map(str, doc['input']))}, T = {doc['T']}, batch {doc['batch']}")
    fig.tight_layout()
    try:
        atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
